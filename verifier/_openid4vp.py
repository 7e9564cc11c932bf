"""OpenID4VP 1.0, verifier side: authorization requests and direct_post responses.

A request carries a DCQL query (§6), a ``state`` and a single-use ``nonce``
(the nonce is recorded by :meth:`verifier.Verifier.create_request`), asks
for ``response_type=vp_token`` with ``response_mode=direct_post`` (§8.2),
or ``response_mode=direct_post.jwt`` (§8.3: the answer is a JWE encrypted
to a per-request ECDH-ES P-256 key the verifier publishes in
``client_metadata.jwks``), and names the verifier with a Client Identifier
Prefix (§5.9):

* ``redirect_uri:<response_uri>``: the request MUST NOT be signed (§5.9.3), so
  it travels by value, and the original identifier is the response URI;
* ``decentralized_identifier:<did>``: the request MUST be signed with a key
  of that DID, named by a ``kid`` DID URL (§5.9.3); it travels as a Request
  Object (``typ`` ``oauth-authz-req+jwt``, RFC 9101 §10.8) by value
  (``request``) or by reference (``request_uri``, RFC 9101 §5.2).

The KB-JWT's ``aud`` is the full Client Identifier, prefix included
(Appendix B.3.6). ``transaction_data`` items are base64url JSON objects with
``type`` and ``credential_ids`` (§5.1, §8.4); the KB-JWT carries their hashes.

Nothing here imports a web framework: the service in :mod:`verifier._service`
is a thin layer over these functions.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from jwcrypto import jwe as _jwe
from jwcrypto import jwk as _jwk
from jwcrypto.common import JWException

from tessera import credentials
from tessera.dcql import Query
from tessera.encoding import b64url_decode, b64url_encode, parse_json, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.jose import sign_compact
from tessera.typing import Signer
from verifier._sdk import PresentationRequest, VerificationResult, Verifier

__all__ = [
    "AUTHORIZATION_SCHEME",
    "POINTS_REDEMPTION_TYPE",
    "PREFIX_DID",
    "PREFIX_REDIRECT_URI",
    "REQUEST_OBJECT_TYP",
    "RESPONSE_MODES",
    "AuthorizationRequest",
    "DirectPostResponse",
    "EncryptedResponse",
    "OpenID4VPVerifier",
    "decode_transaction_data",
    "decrypt_response",
    "encode_transaction_data",
    "new_response_key",
    "parse_authorization_response",
    "parse_direct_post",
    "split_client_id",
]

AUTHORIZATION_SCHEME: Final = "openid4vp://"
PREFIX_REDIRECT_URI: Final = "redirect_uri"
PREFIX_DID: Final = "decentralized_identifier"
REQUEST_OBJECT_TYP: Final = "oauth-authz-req+jwt"
# §5.8 static discovery: the audience of a Request Object sent to any wallet.
SELF_ISSUED_AUDIENCE: Final = "https://self-issued.me/v2"
POINTS_REDEMPTION_TYPE: Final = "https://w3id.org/tessera/transaction/points-redemption/v1"
MAX_RESPONSE_BYTES: Final = 512 * 1024
MAX_TRANSACTION_DATA: Final = 8
ResponseMode = Literal["direct_post", "direct_post.jwt"]
RESPONSE_MODES: Final[tuple[str, ...]] = ("direct_post", "direct_post.jwt")
# §8.3: ECDH-ES (direct key agreement, no key wrapping) on P-256, and the
# content encryption algorithms we accept; A128GCM is the default a wallet
# uses when client_metadata names none.
RESPONSE_ENC_ALG: Final = "ECDH-ES"
RESPONSE_ENC_VALUES: Final[tuple[str, ...]] = ("A128GCM", "A256GCM")


def split_client_id(client_id: str) -> tuple[str, str]:
    """``(prefix, original identifier)`` of a prefixed Client Identifier (§5.9.1)."""
    if not isinstance(client_id, str) or not 0 < len(client_id) <= 2048:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "client_id missing or too long")
    prefix, sep, value = client_id.partition(":")
    if not sep or prefix not in (PREFIX_REDIRECT_URI, PREFIX_DID) or not value:
        raise TesseraError(
            ErrorCode.INVALID_REQUEST,
            f"client_id prefix must be {PREFIX_REDIRECT_URI!r} or {PREFIX_DID!r}",
        )
    return prefix, value


def encode_transaction_data(
    type_: str, credential_ids: Sequence[str], **details: Any
) -> str:
    """One ``transaction_data`` item: base64url of a JSON object (§5.1)."""
    if not type_ or not credential_ids:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "transaction data needs type and ids")
    body = {"type": type_, "credential_ids": list(credential_ids), **details}
    return b64url_encode(json.dumps(body, separators=(",", ":")).encode())


def decode_transaction_data(item: str, query: Query | None = None) -> dict[str, Any]:
    """Decode and check one item; its ``credential_ids`` must name DCQL queries."""
    body = parse_json_object(b64url_decode(item, max_len=16 * 1024))
    type_, ids = body.get("type"), body.get("credential_ids")
    if not isinstance(type_, str) or not type_:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "transaction_data without a type")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise TesseraError(ErrorCode.INVALID_REQUEST, "transaction_data credential_ids invalid")
    if query is not None and not set(ids) <= {c.id for c in query.credentials}:
        raise TesseraError(
            ErrorCode.INVALID_REQUEST, "transaction_data names a credential not in the query"
        )
    algs = body.get("transaction_data_hashes_alg")
    if algs is not None and (not isinstance(algs, list) or "sha-256" not in algs):
        # sha-256 is the only hash we compute; a verifier demanding another would
        # never accept our answer.
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, "transaction data hash must allow "
                           "sha-256")
    return body


@dataclass(frozen=True)
class AuthorizationRequest:
    """An OpenID4VP Authorization Request and the presentation request behind it."""

    client_id: str
    response_uri: str
    presentation: PresentationRequest
    client_metadata: dict[str, Any] = field(default_factory=dict)
    purpose: str = ""
    response_mode: ResponseMode = "direct_post"
    # direct_post.jwt only: the private half of the per-request encryption key
    # (a JWK with ``d``). It is stored with the request because the answer may
    # reach another instance; it decrypts this one response and nothing else.
    response_key: dict[str, str] | None = field(default=None, repr=False)

    @property
    def nonce(self) -> str:
        return self.presentation.nonce

    @property
    def state(self) -> str:
        return self.presentation.state

    @property
    def dcql_query(self) -> dict[str, Any]:
        return dict(self.presentation.dcql or {})

    @property
    def transaction_data(self) -> tuple[str, ...]:
        return self.presentation.transaction_data or ()

    def parameters(self) -> dict[str, Any]:
        """The Authorization Request parameters (§5.1, §5.2) as JSON values."""
        params: dict[str, Any] = {
            "response_type": "vp_token",
            "client_id": self.client_id,
            "response_mode": self.response_mode,
            "response_uri": self.response_uri,
            "nonce": self.nonce,
            "state": self.state,
            "dcql_query": self.dcql_query,
        }
        if self.client_metadata:
            params["client_metadata"] = self.client_metadata
        if self.transaction_data:
            params["transaction_data"] = list(self.transaction_data)
        if self.purpose:
            # An extension parameter (RFC 6749 §3.1: unknown ones are ignored):
            # the reason shown on the member's consent screen.
            params["purpose"] = self.purpose
        return params

    def uri_by_value(self, scheme: str = AUTHORIZATION_SCHEME) -> str:
        """``openid4vp://?…`` with every parameter in the query (unsigned requests only)."""
        if split_client_id(self.client_id)[0] != PREFIX_REDIRECT_URI:
            raise TesseraError(
                ErrorCode.INVALID_REQUEST, "a decentralized_identifier request must be signed"
            )
        query = {
            k: v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))
            for k, v in self.parameters().items()
        }
        return scheme + "?" + urllib.parse.urlencode(query)

    def uri_by_reference(self, request_uri: str, scheme: str = AUTHORIZATION_SCHEME) -> str:
        """``openid4vp://?client_id=…&request_uri=…`` (RFC 9101 §5.2, §5.10 method get).

        ``:`` and ``/`` stay unescaped: RFC 3986 §3.4 allows both in a query,
        and escaping them (``%3A``, ``%2F``) would triple their cost in the QR
        code. ``%`` (a did:web port) and ``&``, ``=``, ``#``, ``+`` are escaped.
        """
        return scheme + "?" + urllib.parse.urlencode(
            {"client_id": self.client_id, "request_uri": request_uri}, safe=":/"
        )

    def request_object(self, signer: Signer, *, now: datetime | None = None) -> str:
        """The signed Request Object (RFC 9101), ``typ`` ``oauth-authz-req+jwt``."""
        prefix, did = split_client_id(self.client_id)
        if prefix != PREFIX_DID:
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               "redirect_uri requests must not be signed (§5.9.3)")
        kid = signer.key_id
        if not kid or kid.split("#", 1)[0] != did or "#" not in kid:
            raise TesseraError(ErrorCode.KEY_NOT_FOUND,
                               "the signing key must be a DID URL of the client's DID")
        issued = now or datetime.now(UTC)
        payload = {
            **self.parameters(),
            "iss": self.client_id,
            "aud": SELF_ISSUED_AUDIENCE,
            "iat": int(issued.timestamp()),
            "exp": int(self.presentation.expires_at.timestamp()),
        }
        return sign_compact({"typ": REQUEST_OBJECT_TYP, "kid": kid}, payload, signer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "response_uri": self.response_uri,
            "presentation": self.presentation.to_dict(),
            "client_metadata": self.client_metadata,
            "purpose": self.purpose,
            "response_mode": self.response_mode,
            "response_key": self.response_key,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthorizationRequest:
        return cls(
            client_id=str(data["client_id"]),
            response_uri=str(data["response_uri"]),
            presentation=PresentationRequest.from_dict(data["presentation"]),
            client_metadata=dict(data.get("client_metadata") or {}),
            purpose=str(data.get("purpose") or ""),
            response_mode=_response_mode(data.get("response_mode") or "direct_post"),
            response_key=dict(data["response_key"]) if data.get("response_key") else None,
        )


def _response_mode(value: Any) -> ResponseMode:
    if value not in RESPONSE_MODES:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"response_mode must be one of {', '.join(RESPONSE_MODES)}")
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class DirectPostResponse:
    """A parsed Authorization Response: a ``vp_token`` or an error (§8.2, §8.5).

    ``encrypted`` says it arrived as a ``direct_post.jwt`` JWE (§8.3).
    """

    state: str
    vp_token: dict[str, Any] | None
    error: str | None = None
    error_description: str | None = None
    encrypted: bool = False


