"""OpenID4VCI 1.0, issuer side: metadata, pre-authorized offers, token, key proofs.

Section numbers are those of OpenID for Verifiable Credential Issuance 1.0.

* Each brand is its own Credential Issuer, identified by
  ``{public_url}/brands/{slug}`` and acting as its own Authorization Server
  (no ``authorization_servers`` in the metadata, §12.2.4); metadata is served
  at the well-known URL with the suffix inserted between host and path
  (§12.2.2, RFC 8414 §3.1) and, for older wallets, appended to the issuer.
* Offers (§4.1) carry only the pre-authorized code grant, optionally with a
  ``tx_code`` (§4.1.1) sent to the member out of band. The code and the
  by-reference token are derived from a secret that is never stored; the
  code is single use, expires with the offer, and five wrong tx_codes burn
  the offer (§13.6 asks issuers to limit guessing).
* The token endpoint (§6) answers RFC 6749 §5.2 errors; the access token is
  opaque, short lived, bound to the offer and stored as a hash. With it comes
  a refresh token (RFC 6749 §6, §13.2 "Refreshing Issued Credentials"), so
  the wallet tops up its pool of one-time credentials without a new offer:
  rotated on every use, a used one shown again revokes the whole family
  (RFC 9700 §4.14.2), 30 days idle and 90 days in all at most.
* Key proofs (§8.2.1.1, Appendix F.1): ``typ`` ``openid4vci-proof+jwt``,
  ``aud`` the Credential Issuer Identifier, a ``nonce`` from the nonce
  endpoint (§7) consumed once, a fresh ``iat``, no ``iss`` (anonymous
  pre-authorized access), and the key in ``jwk`` or ``kid`` (a DID URL). The
  key must be one of the enrolled member's DID keys: a code that leaked
  cannot be redeemed into a credential bound to someone else's key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from pydantic import BaseModel, Field
from sqlalchemy import Insert, bindparam, update
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key
from sqlmodel import Session, col, select

from issuer._admin import get_member
from issuer._db import core, core_insert
from issuer._issuance import CONFIGURATIONS, LDP_VC, SD_JWT, issuer_url
from issuer._ledger import locked_member
from issuer._log_models import MemberErasure
from issuer._models import Brand, CredentialOffer, Member, RefreshToken, new_id
from issuer._settings import Settings
from tessera import jsonld
from tessera.did import Resolver
from tessera.encoding import b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import decode_unverified, verify_signature
from tessera.keys import PublicKey
from tessera.typing import NonceStore
from tessera.web import StrictBody

__all__ = [
    "ATTESTATION_TYP",
    "GRANT_PRE_AUTHORIZED",
    "GRANT_REFRESH_TOKEN",
    "OFFER_SCHEME",
    "PROOF_ALGS",
    "PROOF_TYP",
    "PROOF_TYPES",
    "OfferCreated",
    "OfferRequest",
    "TxCodeRequest",
    "authorization_server_metadata",
    "authorize",
    "check_nonce",
    "check_proofs",
    "create_offer",
    "credential_issuer_metadata",
    "issue_nonce",
    "offer_by_reference",
    "redeem_code",
    "refresh_access",
    "token_request",
    "verify_key_attestation",
    "verify_proofs",
]

GRANT_PRE_AUTHORIZED: Final = "urn:ietf:params:oauth:grant-type:pre-authorized_code"
GRANT_REFRESH_TOKEN: Final = "refresh_token"  # noqa: S105 - a grant type name
OFFER_SCHEME: Final = "openid-credential-offer://"
PROOF_TYP: Final = "openid4vci-proof+jwt"
ATTESTATION_TYP: Final = "key-attestation+jwt"
PROOF_TYPES: Final = ("jwt", "attestation")
# No request binds more keys than the largest batch size allows; this bounds
# the work an attestation can ask for before the batch size is known.
MAX_ATTESTED_KEYS: Final = 100
PROOF_ALGS: Final = ("ES256", "EdDSA")
ACCESS_TOKEN_TTL: Final = timedelta(minutes=5)
# A refresh token lapses after 30 days unused; its family (every rotation of
# the one from an offer) after 90 days whatever the use: then a new offer.
REFRESH_TOKEN_TTL: Final = timedelta(days=30)
REFRESH_FAMILY_TTL: Final = timedelta(days=90)
C_NONCE_TTL_SECONDS: Final = 300
PROOF_MAX_AGE: Final = timedelta(minutes=5)
PROOF_FUTURE_SKEW: Final = timedelta(seconds=60)
MAX_TX_CODE_FAILURES: Final = 5


# The exchange's offer lookups, built once (a statement and its cache key cost about a
# third of each query: bench/README.md, "Issuance profile (session 4)").
_BY_CODE: Final = (select(CredentialOffer)
                   .where(col(CredentialOffer.code_sha256) == bindparam("sha256"))
                   .with_for_update())
# The offer and its member in one round trip (the credential endpoint's first read).
_BY_ACCESS_TOKEN: Final = (select(CredentialOffer, Member)
                           .join(Member, col(Member.id) == col(CredentialOffer.member_id))
                           .where(col(CredentialOffer.access_token_sha256) == bindparam("sha256")))
# The token endpoint's writes as Core statements (no ORM synchronisation, no flush).
_OFFERS: Final = CredentialOffer.__table__  # type: ignore[attr-defined]
_REDEEM: Final = (update(_OFFERS)
                  .where(_OFFERS.c.id == bindparam("offer_id"), _OFFERS.c.redeemed_at.is_(None))
                  .values({name: bindparam(name) for name in (
                      "redeemed_at", "access_token_sha256", "access_token_expires_at",
                      "refresh_family_expires_at")}))
_INSERT_REFRESH_TOKEN: Final = core_insert(RefreshToken)
# The credential write's offer: locked and read, then its issued configurations
# written, as Core statements (no ORM object loaded and flushed inside the write).
_LOCK_OFFER: Final = (select(_OFFERS.c.configuration_ids, _OFFERS.c.issued_configurations)
                      .where(_OFFERS.c.id == bindparam("offer_id")).with_for_update())
_RECORD_ISSUED: Final = (update(_OFFERS).where(_OFFERS.c.id == bindparam("offer_id"))
                         .values(issued_configurations=bindparam("issued")))


def _derived_key(master_key: bytes, label: str) -> bytes:
    return hmac.new(master_key, f"tessera-oid4vci/{label}".encode(), hashlib.sha256).digest()


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def _code_for(settings: Settings, reference: str) -> str:
    return b64url_encode(hmac.new(_derived_key(settings.master_key, "code"),
                                  reference.encode("ascii"), hashlib.sha256).digest())


def _tx_mac(settings: Settings, offer_id: str, tx_code: str) -> str:
    return hmac.new(_derived_key(settings.master_key, "tx_code"),
                    f"{offer_id}:{tx_code}".encode(), hashlib.sha256).hexdigest()


# -- metadata ------------------------------------------------------------------------------


def _configuration(config_id: str, signing_algs: list[str], batch_size: int) -> dict[str, Any]:
    config = CONFIGURATIONS[config_id]
    display = [{"name": config.ctype.type_metadata.get("name", config.ctype.name),
                "locale": "en"}]
    body: dict[str, Any] = {"format": config.format, "scope": config_id}
    if config.format == SD_JWT:
        body["vct"] = config.ctype.vct
        body["cryptographic_binding_methods_supported"] = ["jwk", "did:key"]
        body["credential_signing_alg_values_supported"] = signing_algs
    else:
        # Appendix A.1.2: W3C VCs secured with Data Integrity; the signing
        # values are cryptosuite identifiers.
        body["credential_definition"] = {
            "@context": [jsonld.CREDENTIALS_V2, jsonld.LOYALTY_V1],
            "type": ["VerifiableCredential", config.ctype.name]}
        body["cryptographic_binding_methods_supported"] = ["did:key"]
        body["credential_signing_alg_values_supported"] = [
            {"EdDSA": "eddsa-rdfc-2022", "ES256": "ecdsa-rdfc-2019"}.get(a, a)
            for a in signing_algs]
    if config.format == SD_JWT and batch_size >= 2:
        # A batch binds fresh keys, and a key other than the member's enrolled
        # DID key needs the member's key attestation (Appendix D):
        # "key_attestations_required" with no key_storage / user_authentication
        # constraint (§12.2.4). A proof by the enrolled DID key itself still
        # gets one credential without one. Configurations without batches do
        # not ask for attestations (a wallet may still send one).
        body["proof_types_supported"] = {
            proof_type: {"proof_signing_alg_values_supported": list(PROOF_ALGS),
                         "key_attestations_required": {}}
            for proof_type in PROOF_TYPES}
    else:
        body["proof_types_supported"] = {
            "jwt": {"proof_signing_alg_values_supported": list(PROOF_ALGS)}}
    # Not in §12.2.4 (which has one batch_size for the issuer): the limit of
    # this configuration, under the same name; wallets ignore unknown members.
    body["batch_credential_issuance"] = {"batch_size": batch_size}
    properties = config.ctype.schema.get("properties", {})
    body["credential_metadata"] = {
        "display": display,
        "claims": [{"path": [name]} for name in properties],
    }
    return body


def credential_issuer_metadata(settings: Settings, brand: Brand,
                               signing_algs: list[str]) -> dict[str, Any]:
    """Credential Issuer Metadata (§12.2.4)."""
    issuer = issuer_url(settings, brand)
    body: dict[str, Any] = {
        "credential_issuer": issuer,
        "credential_endpoint": f"{issuer}/credential",
        "nonce_endpoint": f"{issuer}/nonce",
        "display": [{"name": brand.name, "locale": "en"}],
        "credential_configurations_supported": {
            cid: _configuration(cid, signing_algs, settings.batch_size_for(cid))
            for cid in CONFIGURATIONS},
    }
    largest = max(settings.batch_size_for(cid) for cid in CONFIGURATIONS)
    if largest >= 2:
        # §12.2.4: the most proofs one request may carry; "MUST be 2 or greater".
        body["batch_credential_issuance"] = {"batch_size": largest}
    return body


def authorization_server_metadata(settings: Settings, brand: Brand) -> dict[str, Any]:
    """RFC 8414 metadata of the brand's (token-only) authorization server."""
    issuer = issuer_url(settings, brand)
    return {
        "issuer": issuer,
        "token_endpoint": f"{issuer}/token",
        "grant_types_supported": [GRANT_PRE_AUTHORIZED, GRANT_REFRESH_TOKEN],
        # §12.3: the token endpoint needs no client authentication.
        "pre-authorized_grant_anonymous_access_supported": True,
        # No authorization endpoint: offers are the only way in.
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported": ["none"],
    }


