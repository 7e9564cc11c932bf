"""Counts the kernel and the SDKs report (cache hits and misses), for whoever listens.

Standard library only: the verifier SDK's DID resolver and status-list caches
report through here without importing a metrics library (``import verifier``
stays free of prometheus_client). The services' :mod:`tessera.observability`
listens and turns each count into a Prometheus counter; with nobody listening
a count costs one loop over an empty list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

__all__ = ["CACHE_DID", "CACHE_STATUS_LIST", "Listener", "count", "listen"]

CACHE_DID: Final = "did"
CACHE_STATUS_LIST: Final = "status_list"

Listener = Callable[[str, str], None]
"""``(what, result)``: e.g. ``("did", "hit")``. Must not raise, must be quick."""

_listeners: list[Listener] = []


def listen(listener: Listener) -> None:
    """Receive every count from now on (once, however often it is registered)."""
    if listener not in _listeners:
        _listeners.append(listener)


def count(what: str, result: str) -> None:
    for listener in _listeners:
        listener(what, result)
