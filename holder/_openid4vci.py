"""OpenID4VCI 1.0, wallet side: receive credentials from a pre-authorized offer.

``receive_offer(wallet, "openid-credential-offer://?...", http_client=...)``
runs the pre-authorized code flow (§4.1 offer by value or by reference,
§12.2.2 issuer metadata, RFC 8414 AS metadata, §6 token with the optional
tx_code, §7 nonce, §8 credential request with a ``jwt`` key proof signed by
the wallet's did:key) and stores each credential through
:meth:`holder.Wallet.receive`, which checks the issuer's signature and the
key binding before keeping anything. Only ``dc+sd-jwt`` configurations are
requested: the wallet stores SD-JWT VCs.

One-time credentials (docs/privacy.md): when a configuration takes key
attestations (``key_attestations_required`` under ``proof_types_supported.jwt``,
or the ``attestation`` proof type), the wallet makes a fresh key per credential,
up to the issuer's ``batch_credential_issuance.batch_size`` (§12.2.4), attests
them with its enrolled DID key (Appendix D.1, ``nonce`` = the one ``c_nonce`` of
the request), sends one ``jwt`` proof per key with the attestation in its
``key_attestation`` header (Appendix F.1), or the attestation alone as the
``attestation`` proof (Appendix F.3), and keeps the refresh token (§6.2, RFC 6749
§6) so :func:`top_up` refills the pool later without a new offer.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from holder._wallet import PoolGrant, StoredCredential, Wallet
from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import sign_compact

__all__ = ["receive_offer", "top_up"]

GRANT: Final = "urn:ietf:params:oauth:grant-type:pre-authorized_code"
PROOF_TYP: Final = "openid4vci-proof+jwt"
MAX_RESPONSE_BYTES: Final = 256 * 1024


def _well_known(identifier: str, suffix: str) -> str:
    parts = urllib.parse.urlsplit(identifier)
    return f"{parts.scheme}://{parts.netloc}/.well-known/{suffix}{parts.path.rstrip('/')}"


def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    if len(response.content) > MAX_RESPONSE_BYTES:
        raise TesseraError(ErrorCode.TOO_LARGE, f"{what}: response too large")
    if response.status_code != 200:
        detail = ""
        try:
            body = parse_json_object(response.content)
            detail = f": {body.get('error') or body.get('code')}: " \
                     f"{body.get('error_description') or body.get('detail') or ''}"
        except TesseraError:
            pass
        code = ErrorCode.UNAUTHORIZED if response.status_code == 401 else \
            ErrorCode.INVALID_REQUEST
        raise TesseraError(code, f"{what} answered {response.status_code}{detail}")
    return parse_json_object(response.content, max_bytes=MAX_RESPONSE_BYTES)


def _get(http: httpx.Client, url: str, what: str) -> dict[str, Any]:
    try:
        return _json(http.get(url, headers={"Accept": "application/json"}), what)
    except httpx.HTTPError as exc:
        raise TesseraError(ErrorCode.STATUS_UNAVAILABLE, f"{what}: {type(exc).__name__}") from exc


def _post(http: httpx.Client, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
    try:
        return _json(http.post(url, **kwargs), what)
    except httpx.HTTPError as exc:
        raise TesseraError(ErrorCode.STATUS_UNAVAILABLE, f"{what}: {type(exc).__name__}") from exc


def parse_offer(offer_uri: str, http: httpx.Client) -> dict[str, Any]:
    """The Credential Offer of an ``openid-credential-offer://`` URI (§4.1.2, §4.1.3)."""
    parts = urllib.parse.urlsplit(offer_uri.strip())
    if parts.scheme not in ("openid-credential-offer", "https", "http"):
        raise TesseraError(ErrorCode.MALFORMED, "not a credential offer URI")
    try:
        query = urllib.parse.parse_qs(parts.query, strict_parsing=True, max_num_fields=5)
    except ValueError as exc:
        raise TesseraError(ErrorCode.MALFORMED, "credential offer URI query is malformed") from exc
    if any(len(v) != 1 for v in query.values()) or \
            ("credential_offer" in query) == ("credential_offer_uri" in query):
        raise TesseraError(ErrorCode.MALFORMED,
                           "exactly one of credential_offer and credential_offer_uri")
    if "credential_offer" in query:
        offer = parse_json_object(query["credential_offer"][0])
    else:
        offer = _get(http, query["credential_offer_uri"][0], "credential offer")
    issuer = offer.get("credential_issuer")
    ids = offer.get("credential_configuration_ids")
    grant = (offer.get("grants") or {}).get(GRANT)
    if not isinstance(issuer, str) or not isinstance(ids, list) or not isinstance(grant, dict) \
            or not isinstance(grant.get("pre-authorized_code"), str):
        raise TesseraError(ErrorCode.MALFORMED, "not a pre-authorized credential offer")
    return offer