# -- offers ------------------------------------------------------------------------------------


class TxCodeRequest(StrictBody):
    length: int = Field(default=6, ge=4, le=10)
    description: str | None = Field(default=None, max_length=300)


class OfferRequest(StrictBody):
    credential_configuration_ids: list[str] = Field(min_length=1, max_length=len(CONFIGURATIONS))
    tx_code: TxCodeRequest | None = None
    ttl_seconds: int = Field(default=600, ge=30, le=7 * 24 * 3600)


class OfferCreated(BaseModel):
    id: str
    member_id: str
    credential_offer: dict[str, Any]
    offer_uri: str = Field(description="by value: openid-credential-offer://?credential_offer=")
    offer_uri_by_reference: str = Field(
        description="openid-credential-offer://?credential_offer_uri=")
    credential_offer_uri: str
    qr_png_uri: str = Field(description="a QR code of offer_uri_by_reference")
    tx_code: str | None = Field(description="give it to the member out of band; shown once")
    expires_at: datetime


_INSERT_OFFER: Final = core_insert(CredentialOffer)


def create_offer(session: Session, *, settings: Settings, brand: Brand, member_id: str,
                 request: OfferRequest, now: datetime,
                 writes: list[tuple[Insert, Mapping[str, Any]]] | None = None) -> OfferCreated:
    """``writes``: when given, the offer's INSERT is appended to it, not run, for the
    caller to send in this transaction (a capture's fresh offer goes with the capture's
    last statement: bench/README.md "Redemption, sixth pass (session 8)")."""
    # A member this transaction's ledger write locked (a capture's fresh offer) is known
    # to exist and to be the brand's: no read.
    member = (locked_member(session, brand_id=brand.id, member_id=member_id)
              or get_member(session, brand_id=brand.id, member_id=member_id))
    ids = list(dict.fromkeys(request.credential_configuration_ids))
    unknown = [i for i in ids if i not in CONFIGURATIONS]
    if unknown:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"unknown credential configurations: {unknown}")
    reference = b64url_encode(secrets.token_bytes(32))
    code = _code_for(settings, reference)
    offer_id, expires_at = new_id(), now + timedelta(seconds=request.ttl_seconds)
    tx_code: str | None = None
    grant: dict[str, Any] = {"pre-authorized_code": code}
    tx_columns: dict[str, Any] = {"tx_code_mac": None, "tx_code_input_mode": None,
                                  "tx_code_length": None, "tx_code_description": None}
    if request.tx_code is not None:
        tx_code = "".join(secrets.choice("0123456789") for _ in range(request.tx_code.length))
        tx_columns = {"tx_code_mac": _tx_mac(settings, offer_id, tx_code),
                      "tx_code_input_mode": "numeric", "tx_code_length": request.tx_code.length,
                      "tx_code_description": request.tx_code.description}
        grant["tx_code"] = {"input_mode": "numeric", "length": request.tx_code.length}
        if request.tx_code.description:
            grant["tx_code"]["description"] = request.tx_code.description
    # A new row nothing in this transaction reads back: a Core INSERT of every column
    # (no SQLModel object to build and validate, no flush; redemption's capture makes
    # one per operation: bench/README.md "Redemption, third pass (session 5)").
    row = {
        "id": offer_id, "brand_id": brand.id, "member_id": member.id,
        "configuration_ids": ids, "reference_sha256": _sha256(reference),
        "code_sha256": _sha256(code), **tx_columns, "tx_code_failures": 0,
        "created_at": now, "expires_at": expires_at, "redeemed_at": None,
        "access_token_sha256": None, "access_token_expires_at": None,
        "issued_configurations": [], "refresh_family_expires_at": None,
        "refresh_revoked_at": None}
    if writes is not None:
        writes.append((_INSERT_OFFER, row))
    else:
        core(session, _INSERT_OFFER, row)
    issuer = issuer_url(settings, brand)
    body = {"credential_issuer": issuer, "credential_configuration_ids": ids,
            "grants": {GRANT_PRE_AUTHORIZED: grant}}
    by_ref = f"{issuer}/offers/{reference}"
    return OfferCreated(
        id=offer_id, member_id=member.id, credential_offer=body,
        offer_uri=OFFER_SCHEME + "?" + urllib.parse.urlencode(
            {"credential_offer": json.dumps(body, separators=(",", ":"))}),
        offer_uri_by_reference=OFFER_SCHEME + "?" + urllib.parse.urlencode(
            {"credential_offer_uri": by_ref}),
        credential_offer_uri=by_ref, qr_png_uri=f"{by_ref}/qr.png", tx_code=tx_code,
        expires_at=expires_at)


