"""Strict, bounded decoders for everything that arrives from outside.

JSON from a presentation, a DID document or a status list is parsed with a
size cap, a nesting cap, no duplicate member names (RFC 8259 §4 leaves them
undefined; RFC 9901 §7.1 forbids ambiguity in disclosures), no NaN or
Infinity, and no number outside I-JSON's interoperable range (RFC 7493 §2.2:
magnitude at most 2**53 - 1, so ``1e400`` cannot become ``inf`` and every
NumericDate, index or amount fits a double and a 64-bit column). base64url
is the unpadded alphabet of RFC 4648 §5 and nothing else.
"""

from __future__ import annotations

import binascii
import json
import types
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pybase64

from tessera.errors import ErrorCode, TesseraError

__all__ = [
    "MAX_DEPTH",
    "MAX_JSON_BYTES",
    "MAX_JSON_NUMBER",
    "b64url_decode",
    "b64url_encode",
    "canonical_json",
    "json_integers",
    "parse_datetime",
    "parse_json",
    "parse_json_object",
]

MAX_JSON_BYTES = 256 * 1024
MAX_DEPTH = 32
# RFC 7493 §2.2 (I-JSON): integers beyond ±(2**53 - 1) lose precision in
# other parsers, so two verifiers could read different values; floats beyond
# it have no use in a credential and 1e400 would parse to infinity.
MAX_JSON_NUMBER = 2**53 - 1

_B64URL_INDEX = {
    c: i
    for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}


_STD_TO_URL = bytes.maketrans(b"+/", b"-_")


def _decode_padded(padded: bytes) -> bytes:
    # pybase64 (SIMD C): 0.5 us instead of 3.9 us with binascii for the 1.3 KB
    # payload of an issuer JWT, no slower on a 43-character digest
    # (bench/README.md, issue 10 session 5). validate=True refuses every byte
    # outside the standard alphabet plus the altchars, and '=' anywhere but at
    # the end; b64url_decode has refused '+', '/' and '=' before (altchars
    # leave the first two accepted). Positional: keyword parsing cost ~250 ns
    # a call, as much as decoding a 300-character value.
    out: bytes = pybase64.b64decode(padded, b"-_", True)
    return out


def b64url_encode(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_STD_TO_URL).rstrip(b"=").decode(
        "ascii"
    )


def b64url_decode(text: str, *, max_len: int = MAX_JSON_BYTES * 2) -> bytes:
    """Decode unpadded base64url, refusing padding, other alphabets and junk."""
    if not isinstance(text, str):
        raise TesseraError(ErrorCode.MALFORMED, "base64url value is not a string")
    if len(text) > max_len:
        raise TesseraError(ErrorCode.TOO_LARGE, "base64url value too large")
    rem = len(text) % 4
    # Padding, and the two characters of the standard alphabet, are refused
    # here (three C scans); the decoder refuses every other outsider.
    if rem == 1 or "=" in text or "+" in text or "/" in text:
        raise TesseraError(ErrorCode.MALFORMED, "not unpadded base64url")
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise TesseraError(ErrorCode.MALFORMED, "not unpadded base64url") from None
    try:
        raw = _decode_padded(data + b"=" * (-rem % 4) if rem else data)
    except (binascii.Error, ValueError) as exc:
        raise TesseraError(ErrorCode.MALFORMED, "not unpadded base64url") from exc
    # Non-canonical encodings (stray low bits in the last character) would let
    # two strings decode to the same bytes; digests are over the string.
    if rem and _B64URL_INDEX[text[-1]] & (0x0F if rem == 2 else 0x03):
        raise TesseraError(ErrorCode.MALFORMED, "non-canonical base64url")
    return raw


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Built in C; a duplicate name is the only way the dict ends up shorter.
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise TesseraError(ErrorCode.MALFORMED, f"duplicate JSON member {key!r}")
            seen.add(key)
    return out


def _refuse_constant(name: str) -> Any:
    raise TesseraError(ErrorCode.MALFORMED, f"JSON constant {name} is not allowed")


def _depth(value: Any) -> int:
    # Iterative, so a hostile document cannot exhaust the Python stack here.
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest


