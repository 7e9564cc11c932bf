"""SD-JWT VC: issue, present, verify.

Implements RFC 9901 (Selective Disclosure for JWTs) and the SD-JWT VC draft
(draft-ietf-oauth-sd-jwt-vc) on Tessera's compact JWS (:mod:`tessera.jose`):

* issuance: ``typ: dc+sd-jwt``, ``vct``, ``iss`` with ``kid`` naming the
  issuer's verification method, ``cnf.jwk`` holder binding, ``_sd_alg:
  sha-256``, every claim except the structural ones selectively disclosable,
  and decoy digests (RFC 9901 §4.2.5) so the number of claims does not leak;
* presentation: the holder keeps the disclosures it chooses and signs a
  KB-JWT (``typ: kb+jwt``, ``aud``, ``nonce``, ``iat``, ``sd_hash``, and
  OpenID4VP ``transaction_data_hashes`` when a transaction is bound);
* verification (RFC 9901 §7): issuer signature with an allow-listed
  algorithm, every disclosure's digest found exactly once, no duplicate
  digests or disclosures, no claim overwritten, KB-JWT bound to ``cnf``,
  ``sd_hash`` over the exact presentation, ``iat`` fresh, ``exp``/``nbf``
  with a small skew. The ``sd-jwt`` reference package skips the last three
  (see notes/dependencies.md); Tessera does not.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NamedTuple

from tessera.credentials import CredentialType
from tessera.encoding import b64url_decode, b64url_encode, parse_json
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import DecodedJWS, check_header, decode_unverified, sign_compact
from tessera.keys import SUPPORTED_ALGS, PublicKey
from tessera.typing import Signer

__all__ = [
    "DEFAULT_ALGS",
    "SdJwt",
    "VerifiedSdJwt",
    "check_times",
    "decode_disclosure",
    "disclosed_claim_names",
    "issue",
    "issue_credential",
    "parse",
    "present",
    "verify",
]

TYP: Final = "dc+sd-jwt"
# Earlier drafts used vc+sd-jwt; the draft asks verifiers to accept both
# during the transition (SD-JWT VC §3.2.1 note).
ACCEPTED_TYPS: Final = frozenset({"dc+sd-jwt", "vc+sd-jwt"})
KB_TYP: Final = "kb+jwt"
DEFAULT_ALGS: Final = SUPPORTED_ALGS
MAX_PRESENTATION_BYTES: Final = 256 * 1024
MAX_DISCLOSURES: Final = 512
# SD-JWT VC §3.2.2.2: these must never be selectively disclosable.
NEVER_DISCLOSABLE: Final = frozenset(
    {"iss", "nbf", "exp", "cnf", "vct", "vct#integrity", "status", "_sd", "_sd_alg", "..."}
)
_RESERVED_NAMES: Final = frozenset({"_sd", "...", "_sd_alg"})


class SdJwt(NamedTuple):
    """The parts of a serialized SD-JWT (RFC 9901 §4).

    Immutable like the frozen dataclass it was, and cheaper to build: one per
    presentation verified (see tessera.jose.DecodedJWS).
    """

    jwt: str
    disclosures: tuple[str, ...]
    kb_jwt: str | None

    def serialize(self) -> str:
        body = "~".join((self.jwt, *self.disclosures)) + "~"
        return body + (self.kb_jwt or "")

    @property
    def without_kb(self) -> str:
        """The string the KB-JWT's ``sd_hash`` covers (RFC 9901 §4.3.1)."""
        return "~".join((self.jwt, *self.disclosures)) + "~"