def _live_offer(session: Session, brand: Brand, reference: str, now: datetime
                ) -> CredentialOffer:
    if not 16 <= len(reference) <= 64:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such offer")
    offer = session.exec(select(CredentialOffer).where(
        CredentialOffer.reference_sha256 == _sha256(reference))).first()
    if offer is None or offer.brand_id != brand.id or offer.redeemed_at is not None \
            or offer.expires_at <= now:
        raise TesseraError(ErrorCode.NOT_FOUND, "no such offer, or it expired or was used")
    return offer


def offer_by_reference(session: Session, *, settings: Settings, brand: Brand, reference: str,
                       now: datetime) -> dict[str, Any]:
    """The Credential Offer behind a ``credential_offer_uri`` (§4.1.3)."""
    offer = _live_offer(session, brand, reference, now)
    grant: dict[str, Any] = {"pre-authorized_code": _code_for(settings, reference)}
    if offer.tx_code_mac is not None:
        grant["tx_code"] = {"input_mode": offer.tx_code_input_mode, "length": offer.tx_code_length}
        if offer.tx_code_description:
            grant["tx_code"]["description"] = offer.tx_code_description
    return {"credential_issuer": issuer_url(settings, brand),
            "credential_configuration_ids": list(offer.configuration_ids),
            "grants": {GRANT_PRE_AUTHORIZED: grant}}


