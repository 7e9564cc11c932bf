"""Credential status lists: IETF Token Status List and W3C Bitstring Status List.

Two standards, one idea: a big compressed array of small integers, one per
credential, published as a signed document that anyone may cache.

* **Token Status List** (draft-ietf-oauth-status-list; the section numbers
  below are those of the draft): used by SD-JWT VCs through the
  ``status.status_list.{idx, uri}`` claim. ``bits`` per entry is 1, 2, 4 or 8,
  entries are packed from the *least* significant bit of each byte (§4.1),
  the byte array is ZLIB/DEFLATE compressed (RFC 1950/1951) and base64url
  encoded, and the list travels inside a ``statuslist+jwt`` (§5.1).
* **Bitstring Status List v1.0** (W3C): used by Data Integrity credentials
  through a ``BitstringStatusListEntry``. Index 0 is the *left-most*
  (most significant) bit of the first byte, the bitstring is GZIP compressed
  (RFC 1952) and multibase base64url encoded (``u`` prefix), and is at least
  131,072 entries long (§2.2 ``encodedList``, §3.2 step 9).

Both decoders inflate with a hard output cap, so a few hundred bytes of
hostile input cannot make us allocate gigabytes (a "compression bomb").

Indexes are handed out at random (:class:`IndexAllocator`) so that an index
reveals neither the order of issuance nor how many credentials exist
(Token Status List §12.5 "Unlinkability"; Bitstring §2.1 ``statusListIndex``).
"""

from __future__ import annotations

import gzip
import math
import re
import secrets
import threading
import urllib.parse
import zlib
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from typing import Any, Final

from tessera import telemetry
from tessera.encoding import b64url_decode, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import decode_unverified, sign_compact, verify_signature
from tessera.keys import SUPPORTED_ALGS, PublicKey
from tessera.typing import Clock, Fetcher, Signer

__all__ = [
    "BITSTRING_MIN_ENTRIES",
    "DEFAULT_LIST_SIZE",
    "MAX_LIST_BYTES",
    "STATUS_LIST_JWT_TYP",
    "BitstringStatusEntry",
    "BitstringStatusList",
    "IndexAllocator",
    "KeyLookup",
    "StatusChecker",
    "StatusList",
    "StatusListToken",
    "StatusReference",
    "TokenStatus",
    "bitstring_status_list_credential",
    "check_bitstring_status",
    "check_token_status",
    "parse_bitstring_status_entry",
    "parse_status_claim",
    "read_bitstring_status",
    "sign_status_list_token",
    "verify_status_list_token",
]

STATUS_LIST_JWT_TYP: Final = "statuslist+jwt"
STATUS_LIST_JWT_MEDIA_TYPE: Final = "application/statuslist+jwt"

DEFAULT_LIST_SIZE: Final = 131_072
"""Entries per list we create: the W3C minimum, 16 KiB of 1-bit entries."""

BITSTRING_MIN_ENTRIES: Final = 131_072
"""Bitstring Status List §3.2 step 2: ``minimumNumberOfEntries``."""

MAX_LIST_BYTES: Final = 4 * 1024 * 1024
"""Default cap on a *decompressed* list: 4 MiB is 32 Mi 1-bit or 4 Mi 8-bit entries."""

MAX_INDEX: Final = 2**31 - 1
"""No list we accept can be larger than this many entries (MAX_LIST_BYTES * 8 < 2**31)."""

_TOKEN_BITS: Final = frozenset({1, 2, 4, 8})
_DECIMAL: Final = re.compile(r"^(0|[1-9][0-9]{0,11})$")


class TokenStatus(IntEnum):
    """Token Status List §7.1 registry ("Status Types")."""

    VALID = 0
    INVALID = 1  # revoked; the draft calls it INVALID
    SUSPENDED = 2


# --------------------------------------------------------------------------
# Bounded decompression, shared by both formats.


def _inflate(raw: bytes, *, wbits: int, max_bytes: int, what: str) -> bytes:
    """Decompress one stream, refusing more than ``max_bytes`` of output.

    ``max_length`` stops zlib as soon as the cap is passed, so the memory we
    ever hold is ``max_bytes + 1`` whatever the compression ratio.
    """
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(raw, max_bytes + 1)
    except zlib.error as exc:
        raise TesseraError(ErrorCode.MALFORMED, f"{what} is not valid compressed data") from exc
    if len(out) > max_bytes or inflater.unconsumed_tail:
        raise TesseraError(ErrorCode.TOO_LARGE, f"{what} inflates to over {max_bytes} bytes")
    if not inflater.eof:
        raise TesseraError(ErrorCode.MALFORMED, f"{what} compressed stream is truncated")
    if inflater.unused_data:
        # A second gzip member or junk after the stream: one list, one stream.
        raise TesseraError(ErrorCode.MALFORMED, f"{what} has data after the compressed stream")
    return out