@dataclass(frozen=True)
class _Issuer:
    identifier: str
    metadata: dict[str, Any]
    token_endpoint: str


def _discover(http: httpx.Client, issuer_id: str) -> _Issuer:
    metadata = _get(http, _well_known(issuer_id, "openid-credential-issuer"), "issuer metadata")
    if metadata.get("credential_issuer") != issuer_id:
        # §12.2.3: the metadata must be the offer's issuer's own.
        raise TesseraError(ErrorCode.UNTRUSTED_ISSUER, "metadata names another issuer")
    servers = metadata.get("authorization_servers") or [issuer_id]
    as_meta = _get(http, _well_known(str(servers[0]), "oauth-authorization-server"),
                   "authorization server metadata")
    return _Issuer(issuer_id, metadata, str(as_meta["token_endpoint"]))


def _pool_plan(metadata: dict[str, Any], config: dict[str, Any]) -> tuple[str, int] | None:
    """``(proof type, batch size)`` when this configuration binds credentials to keys the
    member attests (one-time credentials), else None (one credential on the DID key)."""
    proof_types = config.get("proof_types_supported")
    if not isinstance(proof_types, dict):
        return None
    jwt = proof_types.get("jwt")
    if isinstance(jwt, dict) and isinstance(jwt.get("key_attestations_required"), dict):
        kind = "jwt"
    elif isinstance(proof_types.get("attestation"), dict):
        kind = "attestation"
    else:
        return None
    batch = config.get("batch_credential_issuance") or metadata.get("batch_credential_issuance")
    size = batch.get("batch_size") if isinstance(batch, dict) else 1
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise TesseraError(ErrorCode.MALFORMED, "batch_credential_issuance.batch_size is not "
                                                "a positive integer")
    return kind, min(size, 100)


def _nonce(http: httpx.Client, issuer: _Issuer) -> str:
    nonce = _post(http, str(issuer.metadata["nonce_endpoint"]), "nonce endpoint").get("c_nonce")
    if not isinstance(nonce, str) or not nonce:
        raise TesseraError(ErrorCode.MALFORMED, "nonce response has no c_nonce")
    return nonce


def _credential_request(http: httpx.Client, issuer: _Issuer, access_token: str,
                        config_id: str, proofs: dict[str, list[str]]) -> list[str]:
    body = json.dumps({"credential_configuration_id": config_id, "proofs": proofs})
    answer = _post(http, str(issuer.metadata["credential_endpoint"]), "credential endpoint",
                   content=body, headers={"Authorization": f"Bearer {access_token}",
                                          "Content-Type": "application/json"})
    issued = answer.get("credentials")
    if not isinstance(issued, list) or not issued or not all(
            isinstance(i, dict) and isinstance(i.get("credential"), str) for i in issued):
        raise TesseraError(ErrorCode.MALFORMED, "credential response holds no credential")
    return [str(i["credential"]) for i in issued]


def _request_pools(wallet: Wallet, http: httpx.Client, issuer: _Issuer, access_token: str,
                   plans: dict[str, tuple[str, int]], grant: PoolGrant | None,
                   now: datetime | None) -> list[StoredCredential]:
    """One batch per configuration, all on one set of fresh keys: key i binds the i-th
    credential of each type (a slot), so a presentation of several types has one holder
    key, and each key still goes to one presentation only."""
    configs = issuer.metadata["credential_configurations_supported"]
    algs = set.intersection(*(set(
        configs[cid].get("proof_types_supported", {}).get(kind, {})
        .get("proof_signing_alg_values_supported") or ["ES256"]) for cid, (kind, _)
        in plans.items()))
    alg = "ES256" if "ES256" in algs else next(
        (a for a in ("ES384", "EdDSA") if a in algs), "ES256")
    keys = Wallet.new_holder_keys(max(size for _, size in plans.values()), alg)
    issued: list[str] = []
    for config_id, (kind, size) in plans.items():
        mine = keys[:size]
        # §13 (1.0): one c_nonce serves every proof of the request.
        nonce = _nonce(http, issuer)
        attestation = wallet.key_attestation([k.public_key for k in mine], nonce=nonce)
        if kind == "jwt":
            iat = int((now or datetime.now(UTC)).timestamp())
            proofs = {"jwt": [sign_compact(
                {"typ": PROOF_TYP, "jwk": key.public_key.to_jwk(),
                 "key_attestation": attestation},
                {"aud": issuer.identifier, "iat": iat, "nonce": nonce}, key) for key in mine]}
        else:
            proofs = {"attestation": [attestation]}
        issued += _credential_request(http, issuer, access_token, config_id, proofs)
    return wallet.receive_batch(issued, keys, grant=grant)