def check_offer_reference(session: Session, *, brand: Brand, reference: str,
                          now: datetime) -> None:
    _live_offer(session, brand, reference, now)


# -- token endpoint ------------------------------------------------------------------------


def parse_form(body: bytes) -> dict[str, str]:
    """``application/x-www-form-urlencoded``; a repeated parameter is refused (RFC 6749 §3.2)."""
    if len(body) > 8192:
        raise TesseraError(ErrorCode.TOO_LARGE, "token request too large")
    try:
        pairs = urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True,
                                       strict_parsing=bool(body), max_num_fields=20)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "body is not form-encoded") from exc
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise TesseraError(ErrorCode.INVALID_REQUEST, f"parameter {name!r} repeated")
        form[name] = value
    return form


@dataclass(frozen=True)
class TokenOutcome:
    """Either the token response or an error to raise after the transaction commits
    (a wrong tx_code must be counted even though the request fails)."""

    body: dict[str, Any] | None
    error: TesseraError | None


def token_request(session: Session, *, settings: Settings, brand: Brand,
                  form: dict[str, str], now: datetime) -> TokenOutcome:
    """The token endpoint's grants: pre-authorized code (§6.1) and refresh token (RFC 6749 §6)."""
    grant_type = form.get("grant_type")
    if not grant_type:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "grant_type is missing")
    if grant_type == GRANT_REFRESH_TOKEN:
        return refresh_access(session, brand=brand, form=form, now=now)
    if grant_type != GRANT_PRE_AUTHORIZED:
        raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT,
                           "only the pre-authorized code and refresh token grants")
    return redeem_code(session, settings=settings, brand=brand, form=form, now=now)


def _new_refresh_token(session: Session, offer_id: str, family_expires_at: datetime,
                       now: datetime) -> str:
    token = b64url_encode(secrets.token_bytes(32))
    session.execute(_INSERT_REFRESH_TOKEN, {
        "token_sha256": _sha256(token), "offer_id": offer_id, "issued_at": now,
        "expires_at": min(now + REFRESH_TOKEN_TTL, family_expires_at), "used_at": None})
    return token


def _token_response(access: str, refresh: str) -> dict[str, Any]:
    return {"access_token": access, "token_type": "Bearer",
            "expires_in": int(ACCESS_TOKEN_TTL.total_seconds()), "refresh_token": refresh}