def _b64_cap(max_bytes: int) -> int:
    # DEFLATE never expands by more than a few bytes per 16 KiB block, so a
    # compressed list longer than its decompressed cap is refused unread.
    return (max_bytes + 1024) * 4 // 3 + 4


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_uri(value: Any) -> bool:
    if not isinstance(value, str) or not value or len(value) > 2048 or value.strip() != value:
        return False
    parsed = urllib.parse.urlsplit(value)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", parsed.scheme or ""):
        return False
    return parsed.scheme.lower() not in ("http", "https") or bool(parsed.netloc)


# --------------------------------------------------------------------------
# IETF Token Status List.


class StatusList:
    """A Token Status List byte array (draft §4.1) with ``bits`` per entry.

    Entry ``i`` lives in byte ``i // (8 // bits)`` starting at bit
    ``(i % (8 // bits)) * bits`` counted from the least significant bit:
    status[0] is bit 0 of byte 0 (the draft's 0xB9 0xA3 example).
    """

    __slots__ = ("_bits", "_data", "_per_byte")

    def __init__(self, bits: int = 1, size: int = DEFAULT_LIST_SIZE) -> None:
        if not _is_int(bits) or bits not in _TOKEN_BITS:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "bits must be 1, 2, 4 or 8")
        if not _is_int(size) or size < 0 or size > MAX_INDEX:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "size must be a non-negative integer")
        self._bits = bits
        self._per_byte = 8 // bits
        self._data = bytearray(-(-size // self._per_byte))

    @classmethod
    def from_bytes(cls, bits: int, data: bytes) -> StatusList:
        out = cls(bits, 0)
        out._data = bytearray(data)
        return out

    @property
    def bits(self) -> int:
        return self._bits

    @property
    def size(self) -> int:
        """Capacity in entries (a decoded list knows only its byte length)."""
        return len(self._data) * self._per_byte

    def to_bytes(self) -> bytes:
        return bytes(self._data)

    def _locate(self, idx: int) -> tuple[int, int]:
        if not _is_int(idx) or not 0 <= idx < self.size:
            raise TesseraError(ErrorCode.INVALID_REQUEST, f"index {idx!r} is outside the list")
        return idx // self._per_byte, (idx % self._per_byte) * self._bits

    def get(self, idx: int) -> int:
        byte, shift = self._locate(idx)
        return (self._data[byte] >> shift) & ((1 << self._bits) - 1)

    def set(self, idx: int, value: int) -> None:
        if not _is_int(value) or not 0 <= value < (1 << self._bits):
            raise TesseraError(
                ErrorCode.INVALID_REQUEST, f"status {value!r} does not fit in {self._bits} bits"
            )
        byte, shift = self._locate(idx)
        mask = ((1 << self._bits) - 1) << shift
        self._data[byte] = (self._data[byte] & ~mask) | (value << shift)

    def encode(self) -> dict[str, Any]:
        """The JSON form (§4.2): ``{"bits": n, "lst": base64url(zlib(bytes))}``."""
        # §4.1 step 3 recommends the highest compression level.
        return {"bits": self._bits, "lst": b64url_encode(zlib.compress(bytes(self._data), 9))}

    @classmethod
    def decode(cls, value: Any, *, max_bytes: int = MAX_LIST_BYTES) -> StatusList:
        """Parse the JSON form; ``too_large`` past ``max_bytes`` decompressed."""
        if not isinstance(value, dict):
            raise TesseraError(ErrorCode.MALFORMED, "status_list must be a JSON object")
        bits, lst = value.get("bits"), value.get("lst")
        if not _is_int(bits) or bits not in _TOKEN_BITS:
            raise TesseraError(ErrorCode.MALFORMED, "status_list.bits must be 1, 2, 4 or 8")
        if not isinstance(lst, str):
            raise TesseraError(ErrorCode.MALFORMED, "status_list.lst must be a string")
        if "aggregation_uri" in value and not _is_uri(value["aggregation_uri"]):
            raise TesseraError(ErrorCode.MALFORMED, "status_list.aggregation_uri is not a URI")
        raw = b64url_decode(lst, max_len=_b64_cap(max_bytes))
        # wbits=15: the ZLIB container only (§4.1 step 3), not raw DEFLATE or gzip.
        return cls.from_bytes(bits, _inflate(raw, wbits=15, max_bytes=max_bytes, what="lst"))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StatusList):
            return NotImplemented
        return self._bits == other._bits and self._data == other._data

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"StatusList(bits={self._bits}, size={self.size})"


@dataclass(frozen=True)
class StatusReference:
    """The ``status.status_list`` claim of a Referenced Token (§6.2)."""

    idx: int
    uri: str


def parse_status_claim(status: Any) -> StatusReference:
    """Validate a credential's ``status`` claim and return its list reference.

    ``{"status_list": {"idx": 17, "uri": "https://..."}}``; other status
    mechanisms may sit next to ``status_list`` (§6.1) and are ignored.
    """
    if not isinstance(status, dict):
        raise TesseraError(ErrorCode.MALFORMED, "status claim must be a JSON object")
    ref = status.get("status_list")
    if not isinstance(ref, dict):
        raise TesseraError(ErrorCode.MALFORMED, "status claim has no status_list object")
    idx, uri = ref.get("idx"), ref.get("uri")
    if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx <= MAX_INDEX:
        raise TesseraError(ErrorCode.MALFORMED, "status_list.idx must be a non-negative integer")
    if not isinstance(uri, str) or not _is_uri(uri):
        raise TesseraError(ErrorCode.MALFORMED, "status_list.uri must be an absolute URI")
    return StatusReference(idx, uri)


def _numeric_date(value: datetime) -> int:
    if value.tzinfo is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "datetimes must be timezone-aware")
    return int(value.timestamp())