@dataclass(frozen=True)
class EncryptedResponse:
    """A ``direct_post.jwt`` body before decryption: the JWE and its protected header.

    ``kid`` names the per-request key it was encrypted to, which is how the
    response endpoint finds the request before it can read anything else.
    """

    jwe: str
    kid: str
    header: dict[str, Any]


def _form_fields(body: bytes | str) -> dict[str, str]:
    raw = body.encode() if isinstance(body, str) else body
    if len(raw) > MAX_RESPONSE_BYTES:
        raise TesseraError(ErrorCode.TOO_LARGE, "authorization response too large")
    try:
        text = raw.decode("ascii")
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                                       max_num_fields=16)
    except (UnicodeDecodeError, ValueError) as exc:
        raise TesseraError(ErrorCode.MALFORMED, "not a form-encoded response") from exc
    fields: dict[str, str] = {}
    for name, value in pairs:
        if name in fields:
            # RFC 6749 §3.1: parameters MUST NOT be included more than once.
            raise TesseraError(ErrorCode.MALFORMED, f"parameter {name!r} repeated")
        fields[name] = value
    return fields


def _response_from(fields: Mapping[str, Any], *, encrypted: bool) -> DirectPostResponse:
    state = fields.get("state")
    if not state or not isinstance(state, str):
        raise TesseraError(ErrorCode.INVALID_REQUEST, "response has no state")
    error = fields.get("error")
    if error is not None:
        if "vp_token" in fields:
            raise TesseraError(ErrorCode.MALFORMED, "response has both error and vp_token")
        description = fields.get("error_description")
        return DirectPostResponse(state, None, str(error)[:200],
                                  None if description is None else str(description)[:500],
                                  encrypted=encrypted)
    token: Any = fields.get("vp_token")
    if not token:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "response has neither vp_token nor error")
    if isinstance(token, str):
        # Form encoding carries the JSON as a string; inside a JWE payload it
        # is already a JSON value (§8.3.1).
        token = parse_json(token, max_bytes=MAX_RESPONSE_BYTES)
    if not isinstance(token, dict) or not token:
        # §8.1: a JSON object keyed by DCQL credential query id.
        raise TesseraError(ErrorCode.MALFORMED, "vp_token must be a JSON object keyed by query id")
    return DirectPostResponse(state, token, encrypted=encrypted)