def parse(text: str) -> SdJwt:
    if not isinstance(text, str):
        raise TesseraError(ErrorCode.MALFORMED, "SD-JWT must be a string")
    if len(text) > MAX_PRESENTATION_BYTES:
        raise TesseraError(ErrorCode.TOO_LARGE, "SD-JWT presentation too large")
    # The issuer JWT is most of the text: find its end with str.find (a
    # memchr) and split only the disclosures and KB-JWT after it.
    end = text.find("~")
    if end < 0:
        raise TesseraError(ErrorCode.MALFORMED, "not an SD-JWT (no '~' separator)")
    parts = text[end + 1:].split("~")
    if len(parts) - 1 > MAX_DISCLOSURES:
        raise TesseraError(ErrorCode.TOO_LARGE, "too many disclosures")
    disclosures = tuple(parts[:-1])
    jwt, last = text[:end], parts[-1]
    if not jwt or "" in disclosures:
        raise TesseraError(ErrorCode.MALFORMED, "empty SD-JWT component")
    return SdJwt(jwt, disclosures, last or None)


def _digest(disclosure: str) -> str:
    # RFC 9901 §4.2.3: over the US-ASCII bytes of the base64url disclosure string.
    return b64url_encode(hashlib.sha256(disclosure.encode("ascii")).digest())


def _salt() -> str:
    return b64url_encode(secrets.token_bytes(16))  # 128 bits, RFC 9901 §4.2.1


def _encode_disclosure(items: list[Any]) -> str:
    return b64url_encode(json.dumps(items, ensure_ascii=False).encode("utf-8"))


def decode_disclosure(disclosure: str) -> list[Any]:
    """Decode one disclosure: ``[salt, name, value]`` or ``[salt, value]``."""
    value = parse_json(b64url_decode(disclosure), max_bytes=64 * 1024)
    if not isinstance(value, list) or len(value) not in (2, 3) or not isinstance(value[0], str):
        raise TesseraError(ErrorCode.MALFORMED, "a disclosure must be [salt, (name,) value]")
    if len(value) == 3:
        name = value[1]
        if not isinstance(name, str):
            raise TesseraError(ErrorCode.MALFORMED, "disclosure claim name is not a string")
        if name in _RESERVED_NAMES:
            # RFC 9901 §7.1 step 3.c.ii.3
            raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, f"disclosure names {name!r}")
    return value


# -- issuance -------------------------------------------------------------------


def issue(
    claims: Mapping[str, Any],
    *,
    signer: Signer,
    issuer: str,
    vct: str,
    holder_key: PublicKey | None,
    issued_at: datetime,
    expires_at: datetime | None,
    not_before: datetime | None = None,
    status: Mapping[str, Any] | None = None,
    always_visible: Collection[str] = (),
    decoys: int | None = None,
    extra_header: Mapping[str, Any] | None = None,
) -> str:
    """Issue an SD-JWT VC whose top-level claims are selectively disclosable.

    ``always_visible`` names claims left in clear (e.g. the programme, which
    ``iss`` and ``vct`` reveal anyway). ``decoys`` defaults to a random count
    between 1 and 5 (RFC 9901 §4.2.5).
    """
    clash = NEVER_DISCLOSABLE.intersection(claims)
    if clash:
        raise TesseraError(ErrorCode.MALFORMED, f"reserved claim names in claims: {sorted(clash)}")
    payload: dict[str, Any] = {"iss": issuer, "vct": vct, "iat": int(issued_at.timestamp())}
    if expires_at is not None:
        payload["exp"] = int(expires_at.timestamp())
    if not_before is not None:
        payload["nbf"] = int(not_before.timestamp())
    if holder_key is not None:
        payload["cnf"] = {"jwk": holder_key.to_jwk()}
    if status is not None:
        payload["status"] = dict(status)
    digests: list[str] = []
    disclosures: list[str] = []
    for name, value in claims.items():
        if name in always_visible:
            payload[name] = value
            continue
        disclosure = _encode_disclosure([_salt(), name, value])
        disclosures.append(disclosure)
        digests.append(_digest(disclosure))
    count = decoys if decoys is not None else 1 + secrets.randbelow(5)
    digests.extend(b64url_encode(hashlib.sha256(secrets.token_bytes(32)).digest())
                   for _ in range(count))
    # Sorted so the position of a digest says nothing about its claim (§4.2.4.1).
    payload["_sd"] = sorted(digests)
    payload["_sd_alg"] = "sha-256"
    header = {"typ": TYP, **(extra_header or {})}
    jwt = sign_compact(header, payload, signer)
    return SdJwt(jwt, tuple(disclosures), None).serialize()


