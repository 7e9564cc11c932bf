"""The wallet side of OpenID4VP: reading request URIs, refusing forgeries, answering."""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path

import httpx
import pytest

from holder import ConsentRequest, Wallet
from holder._openid4vp import parse_request, respond
from tessera.credentials import MEMBERSHIP
from tessera.dcql import claims_query
from tessera.did import Resolver, did_jwk, did_key
from tessera.encoding import b64url_decode, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import sign_compact
from tessera.keys import LocalSigner, generate_signer
from verifier import AuthorizationRequest, OpenID4VPVerifier, encode_transaction_data
from verifier._openid4vp import (
    POINTS_REDEMPTION_TYPE,
    EncryptedResponse,
    decrypt_response,
    parse_authorization_response,
)
from verifier.testing import TestIssuer, offline_verifier

BASE = "https://shop.test"
GOLD = {"credentials": [claims_query("membership", MEMBERSHIP.vct, ["tier_at_least_gold"],
                                     require_true=True)]}


class FakeShop:
    """A verifier reachable through httpx.MockTransport: request objects and direct_post."""

    def __init__(self, brand: TestIssuer, *, prefix: str = "did") -> None:
        self.key = generate_signer("ES256")
        did = did_jwk(self.key.public_key)
        self.key = self.key.with_key_id(did + "#0")
        client_id = (f"decentralized_identifier:{did}" if prefix == "did"
                     else f"redirect_uri:{BASE}/response")
        self.v = OpenID4VPVerifier(offline_verifier(brand), client_id=client_id,
                                   response_uri=f"{BASE}/response", signer=self.key,
                                   client_name="Shop & Co", contacts=["desk@shop.test"])
        self.requests: dict[str, AuthorizationRequest] = {}
        self.objects: dict[str, str] = {}
        self.results: list[tuple[str, ...]] = []
        self.bodies: list[bytes] = []

    def new(self, dcql: dict[str, object] = GOLD, **kw: object) -> str:
        req = self.v.create_request(dcql, purpose="Gold discount", **kw)  # type: ignore[arg-type]
        self.requests[req.state] = req
        self.objects["r1"] = self.v.request_object(req)
        return req.uri_by_reference(f"{BASE}/requests/r1/object")

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/requests/r1/object":
            return httpx.Response(200, text=self.objects["r1"],
                                  headers={"content-type": "application/oauth-authz-req+jwt"})
        if request.method == "POST" and request.url.path == "/response":
            self.bodies.append(request.content)
            parsed = parse_authorization_response(request.content)
            if isinstance(parsed, EncryptedResponse):
                (req,) = (r for r in self.requests.values()
                          if r.response_key and r.response_key["kid"] == parsed.kid)
                try:
                    opened = decrypt_response(parsed, req)
                except TesseraError as exc:
                    return httpx.Response(400, json={"code": exc.code.value, "detail": "x"})
                result = self.v.verify_response(opened, req)
            else:
                result = self.v.verify_response(parsed, self.requests[parsed.state])
            self.results.append(result.errors)
            if result.ok or result.errors == ("consent_denied",):
                return httpx.Response(200, json={})
            return httpx.Response(400, json={"code": result.errors[0], "detail": "refused"})
        return httpx.Response(404)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))


@pytest.fixture
def brand() -> TestIssuer:
    return TestIssuer()


@pytest.fixture
def shop(brand: TestIssuer) -> FakeShop:
    return FakeShop(brand)


@pytest.fixture
def wallet(tmp_path: Path, brand: TestIssuer) -> Wallet:
    w = Wallet.create(tmp_path / "w.wallet", "passphrase-1",
                      resolver=Resolver(documents={brand.did: brand.did_document}))
    holder = type("H", (), {"signer": w.signer})()
    w.receive(brand.issue_membership(holder, tier="gold", name="Alice"))  # type: ignore[arg-type]
    return w


