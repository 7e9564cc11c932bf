"""Credential formats: one module per format, each with issue / present / verify."""