def _bounded_int(text: str) -> int:
    # Length first: int() of a 4,000-digit string is quadratic work.
    if len(text) > 17:
        raise TesseraError(ErrorCode.MALFORMED, "JSON number out of range")
    value = int(text)
    if not -MAX_JSON_NUMBER <= value <= MAX_JSON_NUMBER:
        raise TesseraError(ErrorCode.MALFORMED, "JSON number out of range")
    return value


def _bounded_float(text: str) -> float:
    value = float(text)
    # The negated test also catches NaN; inf is what 1e400 becomes.
    if not -MAX_JSON_NUMBER <= value <= MAX_JSON_NUMBER:
        raise TesseraError(ErrorCode.MALFORMED, "JSON number out of range or not finite")
    return value


_DECODER = json.JSONDecoder(
    object_pairs_hook=_no_duplicates,
    parse_constant=_refuse_constant,
    parse_int=_bounded_int,
    parse_float=_bounded_float,
)
# Set by JSONDecoder.__init__ (the C scanner when available); not in typeshed.
_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def parse_json(
    data: str | bytes, *, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_DEPTH
) -> Any:
    """Parse untrusted JSON strictly; raise ``malformed`` or ``too_large``."""
    if isinstance(data, bytes):
        if len(data) > max_bytes:
            raise TesseraError(ErrorCode.TOO_LARGE, f"JSON document over {max_bytes} bytes")
    elif len(data.encode("utf-8")) > max_bytes:
        raise TesseraError(ErrorCode.TOO_LARGE, f"JSON document over {max_bytes} bytes")
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        # The scanner alone, as JSONDecoder.decode uses it, minus its two
        # whitespace regex passes; anything but a document that fills the
        # text exactly (whitespace around it, junk, an error at the start)
        # goes through decode, which decides and words it the same as before.
        try:
            value, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            value = _DECODER.decode(text)
    except TesseraError:
        raise
    except RecursionError as exc:
        raise TesseraError(ErrorCode.TOO_LARGE, f"JSON nested deeper than {max_depth}") from exc
    except ValueError as exc:
        raise TesseraError(ErrorCode.MALFORMED, "not valid JSON") from exc
    # Counting brackets is C-speed; the walk only runs when nesting is possible.
    if text.count("[") + text.count("{") > max_depth and _depth(value) > max_depth:
        raise TesseraError(ErrorCode.TOO_LARGE, f"JSON nested deeper than {max_depth}")
    return value


def parse_json_object(data: str | bytes, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    value = parse_json(data, max_bytes=max_bytes)
    if not isinstance(value, dict):
        raise TesseraError(ErrorCode.MALFORMED, "expected a JSON object")
    return value


def _takes_int(annotation: Any) -> bool:
    if annotation is int:
        return True
    return (typing.get_origin(annotation) in (typing.Union, types.UnionType)
            and any(_takes_int(a) for a in typing.get_args(annotation)))


def json_integers(annotation: Any, value: Any) -> Any:
    """``value`` with an integral JSON number (``5.0``) as an int where ``annotation`` takes one.

    JSON Schema's ``integer`` is any number with a zero fractional part (JSON Schema
    2020-12 Core §4.2.1), so ``5.0`` fits a schema that says ``integer``; pydantic's
    strict mode takes only an int. ``false``, ``"5"`` and ``1.5`` stay what they are,
    to be refused. Lists of integers are followed; nothing else is (a free-form
    member such as a ``vp_token`` keeps its numbers as sent).
    """
    if type(value) is float and value.is_integer() and _takes_int(annotation):
        return int(value)
    if type(value) is list and typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation) or (Any,)
        return [json_integers(item, v) for v in value]
    return value


def canonical_json(value: Any) -> bytes:
    """Compact, key-sorted JSON bytes (for thumbprints, hashes and storage)."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def parse_datetime(value: Any, what: str) -> datetime:
    """An XML Schema dateTime with a time zone (VCDM §4.6); ``malformed`` otherwise.

    Without an offset a time is ambiguous, so it is refused rather than guessed.
    """
    if not isinstance(value, str) or len(value) > 64:
        raise TesseraError(ErrorCode.MALFORMED, f"{what} is not a dateTime string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise TesseraError(ErrorCode.MALFORMED, f"{what} is not an XML Schema dateTime") from exc
    if parsed.tzinfo is None:
        raise TesseraError(ErrorCode.MALFORMED, f"{what} has no time zone")
    return parsed