def sign_status_list_token(
    status_list: StatusList,
    signer: Signer,
    *,
    uri: str,
    issued_at: datetime,
    expires_at: datetime | None,
    ttl: int | None = None,
    issuer: str | None = None,
) -> str:
    """A ``statuslist+jwt`` (§5.1) whose ``sub`` is the list's own URI."""
    if not _is_uri(uri):
        raise TesseraError(ErrorCode.INVALID_REQUEST, "status list uri must be an absolute URI")
    payload: dict[str, Any] = {"sub": uri, "iat": _numeric_date(issued_at)}
    if issuer is not None:
        payload["iss"] = issuer
    if expires_at is not None:
        payload["exp"] = _numeric_date(expires_at)
        if payload["exp"] <= payload["iat"]:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "expires_at must be after issued_at")
    if ttl is not None:
        if not _is_int(ttl) or ttl <= 0:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "ttl must be a positive integer")
        payload["ttl"] = ttl
    payload["status_list"] = status_list.encode()
    return sign_compact({"typ": STATUS_LIST_JWT_TYP}, payload, signer)


@dataclass(frozen=True)
class StatusListToken:
    """A verified Status List Token."""

    uri: str
    issued_at: int
    expires_at: int | None
    ttl: int | None
    issuer: str | None
    status_list: StatusList
    header: dict[str, Any]


def _typ_matches(typ: Any) -> bool:
    # RFC 7515 §4.1.9: "application/" may be omitted and media types compare
    # case-insensitively.
    if not isinstance(typ, str):
        return False
    typ = typ.lower()
    return typ in (STATUS_LIST_JWT_TYP, STATUS_LIST_JWT_MEDIA_TYPE)