def test_request_by_reference_is_fetched_and_checked(shop: FakeShop) -> None:
    uri = shop.new()
    with shop.client() as http:
        req = parse_request(uri, http=http)
    assert req.signed and req.client_id_prefix == "decentralized_identifier"
    assert req.client_id == shop.v.client_id and req.verifier_name == "Shop & Co"
    assert req.contacts == ("desk@shop.test",) and req.purpose == "Gold discount"
    assert req.response_uri == f"{BASE}/response" and req.dcql_query == GOLD


def _swap_payload(token: str, **changes: object) -> str:
    head, body, sig = token.split(".")
    payload = json.loads(b64url_decode(body))
    payload.update(changes)
    return ".".join([head, b64url_encode(json.dumps(payload).encode()), sig])


def test_tampered_request_object_is_refused(shop: FakeShop) -> None:
    uri = shop.new()
    shop.objects["r1"] = _swap_payload(shop.objects["r1"],
                                       response_uri="https://attacker.test/collect")
    with shop.client() as http, pytest.raises(TesseraError) as err:
        parse_request(uri, http=http)
    assert err.value.code == ErrorCode.INVALID_SIGNATURE


def _resign(shop: FakeShop, header: dict[str, object], signer: LocalSigner,
            **changes: object) -> None:
    body = json.loads(b64url_decode(shop.objects["r1"].split(".")[1]))
    body.update(changes)
    shop.objects["r1"] = sign_compact(header, body, signer)


def test_request_signed_by_another_did_is_refused(shop: FakeShop) -> None:
    uri = shop.new()
    mallory = generate_signer("ES256")
    mallory = mallory.with_key_id(did_key(mallory.public_key) + "#x")
    _resign(shop, {"typ": "oauth-authz-req+jwt"}, mallory)
    with shop.client() as http, pytest.raises(TesseraError) as err:
        parse_request(uri, http=http)
    assert err.value.code == ErrorCode.KEY_NOT_FOUND


def test_client_id_must_match_the_request_object(shop: FakeShop) -> None:
    uri = shop.new()
    mallory = generate_signer("ES256")
    did = did_jwk(mallory.public_key)
    _resign(shop, {"typ": "oauth-authz-req+jwt"}, mallory.with_key_id(did + "#0"),
            client_id=f"decentralized_identifier:{did}")
    with shop.client() as http, pytest.raises(TesseraError) as err:
        parse_request(uri, http=http)
    assert err.value.code == ErrorCode.INVALID_REQUEST


def test_request_object_needs_its_typ(shop: FakeShop) -> None:
    uri = shop.new()
    _resign(shop, {"typ": "JWT"}, shop.key)
    with shop.client() as http, pytest.raises(TesseraError) as err:
        parse_request(uri, http=http)
    assert err.value.code == ErrorCode.MALFORMED


def test_alg_none_request_object_is_refused(shop: FakeShop) -> None:
    uri = shop.new()
    head = b64url_encode(json.dumps({"alg": "none", "typ": "oauth-authz-req+jwt",
                                     "kid": shop.key.key_id}).encode())
    shop.objects["r1"] = head + "." + shop.objects["r1"].split(".")[1] + "."
    with shop.client() as http, pytest.raises(TesseraError) as err:
        parse_request(uri, http=http)
    assert err.value.code in (ErrorCode.UNSUPPORTED_ALGORITHM, ErrorCode.MALFORMED)


def test_expired_request_object_is_refused(shop: FakeShop) -> None:
    uri = shop.new()
    _resign(shop, {"typ": "oauth-authz-req+jwt"}, shop.key, exp=1000)
    with shop.client() as http, pytest.raises(TesseraError) as err:
        parse_request(uri, http=http)
    assert err.value.code == ErrorCode.EXPIRED


def test_did_request_by_value_unsigned_is_refused(shop: FakeShop) -> None:
    req = shop.v.create_request(GOLD)
    params = {k: v if isinstance(v, str) else json.dumps(v)
              for k, v in req.parameters().items()}
    with pytest.raises(TesseraError) as err:
        parse_request("openid4vp://?" + urllib.parse.urlencode(params))
    assert err.value.code == ErrorCode.INVALID_REQUEST


