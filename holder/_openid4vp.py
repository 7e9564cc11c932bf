"""OpenID4VP 1.0, wallet side: read a request URI, ask the member, answer by direct_post.

:func:`parse_request` turns an ``openid4vp://`` URI into a checked
:class:`VerifierRequest`: a ``request_uri`` is fetched (RFC 9101 §5.2) through
an injectable ``httpx.Client`` (with ``request_uri_method=post`` the wallet POSTs
its metadata, §5.10), the Request Object must be a JWS with ``typ``
``oauth-authz-req+jwt`` whose ``client_id`` equals the URI's, and for the
``decentralized_identifier`` prefix it must be signed by a key of that DID,
named by its ``kid`` (§5.9.3). A ``redirect_uri`` request is unsigned by
definition, and its response URI must be its identifier. Any tampering with a
signed request object fails the signature check.

:func:`respond` builds the ``vp_token`` through :meth:`holder.Wallet.present`
(which shows the consent screen and logs the decision) and posts it; a member
who declines makes the wallet post ``error=access_denied`` (§8.5). When the
request says ``response_mode=direct_post.jwt`` (§8.3) every response parameter
goes inside a JWE (``ECDH-ES`` to the P-256 key from ``client_metadata.jwks``,
``enc`` ``A128GCM`` unless the verifier only offers ``A256GCM``), posted as
``response=<JWE>``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import urllib.parse
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx
from jwcrypto import jwe as _jwe
from jwcrypto import jwk as _jwk

from holder._wallet import ConsentCallback, PoolGrant, Wallet
from tessera.dcql import Query
from tessera.did import Resolver
from tessera.encoding import b64url_decode, parse_json, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import decode_unverified, verify_signature
from tessera.keys import public_key_from_jwk
from tessera.typing import DIDResolver

__all__ = [
    "KNOWN_TRANSACTION_TYPES",
    "VerifierRequest",
    "encrypt_response",
    "parse_request",
    "respond",
]

REQUEST_OBJECT_TYP: Final = "oauth-authz-req+jwt"
PREFIX_REDIRECT_URI: Final = "redirect_uri"
PREFIX_DID: Final = "decentralized_identifier"
SCHEMES: Final = ("openid4vp", "haip-vp")
KNOWN_TRANSACTION_TYPES: Final = frozenset(
    {"https://w3id.org/tessera/transaction/points-redemption/v1", "tessera_redeem"}
)
MAX_REQUEST_OBJECT_BYTES: Final = 64 * 1024
MAX_URI_LENGTH: Final = 16 * 1024
_JSON_PARAMS: Final = ("dcql_query", "client_metadata", "transaction_data")
RESPONSE_MODES: Final = ("direct_post", "direct_post.jwt")
# §8.3: the wallet uses A128GCM when the verifier names no enc; it prefers it
# when offered, as the profile default.
ENC_PREFERENCE: Final = ("A128GCM", "A256GCM")


def _invalid(detail: str) -> TesseraError:
    return TesseraError(ErrorCode.INVALID_REQUEST, detail)


@dataclass(frozen=True)
class VerifierRequest:
    """A checked Authorization Request: everything the consent screen shows."""

    client_id: str
    client_id_prefix: str
    verifier_identifier: str
    response_uri: str
    nonce: str
    state: str
    dcql_query: dict[str, Any]
    transaction_data: tuple[str, ...] = ()
    transactions: tuple[dict[str, Any], ...] = ()
    client_name: str = ""
    contacts: tuple[str, ...] = ()
    purpose: str = ""
    signed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    response_mode: str = "direct_post"
    # direct_post.jwt: the verifier's public encryption JWK and the chosen enc.
    encryption_jwk: dict[str, Any] | None = None
    encryption_enc: str = ""

    @property
    def verifier_name(self) -> str:
        return self.client_name or self.verifier_identifier


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_endpoint(url: str, what: str) -> str:
    """https, or http to loopback only (a developer's machine, the tests)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise _invalid(f"{what} missing or too long")
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if not host or parts.username or parts.password:
        raise _invalid(f"{what} is not a plain URL")
    if parts.scheme != "https" and not (parts.scheme == "http" and _loopback(host)):
        raise _invalid(f"{what} must be https")
    return url


def _query_params(uri: str) -> dict[str, str]:
    if not isinstance(uri, str) or len(uri) > MAX_URI_LENGTH:
        raise _invalid("request URI missing or too long")
    parts = urllib.parse.urlsplit(uri.strip())
    if parts.scheme not in SCHEMES and parts.scheme != "https":
        raise _invalid(f"not an OpenID4VP request URI (scheme {parts.scheme!r})")
    try:
        pairs = urllib.parse.parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True,
                                       max_num_fields=32)
    except ValueError as exc:
        raise TesseraError(ErrorCode.MALFORMED, "request URI query is not well formed") from exc
    params: dict[str, str] = {}
    for name, value in pairs:
        if name in params:
            raise TesseraError(ErrorCode.MALFORMED, f"parameter {name!r} repeated")
        params[name] = value
    return params