def verify_status_list_token(
    token: str,
    key: PublicKey,
    *,
    uri: str,
    now: datetime,
    allowed_algs: Collection[str] = SUPPORTED_ALGS,
    leeway: timedelta = timedelta(seconds=30),
    max_list_bytes: int = MAX_LIST_BYTES,
) -> StatusListToken:
    """Check ``typ``, signature, ``sub == uri``, ``iat``/``exp``/``ttl`` (§8.3 step 3-4)."""
    jws = decode_unverified(token)
    if not _typ_matches(jws.header.get("typ")):
        raise TesseraError(ErrorCode.MALFORMED, f"JWS typ must be {STATUS_LIST_JWT_TYP!r}")
    verify_signature(jws, key, allowed_algs)
    claims = jws.payload
    if claims.get("sub") != uri:
        raise TesseraError(ErrorCode.MALFORMED, "status list token sub differs from its uri")
    iat, exp, ttl, iss = claims.get("iat"), claims.get("exp"), claims.get("ttl"), claims.get("iss")
    if not isinstance(iat, int | float) or not _is_number(iat):
        raise TesseraError(ErrorCode.MALFORMED, "status list token needs a numeric iat")
    if exp is not None and not _is_number(exp):
        raise TesseraError(ErrorCode.MALFORMED, "status list token exp must be numeric")
    if ttl is not None and (not _is_number(ttl) or ttl <= 0):
        raise TesseraError(ErrorCode.MALFORMED, "status list token ttl must be positive")
    if iss is not None and not isinstance(iss, str):
        raise TesseraError(ErrorCode.MALFORMED, "status list token iss must be a string")
    nbf = claims.get("nbf")
    if nbf is not None and not _is_number(nbf):
        raise TesseraError(ErrorCode.MALFORMED, "status list token nbf must be numeric")
    t, slack = now.timestamp(), leeway.total_seconds()
    if exp is not None and t >= exp + slack:
        raise TesseraError(ErrorCode.EXPIRED, "status list token has expired")
    if iat > t + slack or (nbf is not None and nbf > t + slack):
        raise TesseraError(ErrorCode.NOT_YET_VALID, "status list token is from the future")
    status_list = StatusList.decode(claims.get("status_list"), max_bytes=max_list_bytes)
    return StatusListToken(
        uri=uri,
        issued_at=int(iat),
        expires_at=None if exp is None else int(exp),
        ttl=None if ttl is None else math.ceil(ttl),
        issuer=iss,
        status_list=status_list,
        header=jws.header,
    )


KeyLookup = Callable[[dict[str, Any], dict[str, Any]], PublicKey]
"""``(jws_header, unverified_payload) -> PublicKey``: picks the key that must
have signed a status list token (e.g. ``resolver.key(header["kid"])``).
Decide trust here: only return keys of issuers you accept."""


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _CacheEntry:
    token: StatusListToken
    fresh_until: float


class StatusChecker:
    """Fetches, verifies and caches Status List Tokens by URI.

    A cached token is reused until the earliest of ``fetched + max_age``,
    ``fetched + ttl`` (§8.3 step 4d) and ``exp``. Any failure to fetch,
    parse or verify a list is ``status_unavailable``: no statement about the
    credential can be made (§8.3, last paragraph), and the caller decides.
    Thread-safe; the cache holds at most ``max_entries`` lists.
    """

    def __init__(
        self,
        fetcher: Fetcher,
        key_lookup: KeyLookup,
        *,
        clock: Clock = _utc_now,
        max_age: timedelta = timedelta(minutes=5),
        allowed_algs: Collection[str] = SUPPORTED_ALGS,
        max_list_bytes: int = MAX_LIST_BYTES,
        max_entries: int = 256,
    ) -> None:
        self._fetcher = fetcher
        self._key_lookup = key_lookup
        self._clock = clock
        self._max_age = max_age.total_seconds()
        self._allowed_algs = allowed_algs
        self._max_list_bytes = max_list_bytes
        self._max_entries = max_entries
        self._cache: dict[str, _CacheEntry] = {}
        self._lock = threading.Lock()

    def _fetch(self, uri: str, now: datetime) -> StatusListToken:
        try:
            body = self._fetcher.fetch(uri, accept=STATUS_LIST_JWT_MEDIA_TYPE)
            token = body.decode("ascii").strip()
            unverified = decode_unverified(token)
            key = self._key_lookup(unverified.header, unverified.payload)
            return verify_status_list_token(
                token, key, uri=uri, now=now, allowed_algs=self._allowed_algs,
                max_list_bytes=self._max_list_bytes,
            )
        except TesseraError as exc:
            raise TesseraError(
                ErrorCode.STATUS_UNAVAILABLE, f"status list {uri}: {exc.code.value}: {exc.detail}"
            ) from exc
        except Exception as exc:
            # A caller-supplied fetcher or key lookup may raise anything; the
            # verifier must still get a code, never a crash.
            raise TesseraError(
                ErrorCode.STATUS_UNAVAILABLE, f"status list {uri}: {type(exc).__name__}"
            ) from exc

    def token(self, uri: str, *, now: datetime | None = None) -> StatusListToken:
        """The verified token for ``uri``, from the cache while it is fresh."""
        now = now or self._clock()
        t = now.timestamp()
        with self._lock:
            hit = self._cache.get(uri)
            if hit is not None and t < hit.fresh_until:
                telemetry.count(telemetry.CACHE_STATUS_LIST, "hit")
                return hit.token
        telemetry.count(telemetry.CACHE_STATUS_LIST, "miss")
        token = self._fetch(uri, now)
        fresh_until = t + self._max_age
        if token.ttl is not None:
            fresh_until = min(fresh_until, t + token.ttl)
        if token.expires_at is not None:
            fresh_until = min(fresh_until, float(token.expires_at))
        with self._lock:
            self._cache.pop(uri, None)
            while len(self._cache) >= self._max_entries:
                self._cache.pop(next(iter(self._cache)))
            self._cache[uri] = _CacheEntry(token, fresh_until)
        return token

    def status(self, uri: str, idx: int, *, now: datetime | None = None) -> int:
        """The status value at ``idx`` in the list at ``uri``."""
        status_list = self.token(uri, now=now).status_list
        if not _is_int(idx) or not 0 <= idx < status_list.size:
            # §8.3 step 6: out of bounds means no statement can be made.
            raise TesseraError(
                ErrorCode.STATUS_UNAVAILABLE, f"index {idx} is outside the status list {uri}"
            )
        return status_list.get(idx)

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()


