"""OpenID4VCI 1.0, wallet side: receive credentials from a pre-authorized offer.

``receive_offer(wallet, "openid-credential-offer://?...", http_client=...)``
runs the pre-authorized code flow (§4.1 offer by value or by reference,
§12.2.2 issuer metadata, RFC 8414 AS metadata, §6 token with the optional
tx_code, §7 nonce, §8 credential request with a ``jwt`` key proof signed by
the wallet's did:key) and stores each credential through
:meth:`holder.Wallet.receive`, which checks the issuer's signature and the
key binding before keeping anything. Only ``dc+sd-jwt`` configurations are
requested: the wallet stores SD-JWT VCs.
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime
from typing import Any, Final

import httpx

from holder._wallet import StoredCredential, Wallet
from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import sign_compact

__all__ = ["receive_offer"]

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
    metadata = _get(http_client, _well_known(issuer_id, "openid-credential-issuer"),
                    "issuer metadata")
    if metadata.get("credential_issuer") != issuer_id:
        # §12.2.3: the metadata must be the offer's issuer's own.
        raise TesseraError(ErrorCode.UNTRUSTED_ISSUER, "metadata names another issuer")
    configs = metadata.get("credential_configurations_supported") or {}
    wanted = [c for c in offer["credential_configuration_ids"]
              if isinstance(c, str) and isinstance(configs.get(c), dict)
              and configs[c].get("format") == "dc+sd-jwt"]
    if not wanted:
        raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT, "the offer holds no dc+sd-jwt credential")
    servers = metadata.get("authorization_servers") or [issuer_id]
    as_meta = _get(http_client, _well_known(str(servers[0]), "oauth-authorization-server"),
                   "authorization server metadata")
    form = {"grant_type": GRANT, "pre-authorized_code": grant["pre-authorized_code"]}
    if tx_code is not None and "tx_code" in grant:
        form["tx_code"] = tx_code
    token = _post(http_client, str(as_meta["token_endpoint"]), "token endpoint", data=form)
    access_token = token.get("access_token")
    if not isinstance(access_token, str):
        raise TesseraError(ErrorCode.MALFORMED, "token response has no access_token")
    stored: list[StoredCredential] = []
    for config_id in wanted:
        nonce = _post(http_client, str(metadata["nonce_endpoint"]), "nonce endpoint").get(
            "c_nonce")
        iat = int((now or datetime.now(UTC)).timestamp())
        # kid is the wallet's did:key verification method (sign_compact adds it).
        proof = sign_compact({"typ": PROOF_TYP},
                             {"aud": issuer_id, "iat": iat, "nonce": nonce}, wallet.signer)
        body = json.dumps({"credential_configuration_id": config_id,
                           "proofs": {"jwt": [proof]}})
        answer = _post(http_client, str(metadata["credential_endpoint"]), "credential endpoint",
                       content=body, headers={"Authorization": f"Bearer {access_token}",
                                              "Content-Type": "application/json"})
        issued = answer.get("credentials")
        if not isinstance(issued, list) or len(issued) != 1 or \
                not isinstance(issued[0], dict) or \
                not isinstance(issued[0].get("credential"), str):
            raise TesseraError(ErrorCode.MALFORMED, "credential response holds no credential")
        stored.append(wallet.receive(issued[0]["credential"]))
    return stored