def refresh_access(session: Session, *, brand: Brand, form: dict[str, str],
                   now: datetime) -> TokenOutcome:
    """The refresh token grant (RFC 6749 §6) with rotation and replay detection.

    Each use returns a new access token and a new refresh token and uses the
    old one up. A used refresh token presented again means it was copied:
    the legitimate wallet and the copier cannot be told apart, so the whole
    family is revoked, the current access token with it (RFC 9700 §4.14.2),
    and the member needs a new offer. ``scope``, when sent, must name the
    configurations the offer granted (RFC 6749 §6: never more); the new
    access token covers all of them, each once, like the first.
    """
    token = form.get("refresh_token", "")
    if not token or len(token) > 128:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "refresh_token is missing")
    row = session.exec(select(RefreshToken).where(
        RefreshToken.token_sha256 == _sha256(token)).with_for_update()).first()
    offer = session.exec(select(CredentialOffer).where(
        CredentialOffer.id == row.offer_id).with_for_update()).first() if row else None
    if row is None or offer is None or offer.brand_id != brand.id:
        raise TesseraError(ErrorCode.NOT_FOUND, "unknown refresh token")
    if offer.refresh_revoked_at is not None:
        raise TesseraError(ErrorCode.REPLAYED, "this refresh token's family was revoked")
    if row.used_at is not None or session.get(MemberErasure, offer.member_id) is not None:
        # Committed although the request fails: the family ends now.
        offer.refresh_revoked_at = now
        offer.access_token_expires_at = min(offer.access_token_expires_at or now, now)
        session.add(offer)
        return TokenOutcome(None, TesseraError(
            ErrorCode.REPLAYED, "refresh token already used: every token of its family is "
                                "revoked" if row.used_at is not None else "member erased"))
    if row.expires_at <= now or (offer.refresh_family_expires_at or now) <= now:
        raise TesseraError(ErrorCode.EXPIRED, "refresh token expired")
    if "scope" in form and set(form["scope"].split()) - set(offer.configuration_ids):
        raise TesseraError(ErrorCode.CREDENTIAL_TYPE_NOT_ALLOWED,
                           "scope asks for more than the offer granted")
    row.used_at = now
    session.add(row)
    access = b64url_encode(secrets.token_bytes(32))
    offer.access_token_sha256 = _sha256(access)
    offer.access_token_expires_at = now + ACCESS_TOKEN_TTL
    offer.issued_configurations = []
    session.add(offer)
    assert offer.refresh_family_expires_at is not None
    refresh = _new_refresh_token(session, offer.id, offer.refresh_family_expires_at, now)
    session.flush()
    return TokenOutcome(_token_response(access, refresh), None)


def redeem_code(session: Session, *, settings: Settings, brand: Brand, form: dict[str, str],
                now: datetime) -> TokenOutcome:
    """The pre-authorized code grant (§6.1): single use, unexpired, right tx_code."""
    code = form.get("pre-authorized_code", "")
    if not code or len(code) > 128:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "pre-authorized_code is missing")
    offer = session.exec(_BY_CODE, params={"sha256": _sha256(code)}).first()
    if offer is None or offer.brand_id != brand.id:
        raise TesseraError(ErrorCode.NOT_FOUND, "unknown pre-authorized code")
    if offer.redeemed_at is not None:
        raise TesseraError(ErrorCode.REPLAYED, "pre-authorized code already used")
    if offer.expires_at <= now:
        raise TesseraError(ErrorCode.EXPIRED, "pre-authorized code expired")
    if offer.tx_code_mac is not None:
        tx_code = form.get("tx_code")
        if tx_code is None:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "this offer needs a tx_code")
        if not hmac.compare_digest(_tx_mac(settings, offer.id, tx_code[:64]),
                                   offer.tx_code_mac):
            offer.tx_code_failures += 1
            if offer.tx_code_failures >= MAX_TX_CODE_FAILURES:
                offer.expires_at = now  # burnt: the PIN space is small
            session.add(offer)
            return TokenOutcome(None, TesseraError(ErrorCode.FORBIDDEN, "wrong tx_code"))
    elif "tx_code" in form:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "this offer has no tx_code")
    token = b64url_encode(secrets.token_bytes(32))
    # Conditional: of two concurrent redemptions, one updates the row.
    family_ends = now + REFRESH_FAMILY_TTL
    result = session.execute(_REDEEM, {
        "offer_id": offer.id, "redeemed_at": now, "access_token_sha256": _sha256(token),
        "access_token_expires_at": now + ACCESS_TOKEN_TTL,
        "refresh_family_expires_at": family_ends})
    if getattr(result, "rowcount", 0) != 1:
        raise TesseraError(ErrorCode.REPLAYED, "pre-authorized code already used")
    refresh = _new_refresh_token(session, offer.id, family_ends, now)
    return TokenOutcome(_token_response(token, refresh), None)