def check_token_status(
    status_claim: Any,
    checker: StatusChecker,
    *,
    now: datetime | None = None,
    accept: Collection[int] = (TokenStatus.VALID,),
) -> int:
    """Look up a Referenced Token's status; raise unless it is acceptable.

    INVALID (1) raises ``revoked``, SUSPENDED (2) raises ``suspended``; any
    other value not in ``accept`` (e.g. the application-specific 0x03) is
    ``status_unavailable``, since we cannot say what it means. Returns the
    value when accepted.
    """
    ref = parse_status_claim(status_claim)
    value = checker.status(ref.uri, ref.idx, now=now)
    if value in accept:
        return value
    if value == TokenStatus.INVALID:
        raise TesseraError(ErrorCode.REVOKED, "the credential has been revoked")
    if value == TokenStatus.SUSPENDED:
        raise TesseraError(ErrorCode.SUSPENDED, "the credential is suspended")
    raise TesseraError(ErrorCode.STATUS_UNAVAILABLE, f"unrecognised status value {value:#04x}")


# --------------------------------------------------------------------------
# W3C Bitstring Status List v1.0.

BITSTRING_PURPOSES: Final = frozenset({"revocation", "suspension", "message"})


class BitstringStatusList:
    """A W3C bitstring: index 0 is the left-most (most significant) bit (§2.2).

    Entries of ``status_size`` bits sit at bit position
    ``index * status_size`` (§3.4), the first bit being the most significant
    of the value.
    """

    __slots__ = ("_data", "_status_size")

    def __init__(
        self,
        size: int = DEFAULT_LIST_SIZE,
        *,
        status_size: int = 1,
        min_entries: int = BITSTRING_MIN_ENTRIES,
    ) -> None:
        if not _is_int(status_size) or not 1 <= status_size <= 8:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "status_size must be 1 to 8 bits")
        if not _is_int(size) or not min_entries <= size <= MAX_INDEX:
            raise TesseraError(
                ErrorCode.INVALID_REQUEST,
                f"a bitstring status list needs at least {min_entries} entries (herd privacy)",
            )
        self._status_size = status_size
        self._data = bytearray(-(-size * status_size // 8))

    @classmethod
    def _wrap(cls, data: bytes, status_size: int) -> BitstringStatusList:
        out = cls.__new__(cls)
        out._status_size = status_size
        out._data = bytearray(data)
        return out

    @property
    def status_size(self) -> int:
        return self._status_size

    @property
    def size(self) -> int:
        return len(self._data) * 8 // self._status_size

    def to_bytes(self) -> bytes:
        return bytes(self._data)

    def _first_bit(self, idx: int) -> int:
        if not _is_int(idx) or not 0 <= idx < self.size:
            raise TesseraError(ErrorCode.INVALID_REQUEST, f"index {idx!r} is outside the list")
        return idx * self._status_size

    def get(self, idx: int) -> int:
        pos = self._first_bit(idx)
        value = 0
        for bit in range(pos, pos + self._status_size):
            value = (value << 1) | ((self._data[bit >> 3] >> (7 - (bit & 7))) & 1)
        return value

    def set(self, idx: int, value: int) -> None:
        if not _is_int(value) or not 0 <= value < (1 << self._status_size):
            raise TesseraError(
                ErrorCode.INVALID_REQUEST,
                f"status {value!r} does not fit in {self._status_size} bits",
            )
        pos = self._first_bit(idx)
        for offset in range(self._status_size):
            bit = pos + offset
            mask = 1 << (7 - (bit & 7))
            if (value >> (self._status_size - 1 - offset)) & 1:
                self._data[bit >> 3] |= mask
            else:
                self._data[bit >> 3] &= ~mask

    def encode(self) -> str:
        """``encodedList``: ``u`` + base64url(GZIP(bitstring)) (§2.2, §3.3)."""
        # mtime=0 keeps the output a pure function of the list (cacheable, diffable).
        return "u" + b64url_encode(gzip.compress(bytes(self._data), compresslevel=9, mtime=0))

    @classmethod
    def decode(
        cls,
        encoded: Any,
        *,
        status_size: int = 1,
        min_entries: int = BITSTRING_MIN_ENTRIES,
        max_bytes: int = MAX_LIST_BYTES,
    ) -> BitstringStatusList:
        """Expand ``encodedList`` (§3.5); refuse lists under ``min_entries`` (§3.2 step 9)."""
        if not isinstance(encoded, str) or not encoded.startswith("u"):
            raise TesseraError(
                ErrorCode.MALFORMED, "encodedList must be multibase base64url ('u' prefix)"
            )
        if not _is_int(status_size) or not 1 <= status_size <= 8:
            raise TesseraError(ErrorCode.MALFORMED, "statusSize must be 1 to 8 bits")
        raw = b64url_decode(encoded[1:], max_len=_b64_cap(max_bytes))
        # wbits=31: the GZIP container only (RFC 1952), as §3.3 requires.
        data = _inflate(raw, wbits=31, max_bytes=max_bytes, what="encodedList")
        out = cls._wrap(data, status_size)
        if out.size < min_entries:
            raise TesseraError(
                ErrorCode.MALFORMED,
                f"status list has {out.size} entries, fewer than the minimum {min_entries}",
            )
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BitstringStatusList):
            return NotImplemented
        return self._status_size == other._status_size and self._data == other._data

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"BitstringStatusList(size={self.size}, status_size={self._status_size})"


def _rfc3339(value: datetime) -> str:
    if value.tzinfo is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "datetimes must be timezone-aware")
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def bitstring_status_list_credential(
    status_list: BitstringStatusList,
    *,
    credential_id: str,
    issuer: str,
    status_purpose: str | Iterable[str],
    valid_from: datetime | None = None,
    valid_until: datetime | None = None,
    status_messages: list[dict[str, str]] | None = None,
    ttl_ms: int | None = None,
) -> dict[str, Any]:
    """The unsigned ``BitstringStatusListCredential`` (VCDM 2.0, §2.2).

    Securing it (a Data Integrity proof) is the caller's next step. The
    ``https://www.w3.org/ns/credentials/v2`` context defines every term used.
    """
    if not _is_uri(credential_id):
        raise TesseraError(ErrorCode.INVALID_REQUEST, "credential_id must be an absolute URL")
    purposes = [status_purpose] if isinstance(status_purpose, str) else list(status_purpose)
    if not purposes or not all(isinstance(p, str) and p for p in purposes):
        raise TesseraError(ErrorCode.INVALID_REQUEST, "status_purpose must be non-empty strings")
    subject: dict[str, Any] = {
        "id": f"{credential_id}#list",
        "type": "BitstringStatusList",
        "statusPurpose": purposes[0] if len(purposes) == 1 else purposes,
        "encodedList": status_list.encode(),
    }
    if status_list.status_size != 1 or "message" in purposes:
        subject["statusSize"] = status_list.status_size
    if "message" in purposes or status_messages is not None:
        if status_messages is None:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "statusPurpose message needs messages")
        subject["statusMessages"] = _check_messages(
            status_messages, status_list.status_size, ErrorCode.INVALID_REQUEST
        )
    if ttl_ms is not None:
        if not _is_int(ttl_ms) or ttl_ms <= 0:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "ttl_ms must be a positive integer")
        subject["ttl"] = ttl_ms
    credential: dict[str, Any] = {
        "@context": ["https://www.w3.org/ns/credentials/v2"],
        "id": credential_id,
        "type": ["VerifiableCredential", "BitstringStatusListCredential"],
        "issuer": issuer,
    }
    if valid_from is not None:
        credential["validFrom"] = _rfc3339(valid_from)
    if valid_until is not None:
        credential["validUntil"] = _rfc3339(valid_until)
    credential["credentialSubject"] = subject
    return credential


