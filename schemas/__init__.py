"""Tessera's published data: JSON Schemas, SD-JWT VC type metadata, JSON-LD contexts.

Files only, plus a loader; the rules that use them live in the kernel
(:mod:`tessera.credentials`, :mod:`tessera.jsonld`).
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["load", "path"]


def path(name: str) -> str:
    return str(resources.files(__name__).joinpath(name))


@cache
def _load_text(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


def load(name: str) -> Any:
    """A bundled JSON document by its file name under ``schemas/`` (fresh copy)."""
    return json.loads(_load_text(name))