def parse_authorization_response(body: bytes | str) -> DirectPostResponse | EncryptedResponse:
    """Parse a form-encoded Authorization Response, plain (§8.2) or encrypted (§8.3).

    An encrypted one is returned undecrypted: which key opens it depends on
    the request its ``kid`` names.
    """
    fields = _form_fields(body)
    if "response" not in fields:
        return _response_from(fields, encrypted=False)
    if set(fields) != {"response"}:
        # §8.3: every response parameter travels inside the JWE.
        raise TesseraError(ErrorCode.MALFORMED,
                           "an encrypted response carries only the response parameter")
    token = fields["response"]
    parts = token.split(".")
    if len(parts) != 5:
        raise TesseraError(ErrorCode.MALFORMED, "response is not a compact JWE")
    header = parse_json_object(b64url_decode(parts[0], max_len=4096))
    kid = header.get("kid")
    if not isinstance(kid, str) or not 0 < len(kid) <= 128:
        raise TesseraError(ErrorCode.MALFORMED, "encrypted response without a usable kid")
    return EncryptedResponse(token, kid, header)


def parse_direct_post(body: bytes | str) -> DirectPostResponse:
    """Parse an unencrypted ``application/x-www-form-urlencoded`` Authorization Response."""
    parsed = parse_authorization_response(body)
    if isinstance(parsed, EncryptedResponse):
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           "an encrypted response needs its request to be decrypted")
    return parsed