def receive_offer(wallet: Wallet, offer_uri: str, *, http_client: httpx.Client,
                  tx_code: str | None = None, now: datetime | None = None
                  ) -> list[StoredCredential]:
    """Fetch every ``dc+sd-jwt`` credential of the offer into ``wallet``; return what was stored.

    ``tx_code`` is the PIN the issuer sent through another channel, when the
    offer asks for one (``invalid_request`` if it does and none is given).
    """
    offer = parse_offer(offer_uri, http_client)
    issuer_id: str = offer["credential_issuer"]
    grant: dict[str, Any] = offer["grants"][GRANT]
    if "tx_code" in grant and tx_code is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "this offer needs a tx_code")
    issuer = _discover(http_client, issuer_id)
    configs = issuer.metadata.get("credential_configurations_supported") or {}
    wanted = [c for c in offer["credential_configuration_ids"]
              if isinstance(c, str) and isinstance(configs.get(c), dict)
              and configs[c].get("format") == "dc+sd-jwt"]
    if not wanted:
        raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, "the offer holds no dc+sd-jwt credential")
    form = {"grant_type": GRANT, "pre-authorized_code": grant["pre-authorized_code"]}
    if tx_code is not None and "tx_code" in grant:
        form["tx_code"] = tx_code
    token = _post(http_client, issuer.token_endpoint, "token endpoint", data=form)
    access_token = token.get("access_token")
    if not isinstance(access_token, str):
        raise TesseraError(ErrorCode.MALFORMED, "token response has no access_token")
    refresh_token = token.get("refresh_token")
    stored: list[StoredCredential] = []
    plans = {cid: plan for cid in wanted
             if (plan := _pool_plan(issuer.metadata, configs[cid])) is not None}
    if plans:
        pool_grant = None
        if isinstance(refresh_token, str) and refresh_token:
            # One grant for the offer: its refresh token's access token covers every
            # configuration, and rotating it for one type must not strand the others.
            pool_grant = PoolGrant(
                id=str(uuid.uuid4()), credential_issuer=issuer_id,
                credential_configuration_ids=tuple(plans),
                vcts=tuple(str(configs[c].get("vct", "")) for c in plans),
                refresh_token=refresh_token)
        stored += _request_pools(wallet, http_client, issuer, access_token, plans,
                                 pool_grant, now)
    for config_id in wanted:
        if config_id in plans:
            continue
        nonce = _nonce(http_client, issuer)
        iat = int((now or datetime.now(UTC)).timestamp())
        # kid is the wallet's did:key verification method (sign_compact adds it).
        proof = sign_compact({"typ": PROOF_TYP},
                             {"aud": issuer_id, "iat": iat, "nonce": nonce}, wallet.signer)
        issued = _credential_request(http_client, issuer, access_token, config_id,
                                     {"jwt": [proof]})
        if len(issued) != 1:
            raise TesseraError(ErrorCode.MALFORMED, "one proof, one credential")
        stored.append(wallet.receive(issued[0]))
    return stored


def top_up(wallet: Wallet, grant: PoolGrant, *, http_client: httpx.Client,
           now: datetime | None = None) -> list[StoredCredential]:
    """Refill the pools of a grant: a fresh access token from the refresh token (RFC 6749
    §6), a new batch of each type on fresh attested keys. No offer, no member interaction
    (OpenID4VCI 1.0 §13.5).

    A refresh token the issuer rotates is saved before the credential requests, so a
    crash in between loses nothing. Raises what the issuer answers (``invalid_request``
    with ``invalid_grant`` when the refresh token is no longer good).
    """
    issuer = _discover(http_client, grant.credential_issuer)
    configs = issuer.metadata.get("credential_configurations_supported") or {}
    plans = {cid: plan for cid in grant.credential_configuration_ids
             if isinstance(configs.get(cid), dict)
             and (plan := _pool_plan(issuer.metadata, configs[cid])) is not None}
    if not plans:
        raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT,
                           "the issuer no longer issues these credentials on attested keys")
    token = _post(http_client, issuer.token_endpoint, "token endpoint", data={
        "grant_type": "refresh_token", "refresh_token": grant.refresh_token})
    access_token = token.get("access_token")
    if not isinstance(access_token, str):
        raise TesseraError(ErrorCode.MALFORMED, "token response has no access_token")
    rotated = token.get("refresh_token")
    if isinstance(rotated, str) and rotated and rotated != grant.refresh_token:
        grant = replace(grant, refresh_token=rotated)
        wallet.save_grant(grant)
    return _request_pools(wallet, http_client, issuer, access_token, plans, grant, now)