def _fetch_request_object(http: httpx.Client, request_uri: str) -> str:
    _check_endpoint(request_uri, "request_uri")
    try:
        with http.stream("GET", request_uri, follow_redirects=False,
                         headers={"Accept": "application/oauth-authz-req+jwt"}) as response:
            if response.status_code != 200:
                raise TesseraError(
                    ErrorCode.INVALID_REQUEST if response.status_code < 500
                    else ErrorCode.INTERNAL_ERROR,
                    f"request_uri answered {response.status_code}",
                )
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_REQUEST_OBJECT_BYTES:
                    raise TesseraError(ErrorCode.TOO_LARGE, "request object too large")
    except httpx.HTTPError as exc:
        raise _invalid(f"cannot fetch request_uri: {type(exc).__name__}") from exc
    try:
        return bytes(body).decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise TesseraError(ErrorCode.MALFORMED, "request object is not a compact JWS") from exc


def _verify_request_object(
    token: str, expected_client_id: str, resolver: DIDResolver, now: datetime,
) -> dict[str, Any]:
    jws = decode_unverified(token, max_bytes=MAX_REQUEST_OBJECT_BYTES)
    if jws.header.get("typ") != REQUEST_OBJECT_TYP:
        # RFC 9101 §10.8 / OpenID4VP §5: refuse a JWT minted for something else.
        raise TesseraError(ErrorCode.MALFORMED, f"request object typ must be {REQUEST_OBJECT_TYP}")
    payload = jws.payload
    client_id = payload.get("client_id")
    if client_id != expected_client_id:
        # RFC 9101 §5: the outer client_id must equal the Request Object's.
        raise _invalid("client_id of the request object differs from the request URI's")
    prefix, did = _split_client_id(client_id)
    if prefix != PREFIX_DID:
        raise _invalid("only decentralized_identifier requests are signed here")
    kid = jws.header.get("kid")
    if not isinstance(kid, str) or "#" not in kid or kid.split("#", 1)[0] != did:
        raise TesseraError(ErrorCode.KEY_NOT_FOUND, "kid must be a DID URL of the client's DID")
    document = resolver.resolve(did)
    key = None
    for relationship in ("authentication", "assertionMethod"):
        if document.has_relationship(kid, relationship):
            key = document.key(kid, relationship=relationship)
            break
    if key is None:
        raise TesseraError(ErrorCode.KEY_NOT_FOUND, "kid is not an authentication key of the DID")
    verify_signature(jws, key, {key.alg})
    exp = payload.get("exp")
    if exp is not None and (not isinstance(exp, int) or exp <= now.timestamp()):
        raise TesseraError(ErrorCode.EXPIRED, "the request has expired")
    return payload


def _split_client_id(client_id: Any) -> tuple[str, str]:
    if not isinstance(client_id, str) or not client_id:
        raise _invalid("client_id missing")
    prefix, sep, value = client_id.partition(":")
    if not sep or not value or prefix not in (PREFIX_REDIRECT_URI, PREFIX_DID):
        # §5.9.3 lists more prefixes (x509_san_dns, openid_federation …); this wallet
        # cannot authenticate those verifiers, so it refuses instead of guessing.
        raise _invalid(f"unsupported client identifier prefix in {client_id[:64]!r}")
    return prefix, value


def _json_param(params: Mapping[str, Any], name: str) -> Any:
    value = params.get(name)
    if isinstance(value, str):
        return parse_json(value, max_bytes=MAX_REQUEST_OBJECT_BYTES)
    return value


