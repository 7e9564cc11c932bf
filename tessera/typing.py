"""Public Protocols: what a caller may plug into Tessera.

Implement these to bring your own KMS-backed signer, DID resolver, HTTP
fetcher, nonce store or clock. Nothing here imports a web framework.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from tessera.did import DIDDocument
    from tessera.keys import Alg, PublicKey

__all__ = ["Clock", "DIDResolver", "Fetcher", "NonceStore", "Signer"]

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime."""


@runtime_checkable
class Signer(Protocol):
    """A private key that signs but never hands out its bytes.

    ``sign`` returns the JOSE encoding of the signature (raw ``r || s`` for
    ECDSA). ``key_id`` is the DID URL of the verification method, if any.
    """

    @property
    def alg(self) -> Alg: ...

    @property
    def key_id(self) -> str | None: ...

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes: ...


@runtime_checkable
class DIDResolver(Protocol):
    def resolve(self, did: str) -> DIDDocument: ...


@runtime_checkable
class Fetcher(Protocol):
    """Fetches a document by URL with the caller's limits (for did:web, status lists)."""

    def fetch(self, url: str, *, accept: str) -> bytes: ...


@runtime_checkable
class NonceStore(Protocol):
    """Single-use values shared by every instance of a service.

    ``issue`` records a value with a time-to-live and optional data;
    ``consume`` returns the data exactly once, and ``None`` when the value is
    unknown, expired or already consumed. Implementations: in memory, SQL,
    Redis.
    """

    def issue(self, value: str, *, ttl_seconds: int, data: dict[str, Any] | None = None) -> None:
        ...

    def consume(self, value: str) -> dict[str, Any] | None: ...
