"""What a leaf of a brand's points transparency log is, shared by the issuer and the wallet.

Every ledger entry becomes one leaf: the canonical JSON (key-sorted, compact,
:func:`tessera.encoding.canonical_json`) of

``{"v": 1, "entry": <ledger entry id>, "member": <pseudonym>, "delta": <points>,
"kind": <earn|redeem|adjust|expire|reverse>, "reason": <text|null>,
"time": <RFC 3339 UTC>, "idempotency_key": <text|null>}``

hashed with RFC 9162 ``leaf_hash`` (:mod:`tessera.merkle`). The member is a
*pseudonym*: HMAC-SHA-256 of the member id under a secret of the brand's
log. Public readers see only pseudonyms and hashes; a member erased later
leaves hashes behind that still prove every other member's entries.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from tessera.encoding import b64url_encode, canonical_json
from tessera.errors import ErrorCode, TesseraError
from tessera.merkle import leaf_hash

__all__ = [
    "LEAF_KINDS",
    "LEAF_VERSION",
    "LogLeaf",
    "leaf_bytes",
    "member_pseudonym",
    "parse_leaf",
    "total",
]

LEAF_VERSION: Final = 1
LEAF_KINDS: Final = frozenset({"earn", "redeem", "adjust", "expire", "reverse"})
_KEYS: Final = frozenset({"v", "entry", "member", "delta", "kind", "reason", "time",
                          "idempotency_key"})
MAX_TEXT: Final = 500


def member_pseudonym(secret: bytes, member_id: str) -> str:
    """The member's name in the log; the label keeps this HMAC from meaning anything else."""
    if len(secret) < 32:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "pseudonym secret must be 32+ bytes")
    mac = hmac.new(secret, b"tessera-log-member:" + member_id.encode(), hashlib.sha256)
    return b64url_encode(mac.digest())


def _time(value: datetime) -> str:
    if value.tzinfo is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "leaf time must be timezone-aware")
    # Millisecond precision: PostgreSQL keeps microseconds, SQLite may not keep
    # the offset; truncating keeps the leaf identical wherever it is rebuilt.
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class LogLeaf:
    entry: int
    member: str
    delta: int
    kind: str
    reason: str | None
    time: str
    idempotency_key: str | None

    @classmethod
    def of(cls, *, entry: int, member: str, delta: int, kind: str, reason: str | None,
           time: datetime, idempotency_key: str | None) -> LogLeaf:
        return cls(entry, member, delta, kind, reason, _time(time), idempotency_key)

    def as_json(self) -> dict[str, Any]:
        return {"v": LEAF_VERSION, "entry": self.entry, "member": self.member,
                "delta": self.delta, "kind": self.kind, "reason": self.reason,
                "time": self.time, "idempotency_key": self.idempotency_key}

    def to_bytes(self) -> bytes:
        return canonical_json(self.as_json())

    @property
    def hash(self) -> bytes:
        return leaf_hash(self.to_bytes())


def leaf_bytes(leaf: LogLeaf) -> bytes:
    return leaf.to_bytes()


def _int(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or abs(value) > 2**62:
        raise TesseraError(ErrorCode.MALFORMED, f"leaf {what} must be an integer")
    return value


def _text(value: Any, what: str, *, optional: bool) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise TesseraError(ErrorCode.MALFORMED, f"leaf {what} must be a string")
    return value


def parse_leaf(value: Mapping[str, Any]) -> LogLeaf:
    """A leaf as served by the log API, checked strictly (unknown members refused)."""
    if not isinstance(value, Mapping) or set(value) != _KEYS:
        raise TesseraError(ErrorCode.MALFORMED, "leaf has missing or unknown members")
    if value["v"] != LEAF_VERSION:
        raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, "unknown leaf version")
    kind = value["kind"]
    if kind not in LEAF_KINDS:
        raise TesseraError(ErrorCode.MALFORMED, "unknown leaf kind")
    time = _text(value["time"], "time", optional=False)
    assert time is not None
    member = _text(value["member"], "member", optional=False)
    assert member is not None
    return LogLeaf(entry=_int(value["entry"], "entry"), member=member,
                   delta=_int(value["delta"], "delta"), kind=kind,
                   reason=_text(value["reason"], "reason", optional=True), time=time,
                   idempotency_key=_text(value["idempotency_key"], "idempotency_key",
                                         optional=True))


def total(leaves: Iterable[LogLeaf]) -> int:
    """The balance the log supports: the sum of the deltas (pending and held included)."""
    return sum(leaf.delta for leaf in leaves)