def _build(params: Mapping[str, Any], *, signed: bool,
           known_types: Collection[str]) -> VerifierRequest:
    prefix, identifier = _split_client_id(params.get("client_id"))
    if params.get("response_type") != "vp_token":
        raise _invalid("response_type must be vp_token")
    response_mode = params.get("response_mode")
    if response_mode not in RESPONSE_MODES:
        raise _invalid("response_mode must be direct_post or direct_post.jwt")
    response_uri = _check_endpoint(params.get("response_uri"), "response_uri")  # type: ignore[arg-type]
    if prefix == PREFIX_REDIRECT_URI and response_uri != identifier:
        # §5.9.3: with redirect_uri, the identifier is where the response goes.
        raise _invalid("redirect_uri client_id differs from response_uri")
    if prefix == PREFIX_DID and not signed:
        raise _invalid("a decentralized_identifier request must be signed (§5.9.3)")
    if "redirect_uri" in params:
        raise _invalid("direct_post requests carry response_uri, not redirect_uri (§8.2)")
    nonce, state = params.get("nonce"), params.get("state")
    if not isinstance(nonce, str) or len(nonce) < 16:
        raise _invalid("nonce missing or too short")
    if not isinstance(state, str) or not state:
        raise _invalid("state missing")
    dcql = _json_param(params, "dcql_query")
    if not isinstance(dcql, dict):
        raise _invalid("dcql_query missing")
    query = Query.parse(dcql)
    tx_raw = _json_param(params, "transaction_data")
    transaction_data: tuple[str, ...] = ()
    transactions: list[dict[str, Any]] = []
    if tx_raw is not None:
        if not isinstance(tx_raw, list) or not tx_raw or not all(
            isinstance(t, str) for t in tx_raw
        ) or len(tx_raw) > 8:
            raise _invalid("transaction_data must be an array of 1..8 strings")
        ids = {c.id for c in query.credentials}
        for item in tx_raw:
            body = parse_json_object(b64url_decode(item, max_len=16 * 1024))
            tx_ids = body.get("credential_ids")
            if body.get("type") not in known_types:
                # §5.1: unknown transaction types MUST make the wallet refuse.
                raise _invalid(f"unknown transaction data type {str(body.get('type'))[:80]!r}")
            if not isinstance(tx_ids, list) or not tx_ids or not set(map(str, tx_ids)) <= ids:
                raise _invalid("transaction data credential_ids do not name query credentials")
            algs = body.get("transaction_data_hashes_alg")
            if algs is not None and (not isinstance(algs, list) or "sha-256" not in algs):
                raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                                   "transaction data hash must allow sha-256")
            transactions.append(body)
        transaction_data = tuple(tx_raw)
    metadata = _json_param(params, "client_metadata") or {}
    if not isinstance(metadata, dict):
        raise _invalid("client_metadata must be an object")
    name = metadata.get("client_name", "")
    contacts = metadata.get("contacts", [])
    if not isinstance(name, str) or not isinstance(contacts, list) or not all(
        isinstance(c, str) for c in contacts
    ):
        raise _invalid("client_metadata client_name/contacts are malformed")
    purpose = params.get("purpose", "")
    encryption_jwk, encryption_enc = (
        _encryption_choice(metadata) if response_mode == "direct_post.jwt" else (None, "")
    )
    return VerifierRequest(
        client_id=str(params["client_id"]), client_id_prefix=prefix,
        verifier_identifier=identifier, response_uri=response_uri, nonce=nonce, state=state,
        dcql_query=dcql, transaction_data=transaction_data, transactions=tuple(transactions),
        client_name=name[:200], contacts=tuple(c[:200] for c in contacts[:5]),
        purpose=purpose[:500] if isinstance(purpose, str) else "", signed=signed,
        response_mode=str(response_mode), encryption_jwk=encryption_jwk,
        encryption_enc=encryption_enc,
    )


def _encryption_choice(metadata: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The verifier's response encryption key and ``enc`` (§8.3), or ``invalid_request``."""
    jwks = metadata.get("jwks")
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise _invalid("direct_post.jwt without client_metadata.jwks")
    chosen = None
    for key in keys[:8]:
        if (isinstance(key, dict) and key.get("kty") == "EC" and key.get("crv") == "P-256"
                and key.get("use", "enc") == "enc" and key.get("alg") == "ECDH-ES"
                and "d" not in key):
            chosen = key
            break
    if chosen is None:
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                           "no ECDH-ES P-256 encryption key in client_metadata.jwks")
    # A point off the curve (an invalid-curve attack on ECDH) fails here, before
    # the member is asked anything.
    public_key_from_jwk({k: chosen.get(k) for k in ("kty", "crv", "x", "y")})
    offered = metadata.get("encrypted_response_enc_values_supported", ["A128GCM"])
    if not isinstance(offered, list):
        raise _invalid("encrypted_response_enc_values_supported must be an array")
    for enc in ENC_PREFERENCE:
        if enc in offered:
            return dict(chosen), enc
    raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                       "the verifier offers no content encryption this wallet supports")