# -- presentation ---------------------------------------------------------------


def disclosed_claim_names(sd_jwt: str) -> dict[str, str]:
    """Map each top-level disclosure's claim name to its disclosure string (holder side)."""
    parsed = parse(sd_jwt)
    out: dict[str, str] = {}
    for disclosure in parsed.disclosures:
        decoded = decode_disclosure(disclosure)
        if len(decoded) == 3:
            out.setdefault(decoded[1], disclosure)
    return out


def _transaction_data_hashes(transaction_data: Iterable[str]) -> list[str]:
    # OpenID4VP 1.0 §8.4: hash of the base64url string as received in the request.
    return [_digest(item) for item in transaction_data]


def _nested_disclosures(value: Any, by_digest: Mapping[str, str]) -> list[str]:
    """Disclosures referenced from inside ``value`` (recursive SD), depth-first."""
    found: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for digest in item.get("_sd", []) if isinstance(item.get("_sd"), list) else []:
                if digest in by_digest:
                    found.append(by_digest[digest])
                    stack.append(decode_disclosure(by_digest[digest])[-1])
            stack.extend(v for k, v in item.items() if k != "_sd")
        elif isinstance(item, list):
            for element in item:
                if isinstance(element, dict) and set(element) == {"..."}:
                    digest = element["..."]
                    if digest in by_digest:
                        found.append(by_digest[digest])
                        stack.append(decode_disclosure(by_digest[digest])[-1])
                else:
                    stack.append(element)
    return found


def present(
    sd_jwt: str,
    *,
    disclose: Collection[str],
    holder: Signer | None,
    audience: str | None = None,
    nonce: str | None = None,
    issued_at: datetime | None = None,
    transaction_data: Collection[str] | None = None,
) -> str:
    """Keep only the disclosures for the top-level claims in ``disclose``.

    A disclosed claim brings every disclosure nested inside it, so the
    verifier sees it whole. With a ``holder`` signer a KB-JWT is appended.
    """
    parsed = parse(sd_jwt)
    by_name = disclosed_claim_names(sd_jwt)
    unknown = set(disclose) - set(by_name)
    if unknown:
        raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, f"no disclosure for {sorted(unknown)}")
    by_digest = {_digest(d): d for d in parsed.disclosures}
    chosen: list[str] = []
    for name in disclose:
        top = by_name[name]
        chosen.append(top)
        chosen.extend(_nested_disclosures(decode_disclosure(top)[-1], by_digest))
    kept = tuple(d for d in parsed.disclosures if d in set(chosen))  # issuer's order
    presentation = SdJwt(parsed.jwt, kept, None)
    if holder is None:
        return presentation.serialize()
    if audience is None or nonce is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "key binding needs an audience and a nonce")
    when = issued_at or datetime.now(UTC)
    kb_payload: dict[str, Any] = {
        "iat": int(when.timestamp()),
        "aud": audience,
        "nonce": nonce,
        "sd_hash": _digest(presentation.without_kb),
    }
    if transaction_data:
        kb_payload["transaction_data_hashes"] = _transaction_data_hashes(transaction_data)
        kb_payload["transaction_data_hashes_alg"] = "sha-256"
    kb_jwt = sign_compact({"typ": KB_TYP}, kb_payload, _without_kid(holder))
    return SdJwt(parsed.jwt, kept, kb_jwt).serialize()