def new_response_key() -> tuple[dict[str, str], dict[str, str]]:
    """A fresh P-256 key for one request: ``(public JWK for client_metadata, private JWK)``."""
    key = _jwk.JWK.generate(kty="EC", crv="P-256")
    kid = secrets.token_urlsafe(16)
    private: dict[str, str] = json.loads(key.export_private())
    public: dict[str, str] = json.loads(key.export_public())
    extra = {"kid": kid, "use": "enc", "alg": RESPONSE_ENC_ALG}
    return {**public, **extra}, {**private, **extra}


def decrypt_response(response: EncryptedResponse,
                     request: AuthorizationRequest) -> DirectPostResponse:
    """Open a ``direct_post.jwt`` answer with the request's own key (§8.3).

    Only ``ECDH-ES`` with an advertised ``enc`` and the request's ``kid`` are
    accepted; no compression (a small JWE must not inflate into a large one).
    Anything that does not decrypt (another key, a tampered byte) is
    ``malformed``: nothing in it can be trusted, not even its state.
    """
    key = request.response_key
    if request.response_mode != "direct_post.jwt" or not key:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "this request asked for a plain answer")
    header = response.header
    advertised = request.client_metadata.get("encrypted_response_enc_values_supported") or [
        "A128GCM"]
    if header.get("alg") != RESPONSE_ENC_ALG or header.get("enc") not in advertised:
        raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                           f"encrypted responses use {RESPONSE_ENC_ALG} with "
                           f"{' or '.join(advertised)}")
    if response.kid != key.get("kid"):
        raise TesseraError(ErrorCode.KEY_NOT_FOUND, "the response is encrypted to another key")
    if "zip" in header or header.get("crit"):
        raise TesseraError(ErrorCode.MALFORMED, "compressed or critical-header JWEs are refused")
    token = _jwe.JWE()
    token.allowed_algs = [RESPONSE_ENC_ALG, *advertised]
    try:
        token.deserialize(response.jwe, key=_jwk.JWK(**key))
        payload = token.payload
    except (JWException, ValueError, TypeError, KeyError) as exc:
        raise TesseraError(ErrorCode.MALFORMED, "the encrypted response does not decrypt "
                           "with this request's key") from exc
    body = parse_json_object(payload, max_bytes=MAX_RESPONSE_BYTES)
    return _response_from(body, encrypted=True)


def _unasked_disclosures(vp_token: Mapping[str, Any], query: Query) -> list[str]:
    """Top-level claims disclosed although the query did not name them."""
    visible = set().union(*(t.always_visible for t in credentials.CREDENTIAL_TYPES))
    extra: list[str] = []
    for query_id, items in vp_token.items():
        try:
            asked = query.by_id(str(query_id)).asked_names() | visible
        except TesseraError:
            continue  # an unasked credential id is reported by Verifier.verify
        for item in items if isinstance(items, list) else [items]:
            if not isinstance(item, str):
                continue
            try:
                names = sd_jwt.disclosed_claim_names(item)
            except TesseraError:
                continue  # malformed: Verifier.verify says so
            extra.extend(sorted(set(names) - asked))
    return extra