def test_signed_request_by_value_is_accepted(shop: FakeShop) -> None:
    req = shop.v.create_request(GOLD)
    uri = "openid4vp://?" + urllib.parse.urlencode(
        {"client_id": req.client_id, "request": shop.v.request_object(req)})
    assert parse_request(uri).nonce == req.nonce


def test_redirect_uri_request_by_value(brand: TestIssuer) -> None:
    shop = FakeShop(brand, prefix="redirect_uri")
    req = shop.v.create_request(GOLD)
    parsed = parse_request(req.uri_by_value())
    assert not parsed.signed and parsed.verifier_identifier == f"{BASE}/response"
    # A response_uri elsewhere than the identifier is refused (§5.9.3).
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.uri_by_value()).query))
    params["response_uri"] = "https://attacker.test/collect"
    with pytest.raises(TesseraError) as err:
        parse_request("openid4vp://?" + urllib.parse.urlencode(params))
    assert err.value.code == ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("uri", [
    "https://shop.test/?client_id=x",
    "mailto:someone@example.com",
    "openid4vp://?client_id=decentralized_identifier:did:jwk:x&client_id=y",
    "openid4vp://?client_id=x509_san_dns:shop.test&response_type=vp_token",
    "openid4vp://?client_id=decentralized_identifier:did:jwk:x&request_uri=http://shop.test/r",
])
def test_bad_request_uris(uri: str) -> None:
    with pytest.raises(TesseraError):
        parse_request(uri, http=httpx.Client(transport=httpx.MockTransport(
            lambda r: httpx.Response(500))))


def test_unknown_transaction_type_is_refused(shop: FakeShop) -> None:
    uri = shop.new(transaction_data=[encode_transaction_data("urn:other:tx", ["membership"])])
    with shop.client() as http, pytest.raises(TesseraError) as err:
        parse_request(uri, http=http)
    assert err.value.code == ErrorCode.INVALID_REQUEST


def test_wallet_answers_with_consent(shop: FakeShop, wallet: Wallet) -> None:
    seen: list[ConsentRequest] = []
    with shop.client() as http:
        req = parse_request(shop.new(), http=http)
        respond(wallet, req, consent=lambda c: seen.append(c) or True, http=http)
    assert shop.results == [()]
    (item,) = seen[0].items
    assert set(item.shared) == {"program", "tier_at_least_gold"} and "name" in item.withheld
    assert seen[0].verifier_name == "Shop & Co" and seen[0].purpose == "Gold discount"
    assert wallet.consent_log()[-1].event == "shared"


def test_wallet_answers_a_transaction(shop: FakeShop, wallet: Wallet,
                                      brand: TestIssuer) -> None:
    tx = encode_transaction_data(POINTS_REDEMPTION_TYPE, ["membership"], points=500)
    with shop.client() as http:
        req = parse_request(shop.new(transaction_data=[tx]), http=http)
        assert req.transactions[0]["points"] == 500
        respond(wallet, req, consent=lambda c: c.transaction_data == [tx], http=http)
    assert shop.results == [()]


def test_declined_consent_tells_the_verifier(shop: FakeShop, wallet: Wallet) -> None:
    with shop.client() as http:
        req = parse_request(shop.new(), http=http)
        with pytest.raises(TesseraError) as err:
            respond(wallet, req, consent=lambda c: False, http=http)
    assert err.value.code == ErrorCode.CONSENT_DENIED
    assert shop.results == [("consent_denied",)]
    assert wallet.consent_log()[-1].event == "declined"


def test_withdrawn_verifier_is_refused_without_asking(shop: FakeShop, wallet: Wallet) -> None:
    wallet.withdraw(shop.v.client_id)
    asked: list[ConsentRequest] = []
    with shop.client() as http:
        req = parse_request(shop.new(), http=http)
        with pytest.raises(TesseraError) as err:
            respond(wallet, req, consent=lambda c: asked.append(c) or True, http=http)
    assert err.value.code == ErrorCode.CONSENT_DENIED and asked == []
    assert shop.results == [("consent_denied",)]