def _check_messages(messages: Any, status_size: int, code: ErrorCode) -> list[dict[str, Any]]:
    # §2.1 statusMessage: one object per possible value, each with a "0x.." status.
    if not isinstance(messages, list) or len(messages) != 1 << status_size:
        raise TesseraError(code, f"statusMessage needs exactly {1 << status_size} entries")
    for i, item in enumerate(messages):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("status"), str)
            or not isinstance(item.get("message"), str)
        ):
            raise TesseraError(code, "each statusMessage needs string status and message")
        try:
            value = int(item["status"], 16) if item["status"].lower().startswith("0x") else -1
        except ValueError:
            value = -1
        if value != i:
            raise TesseraError(code, f"statusMessage[{i}].status must be {i:#x}")
    return messages


@dataclass(frozen=True)
class BitstringStatusEntry:
    """A parsed ``BitstringStatusListEntry`` (§2.1)."""

    status_list_credential: str
    status_list_index: int
    status_purpose: str
    status_size: int = 1
    status_messages: tuple[dict[str, Any], ...] | None = None
    id: str | None = None


def parse_bitstring_status_entry(entry: Any) -> BitstringStatusEntry:
    """Validate one ``credentialStatus`` entry of type ``BitstringStatusListEntry``."""
    if not isinstance(entry, dict):
        raise TesseraError(ErrorCode.MALFORMED, "credentialStatus entry must be an object")
    if entry.get("type") != "BitstringStatusListEntry":
        raise TesseraError(
            ErrorCode.MALFORMED, "credentialStatus type must be BitstringStatusListEntry"
        )
    purpose = entry.get("statusPurpose")
    if not isinstance(purpose, str) or not purpose:
        raise TesseraError(ErrorCode.MALFORMED, "statusPurpose must be a non-empty string")
    index = entry.get("statusListIndex")
    # §2.1: "an arbitrary size integer ... expressed as a string in base 10".
    if not isinstance(index, str) or not _DECIMAL.match(index) or int(index) > MAX_INDEX:
        raise TesseraError(
            ErrorCode.MALFORMED, "statusListIndex must be a base-10 integer string"
        )
    url = entry.get("statusListCredential")
    if not _is_uri(url):
        raise TesseraError(ErrorCode.MALFORMED, "statusListCredential must be a URL")
    assert isinstance(url, str)
    size = entry.get("statusSize", 1)
    if not _is_int(size) or not 1 <= size <= 8:
        raise TesseraError(ErrorCode.MALFORMED, "statusSize must be an integer from 1 to 8")
    messages = entry.get("statusMessage")
    if size > 1 and messages is None:
        raise TesseraError(ErrorCode.MALFORMED, "statusSize > 1 requires statusMessage")
    if messages is not None:
        messages = tuple(_check_messages(messages, size, ErrorCode.MALFORMED))
    entry_id = entry.get("id")
    if entry_id is not None and (not _is_uri(entry_id) or entry_id == url):
        # §2.1: the entry id MUST NOT be the URL of the status list itself.
        raise TesseraError(ErrorCode.MALFORMED, "credentialStatus id is not a valid entry URL")
    return BitstringStatusEntry(url, int(index), purpose, size, messages, entry_id)


