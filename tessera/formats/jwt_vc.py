"""VC-JWT: W3C VC Data Model 1.1 credentials and presentations as JWTs (VCDM 1.1 §6.3.1).

The format didkit (and much of the VCDM 1.1 ecosystem) speaks besides
Linked Data proofs. A JWT-VC is a compact JWS whose payload carries the
credential, without proof, in ``vc``; the registered claims are used "in
addition to" their data-model counterparts (§6.3.1.1), so the ``vc`` object
stays complete and decoders that only read it still see everything:

==========  ==================================  ==================================
claim       credential (``vc``)                 presentation (``vp``)
==========  ==================================  ==================================
``iss``     ``issuer`` (or ``issuer.id``)       ``holder``
``sub``     ``credentialSubject.id``            -
``nbf``     ``issuanceDate`` (NumericDate)      -
``exp``     ``expirationDate`` (NumericDate)    (freshness of the VP itself)
``jti``     ``id``                              ``id``
``aud``     -                                   the verifier (OpenID4VP/VC API domain)
``nonce``   -                                   the verifier's challenge
==========  ==================================  ==================================

The JOSE header carries ``typ: JWT`` (§6.3.1: if present it MUST be ``JWT``;
didkit omits it, so absence is accepted) and ``kid``, the DID URL of the
signing verification method, which must belong to ``iss``.

Verification decodes per §6.3.1.2 (the claims set the data-model
properties) and refuses a token whose claims and ``vc`` disagree: two
answers to "who issued this" or "until when" in one signed object are a bug
or an attack, never something to pick from. Unlike didkit, Tessera checks
``exp``/``nbf`` on credentials, verifies every credential inside a
presentation, and requires each one to be about the presenting holder.

VCDM 1.1 only: a VCDM 2.0 credential goes through VC-JOSE-COSE (``vc+jwt``),
a different format with no ``vc`` claim, which is not implemented here.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from tessera import jsonld
from tessera.credentials import CredentialType, by_name
from tessera.did import method_key_lookup
from tessera.encoding import parse_datetime
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import DecodedJWS, check_header, decode_unverified, sign_compact
from tessera.keys import SUPPORTED_ALGS, PublicKey
from tessera.typing import DIDResolver, Signer

__all__ = [
    "DEFAULT_ALGS",
    "KeyLookup",
    "holder_key_lookup",
    "issue_credential",
    "present",
    "verify_credential",
    "verify_presentation",
]

KeyLookup = Callable[[str, dict[str, Any]], PublicKey]
"""``(iss, jose_header) -> PublicKey``, e.g. :func:`tessera.did.issuer_key_lookup`."""

DEFAULT_ALGS: Final = SUPPORTED_ALGS
TYP: Final = "JWT"
MAX_CREDENTIALS: Final = 32
DEFAULT_SKEW: Final = timedelta(seconds=60)
DEFAULT_VP_TTL: Final = timedelta(minutes=5)
_LOYALTY_TYPES: Final = frozenset({"LoyaltyMembershipCredential", "LoyaltyPointsCredential"})
# Beyond year 9999 an xsd:dateTime cannot be written back; such a claim is junk.
_MAX_NUMERIC_DATE: Final = 253402300799


def _err(code: ErrorCode, detail: str) -> TesseraError:
    return TesseraError(code, detail)


# -- dates -------------------------------------------------------------------------


def _xsd(when: datetime) -> str:
    when = when.astimezone(UTC)
    if when.microsecond == 0:
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _numeric_date(value: Any, name: str) -> float | None:
    """A NumericDate (RFC 7519 §2): seconds since the epoch, non-integer allowed (didkit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _err(ErrorCode.MALFORMED, f"{name} must be a NumericDate")
    if not math.isfinite(value) or not 0 <= value <= _MAX_NUMERIC_DATE:
        raise _err(ErrorCode.MALFORMED, f"{name} is out of range")
    return float(value)


def _to_numeric(value: Any, what: str) -> int:
    # Rounded down: for exp that ends validity a fraction early, never late.
    return math.floor(parse_datetime(value, what).timestamp())


def _aware(now: datetime) -> datetime:
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise _err(ErrorCode.INVALID_REQUEST, "now must be a timezone-aware datetime")
    return now


# -- shape -------------------------------------------------------------------------


def _check_context(doc: dict[str, Any], what: str) -> None:
    ctx = doc.get("@context")
    first = ctx[0] if isinstance(ctx, list) and ctx else ctx
    if first == jsonld.CREDENTIALS_V2:
        raise _err(ErrorCode.UNSUPPORTED_FORMAT,
                   f"VCDM 2.0 {what}: VC-JWT is the VCDM 1.1 JWT encoding")
    if first != jsonld.CREDENTIALS_V1:
        # VCDM 1.1 §4.1: the first context MUST be the credentials v1 one.
        raise _err(ErrorCode.MALFORMED, f"{what} @context must start with {jsonld.CREDENTIALS_V1}")


def _types(doc: dict[str, Any]) -> list[Any]:
    types = doc.get("type")
    return types if isinstance(types, list) else [types]


def _issuer_id(vc: dict[str, Any]) -> str | None:
    issuer = vc.get("issuer")
    issuer_id = issuer.get("id") if isinstance(issuer, dict) else issuer
    return issuer_id if isinstance(issuer_id, str) else None


def _single_subject(vc: dict[str, Any]) -> dict[str, Any] | None:
    subject = vc.get("credentialSubject")
    if isinstance(subject, list) and len(subject) == 1:
        subject = subject[0]
    return subject if isinstance(subject, dict) else None


def _loyalty_type(vc: dict[str, Any]) -> CredentialType | None:
    names = [t for t in _types(vc) if t in _LOYALTY_TYPES]
    if len(names) > 1:
        raise _err(ErrorCode.SCHEMA_INVALID, "a credential has one loyalty type")
    return by_name(str(names[0])) if names else None


def _validate_loyalty(vc: dict[str, Any]) -> None:
    ctype = _loyalty_type(vc)
    if ctype is None:
        return
    subject = vc.get("credentialSubject")
    if not isinstance(subject, dict):
        raise _err(ErrorCode.SCHEMA_INVALID, "credentialSubject must be one object")
    ctype.validate({k: v for k, v in subject.items() if k != "id"})


def _check_credential_shape(vc: dict[str, Any]) -> None:
    _check_context(vc, "credential")
    if "VerifiableCredential" not in _types(vc):
        raise _err(ErrorCode.MALFORMED, "type must include VerifiableCredential")
    if "proof" in vc:
        # The JWS is the proof; an embedded one would be a second, unchecked claim.
        raise _err(ErrorCode.MALFORMED, "a JWT credential carries no embedded proof")
    subject = vc.get("credentialSubject")
    subjects = subject if isinstance(subject, list) else [subject]
    if not subjects or not all(isinstance(s, dict) for s in subjects):
        raise _err(ErrorCode.MALFORMED, "credentialSubject must be an object or a list of them")


# -- issue -------------------------------------------------------------------------


def _signer_did(signer: Signer) -> str:
    kid = signer.key_id
    if not kid or "#" not in kid or not kid.startswith("did:"):
        raise _err(ErrorCode.MALFORMED, "signer key_id must be a DID URL (did:...#fragment)")
    return kid.split("#", 1)[0]


def issue_credential(vc: dict[str, Any], *, signer: Signer, now: datetime) -> str:
    """Sign a VCDM 1.1 credential (without proof) as a JWT-VC.

    ``issuanceDate`` defaults to ``now``. The signer's ``key_id`` is the
    ``kid`` and must be a verification method of the issuer's DID. Loyalty
    types are validated against their JSON Schema first.
    """
    now = _aware(now)
    if not isinstance(vc, dict):
        raise _err(ErrorCode.MALFORMED, "credential is not an object")
    vc = copy.deepcopy(vc)
    _check_credential_shape(vc)
    issuer = _issuer_id(vc)
    if issuer is None:
        raise _err(ErrorCode.MALFORMED, "credential has no issuer id")
    if _signer_did(signer) != issuer:
        raise _err(ErrorCode.KEY_NOT_FOUND, "the signing key is not a method of the issuer DID")
    vc.setdefault("issuanceDate", _xsd(now.replace(microsecond=0)))
    _validate_loyalty(vc)
    payload: dict[str, Any] = {"iss": issuer, "nbf": _to_numeric(vc["issuanceDate"],
                                                                 "issuanceDate")}
    if "expirationDate" in vc:
        payload["exp"] = _to_numeric(vc["expirationDate"], "expirationDate")
    if isinstance(vc.get("id"), str):
        payload["jti"] = vc["id"]
    subject = _single_subject(vc)
    if subject is not None and isinstance(subject.get("id"), str):
        # §6.3.1.1: no sub for a bearer credential or several subjects.
        payload["sub"] = subject["id"]
    payload["iat"] = math.floor(now.timestamp())
    payload["vc"] = vc
    return sign_compact({"typ": TYP, "kid": signer.key_id}, payload, signer)


# -- verify ------------------------------------------------------------------------


def _verified_jws(token: str, key_lookup: KeyLookup, allowed_algs: Collection[str],
                  what: str) -> DecodedJWS:
    jws = decode_unverified(token)
    typ = jws.header.get("typ")
    if typ is not None and typ != TYP:
        # Keeps an SD-JWT, a KB-JWT or a vc+jwt from being read as a VCDM 1.1 JWT.
        raise _err(ErrorCode.UNSUPPORTED_FORMAT, f"{what} typ {typ!r} is not JWT")
    alg = check_header(jws.header, allowed_algs)
    iss = jws.payload.get("iss")
    if not isinstance(iss, str) or not iss:
        raise _err(ErrorCode.MALFORMED, f"{what} has no iss")
    key = key_lookup(iss, jws.header)
    if key.alg != alg:
        # The DID document's key decides the algorithm, not the token (RFC 8725 §3.1).
        raise _err(ErrorCode.UNSUPPORTED_ALGORITHM, f"{alg} does not fit the {key.crv} key")
    key.verify(jws.signature, jws.signing_input)
    return jws


def _merge_date(vc: dict[str, Any], prop: str, claim: float | None) -> None:
    if claim is None:
        return
    if prop in vc:
        stated = parse_datetime(vc[prop], prop).timestamp()
        # The encoder may round a fractional dateTime to whole seconds.
        if abs(stated - claim) >= 1:
            raise _err(ErrorCode.MALFORMED, f"{prop} disagrees with the JWT claim")
        return
    vc[prop] = _xsd(datetime.fromtimestamp(claim, UTC))


def _decode_credential(payload: dict[str, Any]) -> dict[str, Any]:
    """VCDM 1.1 §6.3.1.2: rebuild the credential, refusing claims that contradict ``vc``."""
    vc = payload.get("vc")
    if not isinstance(vc, dict):
        raise _err(ErrorCode.MALFORMED, "JWT has no vc claim")
    vc = copy.deepcopy(vc)
    _check_credential_shape(vc)
    iss = payload["iss"]
    issuer = vc.get("issuer")
    if issuer is None:
        vc["issuer"] = iss
    elif _issuer_id(vc) != iss:
        raise _err(ErrorCode.MALFORMED, "iss and vc.issuer disagree")
    sub = payload.get("sub")
    if sub is not None:
        subject = _single_subject(vc)
        if not isinstance(sub, str) or subject is None:
            raise _err(ErrorCode.MALFORMED, "sub needs exactly one credentialSubject")
        if subject.setdefault("id", sub) != sub:
            raise _err(ErrorCode.MALFORMED, "sub and credentialSubject.id disagree")
    jti = payload.get("jti")
    if jti is not None and (not isinstance(jti, str) or vc.setdefault("id", jti) != jti):
        raise _err(ErrorCode.MALFORMED, "jti and vc.id disagree")
    _merge_date(vc, "issuanceDate", _numeric_date(payload.get("nbf"), "nbf"))
    _merge_date(vc, "expirationDate", _numeric_date(payload.get("exp"), "exp"))
    if "issuanceDate" not in vc:
        raise _err(ErrorCode.MALFORMED, "credential has no issuanceDate (VCDM 1.1 §4.6)")
    return vc


def _check_validity(vc: dict[str, Any], now: datetime, skew: timedelta) -> None:
    start = parse_datetime(vc["issuanceDate"], "issuanceDate")
    if now + skew < start:
        raise _err(ErrorCode.NOT_YET_VALID, "credential is not valid yet")
    if "expirationDate" in vc and now - skew >= parse_datetime(vc["expirationDate"],
                                                                "expirationDate"):
        raise _err(ErrorCode.EXPIRED, "credential has expired")


def verify_credential(
    token: str,
    *,
    key_lookup: KeyLookup,
    now: datetime,
    allowed_algs: Collection[str] = DEFAULT_ALGS,
    clock_skew: timedelta = DEFAULT_SKEW,
) -> dict[str, Any]:
    """Verify a JWT-VC; return the credential decoded per VCDM 1.1 §6.3.1.2.

    ``key_lookup`` is ``tessera.did.issuer_key_lookup(resolver)``: ``kid``
    must be an assertionMethod of ``iss``. Validity comes from the decoded
    ``issuanceDate``/``expirationDate`` (so from ``nbf``/``exp`` when present).
    """
    now = _aware(now)
    jws = _verified_jws(token, key_lookup, allowed_algs, "credential")
    vc = _decode_credential(jws.payload)
    _check_validity(vc, now, clock_skew)
    _validate_loyalty(vc)
    return vc


# -- presentations -----------------------------------------------------------------


def holder_key_lookup(resolver: DIDResolver) -> KeyLookup:
    """``(iss, header) -> key`` for a presentation: ``kid`` an authentication method of ``iss``."""
    return method_key_lookup(resolver, relationship="authentication",
                             not_a_did=ErrorCode.KEY_BINDING_INVALID)


def _subject_of_token(token: str) -> str | None:
    payload = decode_unverified(token).payload
    vc = payload.get("vc")
    if not isinstance(vc, dict):
        raise _err(ErrorCode.MALFORMED, "not a JWT-VC (no vc claim)")
    sub = payload.get("sub")
    if isinstance(sub, str):
        return sub
    subject = _single_subject(vc)
    sid = subject.get("id") if subject is not None else None
    return sid if isinstance(sid, str) else None


def present(
    credentials: Sequence[str],
    *,
    signer: Signer,
    holder: str,
    audience: str,
    nonce: str,
    now: datetime,
    ttl: timedelta = DEFAULT_VP_TTL,
) -> str:
    """A JWT-VP (``iss`` holder, ``aud``, ``nonce``, ``vp``) over JWT-VCs about ``holder``."""
    now = _aware(now)
    if isinstance(credentials, str) or not credentials:
        raise _err(ErrorCode.MALFORMED, "a presentation needs a list of JWT credentials")
    if len(credentials) > MAX_CREDENTIALS:
        raise _err(ErrorCode.TOO_LARGE, "too many credentials in one presentation")
    if not audience or not nonce:
        raise _err(ErrorCode.INVALID_REQUEST, "audience and nonce are required")
    if _signer_did(signer) != holder:
        raise _err(ErrorCode.KEY_BINDING_INVALID, "the signing key is not the holder's")
    for token in credentials:
        if _subject_of_token(token) != holder:
            raise _err(ErrorCode.KEY_BINDING_INVALID, "a credential is not about the holder")
    issued = math.floor(now.timestamp())
    payload = {
        "iss": holder,
        "aud": audience,
        "nonce": nonce,
        "iat": issued,
        "exp": issued + int(ttl.total_seconds()),
        "vp": {
            "@context": [jsonld.CREDENTIALS_V1],
            "type": ["VerifiablePresentation"],
            "holder": holder,
            "verifiableCredential": list(credentials),
        },
    }
    return sign_compact({"typ": TYP, "kid": signer.key_id}, payload, signer)


def _check_vp_times(payload: dict[str, Any], now: datetime, skew: timedelta) -> None:
    t = now.timestamp()
    s = skew.total_seconds()
    exp = _numeric_date(payload.get("exp"), "exp")
    if exp is not None and t - s >= exp:
        raise _err(ErrorCode.EXPIRED, "presentation has expired")
    for name in ("nbf", "iat"):
        value = _numeric_date(payload.get(name), name)
        if value is not None and value > t + s:
            raise _err(ErrorCode.NOT_YET_VALID, f"presentation {name} is in the future")


def verify_presentation(
    token: str,
    *,
    key_lookup: KeyLookup,
    audience: str,
    nonce: str,
    now: datetime,
    holder_lookup: KeyLookup | None = None,
    allowed_algs: Collection[str] = DEFAULT_ALGS,
    clock_skew: timedelta = DEFAULT_SKEW,
) -> list[dict[str, Any]]:
    """Verify a JWT-VP and every JWT-VC in it; return the decoded credentials.

    ``key_lookup`` finds issuer keys (``issuer_key_lookup(resolver)``);
    ``holder_lookup`` finds the holder's (``holder_key_lookup(resolver)``,
    which requires an authentication method). Without ``holder_lookup`` the
    issuer lookup is used for the holder too, which is the same key set for
    did:key and did:jwk members but not for a did:web holder.
    A wrong ``nonce`` is ``nonce_mismatch``, a wrong ``aud``
    ``audience_mismatch``; single use of the nonce is the caller's nonce
    store. Each credential's subject must be the holder (``key_binding_invalid``).
    """
    now = _aware(now)
    jws = _verified_jws(token, holder_lookup or key_lookup, allowed_algs, "presentation")
    payload = jws.payload
    holder = payload["iss"]
    if payload.get("nonce") != nonce:
        raise _err(ErrorCode.NONCE_MISMATCH, "presentation nonce does not match")
    aud = payload.get("aud")
    # RFC 7519 §4.1.3: the verifier must find itself in aud, a string or an array.
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise _err(ErrorCode.AUDIENCE_MISMATCH, "presentation audience does not match")
    _check_vp_times(payload, now, clock_skew)
    vp = payload.get("vp")
    if not isinstance(vp, dict):
        raise _err(ErrorCode.MALFORMED, "JWT has no vp claim")
    _check_context(vp, "presentation")
    if "VerifiablePresentation" not in _types(vp):
        raise _err(ErrorCode.MALFORMED, "type must include VerifiablePresentation")
    if vp.get("holder", holder) != holder:
        raise _err(ErrorCode.MALFORMED, "iss and vp.holder disagree")
    if "proof" in vp:
        raise _err(ErrorCode.MALFORMED, "a JWT presentation carries no embedded proof")
    creds = vp.get("verifiableCredential")
    creds = creds if isinstance(creds, list) else [creds]
    if not creds or creds == [None]:
        raise _err(ErrorCode.MALFORMED, "presentation holds no credential")
    if len(creds) > MAX_CREDENTIALS:
        raise _err(ErrorCode.TOO_LARGE, "too many credentials in one presentation")
    if not all(isinstance(c, str) for c in creds):
        raise _err(ErrorCode.UNSUPPORTED_FORMAT, "only JWT credentials in a JWT presentation")
    verified = []
    for cred in creds:
        vc = verify_credential(cred, key_lookup=key_lookup, now=now,
                               allowed_algs=allowed_algs, clock_skew=clock_skew)
        subject = _single_subject(vc)
        if subject is None or subject.get("id") != holder:
            raise _err(ErrorCode.KEY_BINDING_INVALID, "credential subject is not the holder")
        verified.append(vc)
    return verified