def test_verifier_refusal_surfaces_its_code(shop: FakeShop, wallet: Wallet) -> None:
    with shop.client() as http:
        req = parse_request(shop.new(), http=http)
        respond(wallet, req, consent=lambda c: True, http=http)
        with pytest.raises(TesseraError) as err:  # the same request answered twice
            respond(wallet, req, consent=lambda c: True, http=http)
    assert err.value.code == ErrorCode.REPLAYED


# -- direct_post.jwt (§8.3) ---------------------------------------------------------------------


def test_wallet_encrypts_when_asked(shop: FakeShop, wallet: Wallet) -> None:
    with shop.client() as http:
        req = parse_request(shop.new(response_mode="direct_post.jwt"), http=http)
        assert req.response_mode == "direct_post.jwt" and req.encryption_enc == "A128GCM"
        assert req.encryption_jwk is not None and "d" not in req.encryption_jwk
        respond(wallet, req, consent=lambda c: True, http=http)
    assert shop.results == [()]
    (body,) = shop.bodies
    form = dict(urllib.parse.parse_qsl(body.decode()))
    assert set(form) == {"response"}  # nothing in the clear, not even the state
    header = json.loads(b64url_decode(form["response"].split(".")[0]))
    assert header["alg"] == "ECDH-ES" and header["enc"] == "A128GCM"
    assert header["kid"] == req.encryption_jwk["kid"] and "epk" in header


def test_wallet_encrypts_its_refusal_too(shop: FakeShop, wallet: Wallet) -> None:
    with shop.client() as http:
        req = parse_request(shop.new(response_mode="direct_post.jwt"), http=http)
        with pytest.raises(TesseraError):
            respond(wallet, req, consent=lambda c: False, http=http)
    assert shop.results == [("consent_denied",)]
    assert set(dict(urllib.parse.parse_qsl(shop.bodies[0].decode()))) == {"response"}


def _signed_request(shop: FakeShop, **changes: object) -> str:
    req = shop.v.create_request(GOLD, response_mode="direct_post.jwt")
    params = {**req.parameters(), **changes, "iss": shop.v.client_id,
              "aud": "https://self-issued.me/v2"}
    token = sign_compact({"typ": "oauth-authz-req+jwt", "kid": shop.key.key_id}, params, shop.key)
    return "openid4vp://?" + urllib.parse.urlencode({"client_id": shop.v.client_id,
                                                     "request": token})


@pytest.mark.parametrize(("metadata", "code"), [
    ({}, ErrorCode.INVALID_REQUEST),
    ({"jwks": {"keys": []}}, ErrorCode.INVALID_REQUEST),
    ({"jwks": {"keys": [{"kty": "OKP", "crv": "X25519", "x": "AA", "alg": "ECDH-ES"}]}},
     ErrorCode.UNSUPPORTED_ALGORITHM),
    ({"jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": b64url_encode(b"\x01" * 32),
                         "y": b64url_encode(b"\x02" * 32), "alg": "ECDH-ES"}]}},
     ErrorCode.MALFORMED),
    ("offer-only-A192GCM", ErrorCode.UNSUPPORTED_ALGORITHM),
])
def test_unusable_encryption_metadata_is_refused(shop: FakeShop, metadata: object,
                                                 code: ErrorCode) -> None:
    if metadata == "offer-only-A192GCM":
        good = shop.v.create_request(GOLD, response_mode="direct_post.jwt").client_metadata
        metadata = {**good, "encrypted_response_enc_values_supported": ["A192GCM"]}
    with pytest.raises(TesseraError) as err:
        parse_request(_signed_request(shop, client_metadata=metadata))
    assert err.value.code == code


def test_a256gcm_only_verifier(shop: FakeShop) -> None:
    good = shop.v.create_request(GOLD, response_mode="direct_post.jwt").client_metadata
    req = parse_request(_signed_request(shop, client_metadata={
        **good, "encrypted_response_enc_values_supported": ["A256GCM"]}))
    assert req.encryption_enc == "A256GCM"