def read_bitstring_status(
    entry: BitstringStatusEntry,
    status_list_credential: Any,
    *,
    min_entries: int = BITSTRING_MIN_ENTRIES,
    max_bytes: int = MAX_LIST_BYTES,
) -> int:
    """The status value for ``entry`` in an already *verified* list credential.

    Follows §3.2 steps 5-10; a list that does not answer for this entry
    (wrong purpose, wrong id, index out of range, too short) is
    ``status_unavailable``.
    """

    def unavailable(detail: str) -> TesseraError:
        return TesseraError(ErrorCode.STATUS_UNAVAILABLE, detail)

    if not isinstance(status_list_credential, dict):
        raise unavailable("status list credential must be an object")
    types = status_list_credential.get("type")
    if not isinstance(types, list) or "BitstringStatusListCredential" not in types:
        raise unavailable("not a BitstringStatusListCredential")
    cred_id = status_list_credential.get("id")
    if cred_id is not None and cred_id != entry.status_list_credential:
        raise unavailable("status list credential id differs from statusListCredential")
    subject = status_list_credential.get("credentialSubject")
    if not isinstance(subject, dict) or subject.get("type") != "BitstringStatusList":
        raise unavailable("credentialSubject is not a BitstringStatusList")
    purposes = subject.get("statusPurpose")
    purposes = [purposes] if isinstance(purposes, str) else purposes
    if not isinstance(purposes, list) or entry.status_purpose not in purposes:
        raise unavailable(f"status list does not serve purpose {entry.status_purpose!r}")
    list_size = subject.get("statusSize", 1)
    if list_size != entry.status_size:
        raise unavailable("statusSize of the entry and the list differ")
    try:
        bits = BitstringStatusList.decode(
            subject.get("encodedList"), status_size=entry.status_size,
            min_entries=min_entries, max_bytes=max_bytes,
        )
    except TesseraError as exc:
        raise unavailable(f"encodedList: {exc.code.value}: {exc.detail}") from exc
    if entry.status_list_index >= bits.size:
        # §3.2 step 10: RANGE_ERROR.
        raise unavailable(f"statusListIndex {entry.status_list_index} is outside the list")
    return bits.get(entry.status_list_index)