def parse_request(
    uri: str, *, http: httpx.Client | None = None, resolver: DIDResolver | None = None,
    now: datetime | None = None, known_transaction_types: Collection[str] = KNOWN_TRANSACTION_TYPES,
) -> VerifierRequest:
    """Read and check an Authorization Request given as a URI (by value or reference)."""
    params: dict[str, Any] = dict(_query_params(uri))
    when = now or datetime.now(UTC)
    resolver = resolver or Resolver()
    if "request_uri" in params or "request" in params:
        if "request_uri" in params and "request" in params:
            raise _invalid("request and request_uri are exclusive")
        method = params.get("request_uri_method", "get")
        if method != "get":
            raise _invalid("only request_uri_method get is supported")
        if "request" in params:
            token = params["request"]
        else:
            own = http or httpx.Client(timeout=10.0)
            try:
                token = _fetch_request_object(own, params["request_uri"])
            finally:
                if http is None:
                    own.close()
        payload = _verify_request_object(token, params.get("client_id", ""), resolver, when)
        return _build(payload, signed=True, known_types=known_transaction_types)
    return _build(params, signed=False, known_types=known_transaction_types)


def respond(
    wallet: Wallet, request: VerifierRequest, *, consent: ConsentCallback,
    http: httpx.Client | None = None, allow_reuse: bool = False, top_up: bool = True,
    issuer_http: httpx.Client | None = None,
) -> dict[str, Any]:
    """Ask the member, then post the vp_token (or ``access_denied``) to the verifier.

    Returns the verifier's JSON answer. Raises ``consent_denied`` when the
    member says no (after telling the verifier), and the verifier's problem
    code when it refuses the presentation.

    One-time credentials: a used-up pool is refilled with its refresh token
    before the member is asked (``top_up``, through ``issuer_http``, default
    ``http``); ``pool_empty`` if that fails, unless ``allow_reuse``. After the
    answer is accepted, pools left with fewer than ``wallet.top_up_below``
    unused credentials are topped up; a failure there only leaves the pool
    low (the presentation has been made), it is not raised.
    """
    own = http or httpx.Client(timeout=10.0)
    issuers = issuer_http or own
    refill = None
    if top_up:
        from holder._openid4vci import top_up as _top_up

        def refill(grant: PoolGrant) -> object:
            return _top_up(wallet, grant, http_client=issuers)
    try:
        try:
            token = wallet.present(
                dcql=request.dcql_query, audience=request.client_id, nonce=request.nonce,
                consent=consent, verifier_name=request.verifier_name, purpose=request.purpose,
                transaction_data=request.transaction_data, allow_reuse=allow_reuse,
                refill=refill,
            )
        except TesseraError as exc:
            if exc.code in (ErrorCode.CONSENT_DENIED, ErrorCode.POOL_EMPTY):
                # The refusal stands even if the till cannot be told.
                with contextlib.suppress(TesseraError):
                    _post(own, request.response_uri, _response_form(request, {
                        "error": "access_denied", "error_description": "the member declined"
                        if exc.code == ErrorCode.CONSENT_DENIED else "nothing to share",
                        "state": request.state,
                    }))
            raise
        answer = _post(own, request.response_uri, _response_form(
            request, {"vp_token": token, "state": request.state}))
        if refill is not None:
            for grant in wallet.grants_running_low():
                with contextlib.suppress(TesseraError):
                    refill(grant)
        return answer
    finally:
        if http is None:
            own.close()


def encrypt_response(request: VerifierRequest, params: Mapping[str, Any]) -> str:
    """The compact JWE of a ``direct_post.jwt`` answer (§8.3): unsigned, ``kid`` copied."""
    if request.encryption_jwk is None or not request.encryption_enc:
        raise _invalid("this request did not ask for an encrypted response")
    header: dict[str, str] = {"alg": "ECDH-ES", "enc": request.encryption_enc}
    if isinstance(request.encryption_jwk.get("kid"), str):
        header["kid"] = request.encryption_jwk["kid"]
    token = _jwe.JWE(json.dumps(dict(params), separators=(",", ":")).encode(),
                     protected=json.dumps(header))
    token.add_recipient(_jwk.JWK(**request.encryption_jwk))
    return str(token.serialize(compact=True))


def _response_form(request: VerifierRequest, params: Mapping[str, Any]) -> dict[str, str]:
    if request.response_mode == "direct_post.jwt":
        return {"response": encrypt_response(request, params)}
    return {k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
            for k, v in params.items()}


def _post(http: httpx.Client, url: str, form: dict[str, str]) -> dict[str, Any]:
    try:
        response = http.post(url, data=form, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise _invalid(f"cannot reach the verifier: {type(exc).__name__}") from exc
    try:
        body = parse_json_object(response.content) if response.content else {}
    except TesseraError:
        body = {}
    if response.status_code != 200:
        raise TesseraError.from_problem(
            body, fallback=f"verifier answered {response.status_code}")
    return body