class _without_kid:
    """The KB-JWT is checked against ``cnf``, so its header carries no ``kid``."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer
        self.alg = signer.alg
        self.key_id = None
        self.public_key = signer.public_key

    def sign(self, data: bytes) -> bytes:
        return self._signer.sign(data)


# -- verification ---------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedSdJwt:
    """What a verifier may rely on after :func:`verify` returned."""

    issuer: str
    vct: str
    claims: dict[str, Any]
    """Disclosed claims and the always-visible ones, without JWT structure."""
    payload: dict[str, Any]
    """The whole processed payload (``iss``, ``cnf``, ``status`` …)."""
    header: dict[str, Any]
    holder_key: PublicKey | None
    key_binding: dict[str, Any] | None
    disclosed: frozenset[str] = field(default_factory=frozenset)


IssuerKeyLookup = Callable[[str, dict[str, Any]], PublicKey]
"""``(iss, jose_header) -> PublicKey``; raise a TesseraError when unknown."""

_STRUCTURAL: Final = frozenset(
    {"iss", "iat", "nbf", "exp", "cnf", "vct", "vct#integrity", "status", "sub", "jti",
     "_sd", "_sd_alg"}
)


def _ts(payload: Mapping[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if type(value) is int:
        return value  # what every issuer sends; bool and floats take the checks below
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TesseraError(ErrorCode.MALFORMED, f"{name} must be a NumericDate")
    return int(value)


def check_times(payload: Mapping[str, Any], now: datetime, skew: timedelta) -> None:
    t, s = now.timestamp(), skew.total_seconds()
    exp, nbf = _ts(payload, "exp"), _ts(payload, "nbf")
    if exp is not None and t - s >= exp:
        raise TesseraError(ErrorCode.EXPIRED, "credential expired")
    if nbf is not None and t + s < nbf:
        raise TesseraError(ErrorCode.NOT_YET_VALID, "credential not yet valid")
    iat = _ts(payload, "iat")
    if iat is not None and iat > t + s:
        raise TesseraError(ErrorCode.NOT_YET_VALID, "credential issued in the future")


_CONTAINERS: Final = (dict, list)


class _Unpacker:
    """RFC 9901 §7.1 step 3: replace digests by disclosed values, exactly once each."""

    def __init__(self, disclosures: Iterable[str]) -> None:
        self.by_digest: dict[str, list[Any]] = {}
        for disclosure in disclosures:
            digest = _digest(disclosure)
            if digest in self.by_digest:
                raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, "duplicate disclosure")
            self.by_digest[digest] = decode_disclosure(disclosure)
        self.seen_digests: set[str] = set()
        self.used: set[str] = set()
        self.top_level: set[str] = set()

    def _mark(self, digest: Any) -> None:
        if not isinstance(digest, str):
            raise TesseraError(ErrorCode.MALFORMED, "digest is not a string")
        if digest in self.seen_digests:
            # §7.1 step 4: a digest may appear only once in the whole payload.
            raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, "digest appears more than once")
        self.seen_digests.add(digest)

    def unpack(self, node: Any, depth: int = 0, *, top: bool = False) -> Any:
        if depth > 32:
            raise TesseraError(ErrorCode.TOO_LARGE, "disclosures nested too deep")
        if isinstance(node, list):
            out_list: list[Any] = []
            for element in node:
                if isinstance(element, dict) and "..." in element:
                    if len(element) != 1:
                        raise TesseraError(ErrorCode.MALFORMED, "array digest object has extras")
                    digest = element["..."]
                    self._mark(digest)
                    disclosed = self.by_digest.get(digest)
                    if disclosed is None:
                        continue  # undisclosed element or decoy
                    if len(disclosed) != 2:
                        raise TesseraError(
                            ErrorCode.DISCLOSURE_MISMATCH, "object disclosure used in an array"
                        )
                    self.used.add(digest)
                    out_list.append(self.unpack(disclosed[1], depth + 1))
                elif depth < 32 and not isinstance(element, _CONTAINERS):
                    out_list.append(element)  # a leaf: the call below would return it
                else:
                    out_list.append(self.unpack(element, depth + 1))
            return out_list
        if not isinstance(node, dict):
            return node
        out: dict[str, Any] = {}
        sd = node.get("_sd", [])
        if not isinstance(sd, list):
            raise TesseraError(ErrorCode.MALFORMED, "_sd must be an array")
        for key, value in node.items():
            if key in ("_sd", "_sd_alg"):
                continue
            if depth < 32 and not isinstance(value, _CONTAINERS):
                out[key] = value  # a leaf: most claims are; skip the call
            else:
                out[key] = self.unpack(value, depth + 1)
        seen, by_digest = self.seen_digests, self.by_digest
        for digest in sd:
            # self._mark, inlined: this loop runs for every digest and decoy.
            if not isinstance(digest, str):
                raise TesseraError(ErrorCode.MALFORMED, "digest is not a string")
            if digest in seen:
                raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, "digest appears more than once")
            seen.add(digest)
            disclosed = by_digest.get(digest)
            if disclosed is None:
                continue
            if len(disclosed) != 3:
                raise TesseraError(
                    ErrorCode.DISCLOSURE_MISMATCH, "array disclosure used in an object"
                )
            _, name, value = disclosed
            if name in out:
                # §7.1 step 3.c.ii.4: a disclosure must not overwrite a claim.
                raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, f"claim {name!r} given twice")
            self.used.add(digest)
            if depth < 32 and not isinstance(value, _CONTAINERS):
                out[name] = value
            else:
                out[name] = self.unpack(value, depth + 1)
            if top:
                self.top_level.add(name)
        return out


def verify(
    presentation: str,
    *,
    issuer_key: PublicKey | IssuerKeyLookup,
    now: datetime,
    audience: str | None,
    nonce: str | None,
    require_key_binding: bool = True,
    transaction_data: Collection[str] | None = None,
    allowed_algs: Collection[str] = DEFAULT_ALGS,
    clock_skew: timedelta = timedelta(seconds=60),
    max_kb_age: timedelta = timedelta(minutes=5),
    check_validity: bool = True,
) -> VerifiedSdJwt:
    """Verify an SD-JWT VC presentation; raise a :class:`TesseraError` on any failure.

    ``issuer_key`` is the issuer's public key, or a lookup called with
    ``(iss, header)`` (typically DID resolution of ``header["kid"]``).
    With ``require_key_binding`` (the default) a KB-JWT must be present and
    ``audience`` and ``nonce`` must be given.
    """
    if now.tzinfo is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "now must be timezone-aware")
    parsed = parse(presentation)
    jws = decode_unverified(parsed.jwt)
    typ = jws.header.get("typ")
    if typ not in ACCEPTED_TYPS:
        raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, f"typ {typ!r} is not an SD-JWT VC")
    alg = check_header(jws.header, allowed_algs)
    payload = jws.payload
    iss = payload.get("iss")
    if not isinstance(iss, str) or not iss:
        raise TesseraError(ErrorCode.MALFORMED, "iss missing")
    vct = payload.get("vct")
    if not isinstance(vct, str) or not vct:
        raise TesseraError(ErrorCode.MALFORMED, "vct missing")
    key = issuer_key if isinstance(issuer_key, PublicKey) else issuer_key(iss, jws.header)
    if key.alg != alg:
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, f"{alg} does not fit the issuer key")
    key.verify(jws.signature, jws.signing_input)

    if payload.get("_sd_alg", "sha-256") != "sha-256":
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, "only _sd_alg sha-256 is supported")
    unpacker = _Unpacker(parsed.disclosures)
    processed = unpacker.unpack(payload, top=True)
    # used only ever holds keys of by_digest, so equal sizes mean equal sets.
    if len(unpacker.used) != len(unpacker.by_digest):
        # §7.1 step 5: every disclosure must be referenced by a digest.
        raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, "disclosure not referenced by the JWT")
    if unpacker.top_level & NEVER_DISCLOSABLE:
        raise TesseraError(ErrorCode.DISCLOSURE_MISMATCH, "a structural claim was disclosable")
    if check_validity:
        check_times(payload, now, clock_skew)

    holder_key = _holder_key(payload)
    kb_payload = _verify_key_binding(
        parsed, holder_key, now=now, audience=audience, nonce=nonce,
        required=require_key_binding, transaction_data=transaction_data,
        allowed_algs=allowed_algs, skew=clock_skew, max_age=max_kb_age,
        presentation=presentation,
    )
    claims = {k: v for k, v in processed.items() if k not in _STRUCTURAL}
    return VerifiedSdJwt(
        issuer=iss, vct=vct, claims=claims, payload=processed, header=jws.header,
        holder_key=holder_key, key_binding=kb_payload,
        disclosed=frozenset(unpacker.top_level),
    )


def _holder_key(payload: Mapping[str, Any]) -> PublicKey | None:
    cnf = payload.get("cnf")
    if cnf is None:
        return None
    if not isinstance(cnf, dict) or not isinstance(cnf.get("jwk"), dict):
        raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, "only cnf.jwk holder binding is supported")
    return PublicKey.from_jwk(cnf["jwk"])


def _verify_key_binding(
    parsed: SdJwt,
    holder_key: PublicKey | None,
    *,
    now: datetime,
    audience: str | None,
    nonce: str | None,
    required: bool,
    transaction_data: Collection[str] | None,
    allowed_algs: Collection[str],
    skew: timedelta,
    max_age: timedelta,
    presentation: str | None = None,
) -> dict[str, Any] | None:
    if parsed.kb_jwt is None:
        if required or transaction_data:
            raise TesseraError(ErrorCode.KEY_BINDING_MISSING, "presentation has no KB-JWT")
        return None
    if holder_key is None:
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "KB-JWT but the credential has no cnf")
    try:
        kb: DecodedJWS = decode_unverified(parsed.kb_jwt)
    except TesseraError as exc:
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID, exc.detail) from exc
    if kb.header.get("typ") != KB_TYP:
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "KB-JWT typ must be kb+jwt")
    try:
        alg = check_header(kb.header, allowed_algs)
        if alg != holder_key.alg:
            raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "KB-JWT alg does not fit cnf key")
        holder_key.verify(kb.signature, kb.signing_input)
    except TesseraError as exc:
        if exc.code is ErrorCode.UNSUPPORTED_ALGORITHM:
            raise
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "KB-JWT not signed by the cnf key") \
            from exc
    claims = kb.payload
    # The presentation minus its KB-JWT is exactly what sd_hash covers
    # (RFC 9901 §4.3.1); slicing it off is cheaper than SdJwt.without_kb's join.
    signed_part = presentation[:len(presentation) - len(parsed.kb_jwt)] \
        if presentation is not None else parsed.without_kb
    if claims.get("sd_hash") != _digest(signed_part):
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "sd_hash does not match")
    if audience is None or nonce is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "verifying key binding needs aud and nonce")
    if claims.get("nonce") != nonce:
        raise TesseraError(ErrorCode.NONCE_MISMATCH, "KB-JWT nonce does not match")
    aud = claims.get("aud")
    if aud != audience:
        raise TesseraError(ErrorCode.AUDIENCE_MISMATCH, "KB-JWT audience does not match")
    iat = _ts(claims, "iat")
    if iat is None:
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "KB-JWT has no iat")
    t = now.timestamp()
    if iat > t + skew.total_seconds() or iat < t - (max_age + skew).total_seconds():
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "KB-JWT iat is not fresh")
    expected = _transaction_data_hashes(transaction_data) if transaction_data else None
    got = claims.get("transaction_data_hashes")
    if expected is not None or got is not None:
        alg_name = claims.get("transaction_data_hashes_alg", "sha-256")
        if expected is None or got != expected or alg_name != "sha-256":
            raise TesseraError(
                ErrorCode.TRANSACTION_DATA_MISMATCH, "KB-JWT does not cover this transaction"
            )
    return claims


def issue_credential(
    ctype: CredentialType,
    claims: Mapping[str, Any],
    *,
    signer: Signer,
    issuer: str,
    holder_key: PublicKey,
    issued_at: datetime,
    expires_at: datetime,
    status: Mapping[str, Any] | None = None,
    not_before: datetime | None = None,
) -> str:
    """Issue a loyalty credential: schema-checked claims, the type's vct, key-bound."""
    ctype.validate(claims)
    return issue(
        claims,
        signer=signer,
        issuer=issuer,
        vct=ctype.vct,
        holder_key=holder_key,
        issued_at=issued_at,
        expires_at=expires_at,
        not_before=not_before,
        status=status,
        always_visible=ctype.always_visible,
    )
