"""Compact JWS (RFC 7515) with an algorithm allow-list.

jwcrypto parses and validates the JWKs (see :mod:`tessera.keys`); the compact
serialization itself is done here so that the verify hot path is one header
parse, one payload parse and one signature check, and so that the rules are
ours to state:

* ``alg`` must be in the caller's allow-list and must match the key's own
  algorithm: ``none`` and HMAC (``HS*``) never verify, whatever the key
  (RFC 8725 §2.1 and §3.1, algorithm confusion);
* ``crit`` is refused (we understand no extensions, RFC 7515 §4.1.11);
* ``b64: false`` (RFC 7797) is refused.

Interop with jwcrypto's own JWS is tested both ways.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, NamedTuple

from tessera.encoding import b64url_decode, b64url_encode, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import SUPPORTED_ALGS, PublicKey
from tessera.typing import Signer

__all__ = ["DecodedJWS", "decode_unverified", "sign_compact", "verify_compact"]

MAX_JWS_BYTES = 512 * 1024


class DecodedJWS(NamedTuple):
    """A split and parsed compact JWS, signature not checked.

    A NamedTuple rather than a frozen dataclass: two are built per SD-JWT
    presentation, and a frozen dataclass's __init__ (object.__setattr__ per
    field) cost more than twice as much (bench/README.md, issue 10 session 5).
    """

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _json_b64(value: dict[str, Any]) -> str:
    import json

    return b64url_encode(json.dumps(value, separators=(",", ":")).encode())


def sign_compact(header: dict[str, Any], payload: dict[str, Any], signer: Signer) -> str:
    """Sign ``payload``; ``alg`` (and ``kid`` when the signer has one) are set here."""
    full_header = {"alg": signer.alg, **header}
    if full_header["alg"] != signer.alg:
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, "header alg differs from the key's")
    if signer.key_id and "kid" not in full_header and "jwk" not in full_header:
        full_header["kid"] = signer.key_id
    signing_input = f"{_json_b64(full_header)}.{_json_b64(payload)}"
    signature = signer.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64url_encode(signature)}"


def decode_unverified(token: str, *, max_bytes: int = MAX_JWS_BYTES) -> DecodedJWS:
    """Split and parse a compact JWS without checking its signature."""
    if not isinstance(token, str):
        raise TesseraError(ErrorCode.MALFORMED, "JWS is not a string")
    if len(token) > max_bytes:
        raise TesseraError(ErrorCode.TOO_LARGE, "JWS too large")
    # Exactly two dots. str.find is a memchr; split walks the ~1.5 KB
    # issuer JWT character by character, and the signing input is then a
    # slice of the token instead of a re-join of its parts.
    first = token.find(".")
    second = token.find(".", first + 1) if first >= 0 else -1
    if second < 0 or token.find(".", second + 1) >= 0:
        raise TesseraError(ErrorCode.MALFORMED, "not a compact JWS")
    header = parse_json_object(b64url_decode(token[:first]))
    payload = parse_json_object(b64url_decode(token[first + 1:second]))
    signature = b64url_decode(token[second + 1:])
    return DecodedJWS(header, payload, token[:second].encode("ascii"), signature)


def check_header(header: dict[str, Any], allowed_algs: Collection[str]) -> str:
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in allowed_algs or alg not in SUPPORTED_ALGS:
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, f"algorithm {alg!r} is not allowed")
    if "crit" in header:
        raise TesseraError(ErrorCode.MALFORMED, "critical JWS extensions are not supported")
    if header.get("b64", True) is not True:
        raise TesseraError(ErrorCode.MALFORMED, "unencoded JWS payloads are not supported")
    return alg


def verify_signature(jws: DecodedJWS, key: PublicKey, allowed_algs: Collection[str]) -> None:
    alg = check_header(jws.header, allowed_algs)
    if alg != key.alg:
        # The key decides the algorithm, never the token (RFC 8725 §3.1).
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, f"{alg} does not fit a {key.crv} key")
    key.verify(jws.signature, jws.signing_input)


def verify_compact(
    token: str, key: PublicKey, *, allowed_algs: Collection[str] = SUPPORTED_ALGS,
    typ: str | None = None,
) -> DecodedJWS:
    """Decode and verify; raise a :class:`TesseraError` on any failure."""
    jws = decode_unverified(token)
    if typ is not None and jws.header.get("typ") != typ:
        raise TesseraError(ErrorCode.MALFORMED, f"JWS typ must be {typ!r}")
    verify_signature(jws, key, allowed_algs)
    return jws