def check_bitstring_status(
    entry: BitstringStatusEntry,
    status_list_credential: Any,
    *,
    min_entries: int = BITSTRING_MIN_ENTRIES,
    max_bytes: int = MAX_LIST_BYTES,
) -> int:
    """Raise ``revoked``/``suspended`` when the entry's bit is set; return the value.

    For ``message`` and custom purposes the value is returned for the caller
    to interpret against ``entry.status_messages``.
    """
    value = read_bitstring_status(
        entry, status_list_credential, min_entries=min_entries, max_bytes=max_bytes
    )
    if value and entry.status_purpose == "revocation":
        raise TesseraError(ErrorCode.REVOKED, "the credential has been revoked")
    if value and entry.status_purpose == "suspension":
        raise TesseraError(ErrorCode.SUSPENDED, "the credential is suspended")
    return value


# --------------------------------------------------------------------------
# Random index allocation.


class IndexAllocator:
    """Hands out unused list indexes uniformly at random from ``[0, size)``.

    Either give ``used`` (the allocator copies it and records what it hands
    out) or ``is_used`` (a callback such as a database lookup; then the
    caller records the index, ideally under a unique constraint, and retries
    on a race). Rejection sampling with :mod:`secrets` is exactly uniform over
    the free indexes; once ``attempts`` draws all hit used slots the list is
    nearly full, and we pick uniformly from an explicit list of the free
    slots instead (kept between calls in ``used`` mode, rescanned in
    ``is_used`` mode since someone else owns that state). A full list raises
    ``conflict``.
    """

    def __init__(
        self,
        size: int = DEFAULT_LIST_SIZE,
        *,
        used: Iterable[int] = (),
        is_used: Callable[[int], bool] | None = None,
        attempts: int = 64,
    ) -> None:
        if not _is_int(size) or not 0 < size <= MAX_INDEX:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "size must be a positive integer")
        self._size = size
        self._used: set[int] | None = None if is_used is not None else set(used)
        self._is_used = is_used
        self._attempts = attempts
        self._free: list[int] | None = None

    @property
    def size(self) -> int:
        return self._size

    def _taken(self, idx: int) -> bool:
        if self._is_used is not None:
            return self._is_used(idx)
        assert self._used is not None
        return idx in self._used

    def allocate(self) -> int:
        if self._free is None:
            for _ in range(self._attempts):
                idx = secrets.randbelow(self._size)
                if not self._taken(idx):
                    return self._record(idx)
            free = [i for i in range(self._size) if not self._taken(i)]
        else:
            free = self._free
        if not free:
            raise TesseraError(ErrorCode.CONFLICT, "the status list is full")
        # Swap-remove a uniformly chosen free slot.
        pick = secrets.randbelow(len(free))
        free[pick], free[-1] = free[-1], free[pick]
        idx = free.pop()
        if self._used is not None:
            self._free = free
        return self._record(idx)

    def _record(self, idx: int) -> int:
        if self._used is not None:
            self._used.add(idx)
        return idx
