"""OpenID4VP 1.0, verifier side: authorization requests and direct_post responses.

A request carries a DCQL query (§6), a ``state`` and a single-use ``nonce``
(the nonce is recorded by :meth:`verifier.Verifier.create_request`), asks
for ``response_type=vp_token`` with ``response_mode=direct_post`` (§8.2),
and names the verifier with a Client Identifier Prefix (§5.9):

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
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

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
    "AuthorizationRequest",
    "DirectPostResponse",
    "OpenID4VPVerifier",
    "decode_transaction_data",
    "encode_transaction_data",
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
            "response_mode": "direct_post",
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
        """``openid4vp://?client_id=…&request_uri=…`` (RFC 9101 §5.2, §5.10 method get)."""
        return scheme + "?" + urllib.parse.urlencode(
            {"client_id": self.client_id, "request_uri": request_uri}
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
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthorizationRequest:
        return cls(
            client_id=str(data["client_id"]),
            response_uri=str(data["response_uri"]),
            presentation=PresentationRequest.from_dict(data["presentation"]),
            client_metadata=dict(data.get("client_metadata") or {}),
            purpose=str(data.get("purpose") or ""),
        )


@dataclass(frozen=True)
class DirectPostResponse:
    """A parsed ``direct_post`` body: a ``vp_token`` or an error (§8.2, §8.5)."""

    state: str
    vp_token: dict[str, Any] | None
    error: str | None = None
    error_description: str | None = None


def parse_direct_post(body: bytes | str) -> DirectPostResponse:
    """Parse an ``application/x-www-form-urlencoded`` Authorization Response."""
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
    state = fields.get("state")
    if not state:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "response has no state")
    error = fields.get("error")
    if error is not None:
        if "vp_token" in fields:
            raise TesseraError(ErrorCode.MALFORMED, "response has both error and vp_token")
        return DirectPostResponse(state, None, error, fields.get("error_description"))
    token_text = fields.get("vp_token")
    if not token_text:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "response has neither vp_token nor error")
    token = parse_json(token_text, max_bytes=MAX_RESPONSE_BYTES)
    if not isinstance(token, dict) or not token:
        # §8.1: a JSON object keyed by DCQL credential query id.
        raise TesseraError(ErrorCode.MALFORMED, "vp_token must be a JSON object keyed by query id")
    return DirectPostResponse(state, token)


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
        purpose: str = "",
    ) -> AuthorizationRequest:
        query = Query.parse(dcql)
        for item in transaction_data or ():
            decode_transaction_data(item, query)
        if transaction_data and len(transaction_data) > MAX_TRANSACTION_DATA:
            raise TesseraError(ErrorCode.TOO_LARGE, "too many transaction_data items")
        presentation = self.verifier.create_request(
            audience=self.client_id, dcql=dcql, transaction_data=transaction_data,
        )
        return AuthorizationRequest(
            client_id=self.client_id, response_uri=self.response_uri,
            presentation=presentation, client_metadata=dict(self.client_metadata),
            purpose=purpose,
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