def authorize(session: Session, *, brand: Brand, authorization: str | None, now: datetime
              ) -> tuple[CredentialOffer, Member]:
    """The offer and member an access token (RFC 6750 §2.1 header) stands for."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > 128:
        raise TesseraError(ErrorCode.UNAUTHORIZED, "missing bearer access token")
    found = session.exec(_BY_ACCESS_TOKEN, params={"sha256": _sha256(token.strip())}).first()
    offer, member = found if found is not None else (None, None)
    if offer is None or member is None or offer.brand_id != brand.id \
            or offer.access_token_expires_at is None or offer.access_token_expires_at <= now:
        raise TesseraError(ErrorCode.UNAUTHORIZED, "access token unknown or expired")
    return offer, member


def record_issuance(session: Session, *, offer_id: str, configuration_id: str) -> None:
    """One credential per configuration per offer; a second request is refused."""
    offer = core(session, _LOCK_OFFER, {"offer_id": offer_id}).one()
    if configuration_id not in offer.configuration_ids:
        raise TesseraError(ErrorCode.FORBIDDEN, "the access token does not cover this "
                                                "credential configuration")
    if configuration_id in offer.issued_configurations:
        raise TesseraError(ErrorCode.CONFLICT, "this credential was already issued for the offer")
    core(session, _RECORD_ISSUED, {"offer_id": offer_id,
                                   "issued": [*offer.issued_configurations, configuration_id]})
    # A copy of the offer this session loaded (the ORM path's callers) follows.
    loaded = session.identity_map.get(identity_key(CredentialOffer, offer_id))
    if loaded is not None:
        set_committed_value(loaded, "issued_configurations",
                            [*offer.issued_configurations, configuration_id])


# -- nonces and key proofs ----------------------------------------------------------------------


def issue_nonce(nonces: NonceStore, *, brand: Brand) -> str:
    value = b64url_encode(secrets.token_bytes(24))
    nonces.issue(value, ttl_seconds=C_NONCE_TTL_SECONDS, data={"brand": brand.id})
    return value


def _proof_error(detail: str) -> TesseraError:
    return TesseraError(ErrorCode.KEY_BINDING_INVALID, detail)


def _member_keys(resolver: Resolver, did: str) -> list[tuple[str, PublicKey]]:
    document = resolver.resolve(did)
    return document.keys_for("authentication")


@dataclass(frozen=True)
class _Attestation:
    keys: tuple[PublicKey, ...]
    nonce: str


def _fresh_iat(payload: dict[str, Any], now: datetime, what: str) -> None:
    iat = payload.get("iat")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise _proof_error(f"{what} iat must be a number")
    t = now.timestamp()
    if iat > t + PROOF_FUTURE_SKEW.total_seconds() or iat < t - PROOF_MAX_AGE.total_seconds():
        raise _proof_error(f"{what} iat is not fresh")


def _nonce_of(payload: dict[str, Any], what: str) -> str:
    nonce = payload.get("nonce")
    if not isinstance(nonce, str) or not nonce:
        raise TesseraError(ErrorCode.NONCE_MISMATCH, f"{what} has no c_nonce")
    return nonce


def verify_key_attestation(attestation: Any, *, member: Member, resolver: Resolver,
                           now: datetime, allowed_algs: Collection[str] = PROOF_ALGS
                           ) -> _Attestation:
    """A ``key-attestation+jwt`` (Appendix D.1) by the enrolled member's DID key.

    The attestation is how a member vouches for fresh holder keys that are
    not in its DID document: it must be signed by a key listed for
    ``authentication`` in the member's DID document (``kid``, a DID URL),
    carry ``iat`` (fresh), ``exp`` (Appendix D.1 requires it with the jwt
    proof type; we always do), the request's ``c_nonce`` in ``nonce``, and a
    non-empty ``attested_keys`` of distinct public JWKs. ``exp`` bounds the
    attestation's acceptance; the credentials' lifetime stays the issuer's
    policy. ``key_storage`` and ``user_authentication`` are not evaluated:
    the member, not a wallet provider, signs, so they would be self-asserted.
    """
    if not isinstance(attestation, str):
        raise _proof_error("a key attestation must be a JWT string")
    try:
        jws = decode_unverified(attestation, max_bytes=32 * 1024)
    except TesseraError as exc:
        raise _proof_error(f"key attestation: {exc.detail}") from exc
    header, payload = jws.header, jws.payload
    if header.get("typ") != ATTESTATION_TYP:
        raise _proof_error(f"key attestation typ must be {ATTESTATION_TYP}")
    kid = header.get("kid")
    if any(k in header for k in ("jwk", "x5c", "trust_chain")) or not isinstance(kid, str) \
            or kid.split("#", 1)[0] != member.did or "#" not in kid:
        raise _proof_error("a key attestation must be signed by the enrolled member's DID key "
                           "(kid: a DID URL of the member's DID)")
    try:
        key = resolver.key(kid, relationship="authentication")
        verify_signature(jws, key, allowed_algs)
    except TesseraError as exc:
        raise _proof_error(f"key attestation: {exc.detail}") from exc
    _fresh_iat(payload, now, "key attestation")
    exp = payload.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise _proof_error("key attestation exp is required (OpenID4VCI 1.0 Appendix D.1)")
    if exp <= now.timestamp():
        raise _proof_error("key attestation expired")
    attested = payload.get("attested_keys")
    if not isinstance(attested, list) or not attested:
        raise _proof_error("key attestation attested_keys must be a non-empty array")
    if len(attested) > MAX_ATTESTED_KEYS:
        raise _proof_error(f"key attestation attests more than {MAX_ATTESTED_KEYS} keys")
    keys: list[PublicKey] = []
    for jwk in attested:
        if not isinstance(jwk, dict):
            raise _proof_error("attested_keys holds JWK objects")
        try:
            attested_key = PublicKey.from_jwk(jwk)  # refuses private members
        except TesseraError as exc:
            raise _proof_error(f"attested key: {exc.detail}") from exc
        if attested_key in keys:
            raise _proof_error("attested_keys lists a key twice")
        keys.append(attested_key)
    return _Attestation(tuple(keys), _nonce_of(payload, "key attestation"))


def _verify_jwt_proof(proof: Any, *, audience: str, member: Member,
                      member_keys: list[tuple[str, PublicKey]], resolver: Resolver,
                      now: datetime, allowed_algs: Collection[str]
                      ) -> tuple[PublicKey, str, str | None]:
    """One ``jwt`` key proof (Appendix F.1): its key, its nonce, its ``key_attestation``."""
    if not isinstance(proof, str):
        raise _proof_error("a jwt key proof must be a string")
    try:
        jws = decode_unverified(proof, max_bytes=48 * 1024)
    except TesseraError as exc:
        raise _proof_error(f"key proof: {exc.detail}") from exc
    header, payload = jws.header, jws.payload
    if header.get("typ") != PROOF_TYP:
        raise _proof_error(f"key proof typ must be {PROOF_TYP}")
    if sum(k in header for k in ("jwk", "kid", "x5c")) != 1 or "x5c" in header:
        raise _proof_error("key proof must carry exactly one of jwk or kid")
    attestation = header.get("key_attestation")
    if attestation is not None and not isinstance(attestation, str):
        raise _proof_error("key_attestation header must be a JWT string")
    key: PublicKey
    try:
        if "jwk" in header:
            if not isinstance(header["jwk"], dict):
                raise _proof_error("jwk header must be an object")
            key = PublicKey.from_jwk(header["jwk"])  # refuses private members
        else:
            kid = header["kid"]
            if not isinstance(kid, str) or not kid.startswith("did:"):
                raise _proof_error("kid must be a DID URL")
            if kid.split("#", 1)[0] != member.did:
                raise _proof_error("key proof kid is not a key of the enrolled member's DID")
            key = resolver.key(kid, relationship="authentication")
        # Without an attestation the key must be the member's own; with one,
        # the caller checks the key is among the attested keys (Appendix F.1).
        if attestation is None and all(key != k for _, k in member_keys):
            raise _proof_error("key proof key is not a key of the enrolled member's DID, "
                               "and no key attestation of the member vouches for it")
        verify_signature(jws, key, allowed_algs)
    except TesseraError as exc:
        if exc.code is ErrorCode.KEY_BINDING_INVALID:
            raise
        raise _proof_error(f"key proof: {exc.detail}") from exc
    aud = payload.get("aud")
    if aud != audience and not (isinstance(aud, list) and aud == [audience]):
        raise _proof_error("key proof aud is not this credential issuer")
    if "iss" in payload:
        # Appendix F.1: iss MUST be omitted after anonymous pre-authorized access.
        raise _proof_error("key proof must not carry iss in the pre-authorized flow")
    _fresh_iat(payload, now, "key proof")
    return key, _nonce_of(payload, "key proof"), attestation


def verify_proofs(proof_type: str, proofs: list[Any], *, audience: str, member: Member,
                  resolver: Resolver, nonces: NonceStore, brand: Brand, now: datetime,
                  batch_size: int, attestations: bool = True,
                  allowed_algs: Collection[str] = PROOF_ALGS) -> list[PublicKey]:
    """:func:`check_proofs`, then the request's ``c_nonce`` consumed from ``nonces``."""
    keys, nonce = check_proofs(proof_type, proofs, audience=audience, member=member,
                               resolver=resolver, now=now, batch_size=batch_size,
                               attestations=attestations, allowed_algs=allowed_algs)
    check_nonce(nonces.consume(nonce), brand=brand)
    return keys


