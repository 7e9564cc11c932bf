"""Tessera issuer: what a brand runs.

The library (:class:`CredentialIssuer`) issues SD-JWT VC loyalty credentials
from a brand key; the HTTP service (programmes, members, points ledger,
OpenID4VCI, status lists) is built on it.
"""

from __future__ import annotations

from issuer._credentials import CredentialIssuer, Program, did_document

__all__ = ["CredentialIssuer", "Program", "did_document"]