class OpenID4VPVerifier:
    """Builds OpenID4VP requests and checks the answers, over a :class:`Verifier`.

    ``client_id`` carries its prefix. With ``redirect_uri:`` it must equal
    ``redirect_uri:<response_uri>``; with ``decentralized_identifier:`` a
    ``signer`` whose ``key_id`` is a DID URL of that DID signs Request Objects.
    ``client_name`` and ``contacts`` go to the wallet in ``client_metadata``
    (RFC 7591 §2 names) for its consent screen.
    """

    def __init__(
        self, verifier: Verifier, *, client_id: str, response_uri: str,
        signer: Signer | None = None, client_name: str = "", contacts: Sequence[str] = (),
    ) -> None:
        prefix, value = split_client_id(client_id)
        if prefix == PREFIX_REDIRECT_URI and value != response_uri:
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               "a redirect_uri client identifier must be the response_uri")
        if prefix == PREFIX_DID and (
            signer is None or not signer.key_id or signer.key_id.split("#", 1)[0] != value
        ):
            raise TesseraError(ErrorCode.KEY_NOT_FOUND,
                               "a decentralized_identifier verifier needs a signer whose "
                               "key_id is a DID URL of its DID")
        self.verifier = verifier
        self.client_id = client_id
        self.prefix = prefix
        self.response_uri = response_uri
        self.signer = signer
        metadata: dict[str, Any] = {}
        if client_name:
            metadata["client_name"] = client_name
        if contacts:
            metadata["contacts"] = list(contacts)
        self.client_metadata = metadata

    def create_request(
        self, dcql: Mapping[str, Any], *, transaction_data: Sequence[str] | None = None,
        purpose: str = "", response_mode: str = "direct_post",
    ) -> AuthorizationRequest:
        """A fresh request; ``response_mode="direct_post.jwt"`` asks for an encrypted answer."""
        mode = _response_mode(response_mode)
        query = Query.parse(dcql)
        for item in transaction_data or ():
            decode_transaction_data(item, query)
        if transaction_data and len(transaction_data) > MAX_TRANSACTION_DATA:
            raise TesseraError(ErrorCode.TOO_LARGE, "too many transaction_data items")
        presentation = self.verifier.create_request(
            audience=self.client_id, dcql=dcql, transaction_data=transaction_data,
        )
        metadata = dict(self.client_metadata)
        response_key = None
        if mode == "direct_post.jwt":
            # A key per request (§8.3 allows any; an ephemeral one means a leaked
            # session store row exposes one answer, never the next).
            public, response_key = new_response_key()
            metadata["jwks"] = {"keys": [public]}
            metadata["encrypted_response_enc_values_supported"] = list(RESPONSE_ENC_VALUES)
        return AuthorizationRequest(
            client_id=self.client_id, response_uri=self.response_uri,
            presentation=presentation, client_metadata=metadata,
            purpose=purpose, response_mode=mode, response_key=response_key,
        )

    def request_object(self, request: AuthorizationRequest, *, now: datetime | None = None) -> str:
        if self.signer is None:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "this verifier does not sign requests")
        return request.request_object(self.signer, now=now)

    def verify_response(
        self, response: DirectPostResponse, request: AuthorizationRequest, *,
        now: datetime | None = None,
    ) -> VerificationResult:
        """Check an Authorization Response against its request; never raises.

        A wallet's error (``access_denied`` when the member declines, §8.5)
        becomes ``consent_denied``. Claims disclosed but not asked for make
        the answer ``disclosure_mismatch``: the verifier keeps none of them.
        """
        if response.state != request.state:
            return VerificationResult.failure(ErrorCode.INVALID_REQUEST)
        if request.response_mode == "direct_post.jwt" and not response.encrypted:
            # §8.3: the verifier asked for encryption; a plain answer may have
            # been read on the way, so it is not accepted.
            return VerificationResult.failure(ErrorCode.INVALID_REQUEST)
        if response.error is not None:
            code = (ErrorCode.CONSENT_DENIED if response.error == "access_denied"
                    else ErrorCode.INVALID_REQUEST)
            return VerificationResult.failure(code)
        assert response.vp_token is not None
        result = self.verifier.verify(response.vp_token, request=request.presentation, now=now)
        try:
            extra = _unasked_disclosures(response.vp_token, Query.parse(request.dcql_query))
        except TesseraError as exc:
            return VerificationResult.failure(*result.errors, exc.code)
        if extra:
            return VerificationResult(
                errors=tuple(dict.fromkeys([*result.errors, str(ErrorCode.DISCLOSURE_MISMATCH)])),
                credentials=result.credentials, claims={},
            )
        return result