def check_nonce(consumed: dict[str, Any] | None, *, brand: Brand) -> None:
    """What consuming the request's ``c_nonce`` gave back must be a nonce of this brand."""
    if consumed is None or consumed.get("brand") != brand.id:
        raise TesseraError(ErrorCode.NONCE_MISMATCH, "c_nonce unknown, expired or already used")


def check_proofs(proof_type: str, proofs: list[Any], *, audience: str, member: Member,
                 resolver: Resolver, now: datetime, batch_size: int,
                 attestations: bool = True, allowed_algs: Collection[str] = PROOF_ALGS
                 ) -> tuple[list[PublicKey], str]:
    """Check the ``proofs`` of a Credential Request (§8.2, Appendix F) and return the keys
    to bind, one credential each, in the order the wallet gave them, and the request's
    ``c_nonce``, which the caller consumes (:func:`check_nonce`).

    * ``jwt`` without ``key_attestation``: the key must be one of the enrolled
      member's DID keys (a leaked code cannot mint credentials for someone
      else's key).
    * ``jwt`` with ``key_attestation``, or the ``attestation`` proof type: the
      attestation must be the member's (:func:`verify_key_attestation`); a
      ``jwt`` proof's key must be one of its ``attested_keys``; every attested
      key gets a credential (Appendix F.1, F.3: "SHOULD issue a Credential for
      each ... attested_keys").

    One ``c_nonce`` serves the whole request (§13.3's single-use nonce and
    §8.2): every proof and attestation must carry the same one, to be consumed
    once after everything here checked out. Every failure is ``key_binding_invalid``
    (``invalid_proof``) except an unknown, used, expired or mixed nonce:
    ``nonce_mismatch`` (``invalid_nonce``), so the wallet knows to fetch one.
    """
    if len(proofs) > batch_size:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"proofs holds {len(proofs)} proofs; this configuration issues at "
                           f"most {batch_size} credentials per request (batch_size)")
    if proof_type == "attestation" and not attestations:
        raise _proof_error("key attestations apply to dc+sd-jwt configurations only")
    member_keys = _member_keys(resolver, member.did)
    keys: list[PublicKey] = []
    seen_nonces: set[str] = set()
    checked: dict[str, _Attestation] = {}
    bound: set[str] = set()  # attestations whose keys were added

    def attested(jwt: str) -> _Attestation:
        if jwt not in checked:
            checked[jwt] = verify_key_attestation(jwt, member=member, resolver=resolver, now=now,
                                                  allowed_algs=allowed_algs)
            seen_nonces.add(checked[jwt].nonce)
        return checked[jwt]

    def add(key: PublicKey) -> None:
        if key not in keys:
            keys.append(key)

    if proof_type == "attestation":
        for key in attested(proofs[0]).keys:
            add(key)
    else:
        proof_keys: list[PublicKey] = []
        for proof in proofs:
            key, nonce, attestation = _verify_jwt_proof(
                proof, audience=audience, member=member, member_keys=member_keys,
                resolver=resolver, now=now, allowed_algs=allowed_algs)
            seen_nonces.add(nonce)
            if key in proof_keys:
                raise _proof_error("two key proofs by one key: each key binds one credential")
            proof_keys.append(key)
            if attestation is None:
                add(key)
                continue
            if not attestations:
                raise _proof_error("key attestations apply to dc+sd-jwt configurations only")
            vouched = attested(attestation)
            if key not in vouched.keys:
                raise _proof_error("the key proof is not signed by a key of its key_attestation")
            if attestation not in bound:
                # Once per attestation: ten proofs carrying one attestation of ten keys
                # would otherwise compare a hundred keys.
                bound.add(attestation)
                for each in vouched.keys:
                    add(each)
    if len(seen_nonces) != 1:
        raise TesseraError(ErrorCode.NONCE_MISMATCH,
                           "one c_nonce serves the whole request; the proofs and key "
                           "attestations carry different nonces")
    if len(keys) > batch_size:
        raise _proof_error(f"{len(keys)} keys to bind; this configuration issues at most "
                           f"{batch_size} credentials per request (batch_size)")
    return keys, seen_nonces.pop()


def proofs_from_request(body: dict[str, Any]) -> tuple[str, str, list[Any]]:
    """``credential_configuration_id`` and the ``proofs`` (§8.2): its one proof type and
    the non-empty array under it."""
    config_id = body.get("credential_configuration_id")
    if "credential_identifier" in body:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           "credential_identifier is not supported; "
                           "use credential_configuration_id")
    if not isinstance(config_id, str) or not config_id:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "credential_configuration_id is required")
    if config_id not in CONFIGURATIONS:
        raise TesseraError(ErrorCode.NOT_FOUND, f"unknown credential configuration {config_id!r}")
    if "proof" in body:
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID, "use proofs, not proof (1.0 §8.2)")
    proofs = body.get("proofs")
    if not isinstance(proofs, dict) or len(proofs) != 1:
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID,
                           "proofs must hold exactly one proof type")
    proof_type, items = next(iter(proofs.items()))
    if proof_type not in PROOF_TYPES:
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID,
                           f"proof type {proof_type!r} is not supported; use jwt or attestation")
    if not isinstance(items, list) or not items:
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID,
                           f"proofs.{proof_type} must be a non-empty array")
    if proof_type == "attestation" and len(items) != 1:
        # Appendix F.3: exactly one key attestation JWT.
        raise TesseraError(ErrorCode.KEY_BINDING_INVALID,
                           "proofs.attestation must hold exactly one key attestation")
    return config_id, proof_type, items


FORMATS: Final = (SD_JWT, LDP_VC)
