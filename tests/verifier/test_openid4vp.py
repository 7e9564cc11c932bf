"""OpenID4VP 1.0 in the verifier SDK: requests, request objects, direct_post answers."""

from __future__ import annotations

import contextlib
import json
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwk, jws

from tessera.credentials import MEMBERSHIP, POINTS
from tessera.dcql import claims_query
from tessera.did import Resolver, did_jwk, did_key
from tessera.encoding import b64url_decode, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.jose import decode_unverified, verify_compact
from tessera.keys import LocalSigner, generate_signer
from verifier import (
    AuthorizationRequest,
    OpenID4VPVerifier,
    decode_transaction_data,
    encode_transaction_data,
    parse_direct_post,
    split_client_id,
)
from verifier._openid4vp import POINTS_REDEMPTION_TYPE, REQUEST_OBJECT_TYP
from verifier.testing import TestHolder, TestIssuer, offline_verifier

RESPONSE_URI = "https://shop.test/response"
GOLD = {"credentials": [claims_query("membership", MEMBERSHIP.vct, ["tier_at_least_gold"],
                                     require_true=True)]}


@pytest.fixture
def brand() -> TestIssuer:
    return TestIssuer()


@pytest.fixture
def member() -> TestHolder:
    return TestHolder(generate_signer("ES256"))


@pytest.fixture
def verifier_key() -> LocalSigner:
    signer = generate_signer("ES256")
    return signer.with_key_id(did_jwk(signer.public_key) + "#0")


@pytest.fixture
def oid4vp(brand: TestIssuer, verifier_key: LocalSigner) -> OpenID4VPVerifier:
    did = (verifier_key.key_id or "").split("#")[0]
    return OpenID4VPVerifier(
        offline_verifier(brand), client_id=f"decentralized_identifier:{did}",
        response_uri=RESPONSE_URI, signer=verifier_key, client_name="Shop",
        contacts=["help@shop.test"],
    )


def _answer(member: TestHolder, credential: str, names: list[str],
            request: AuthorizationRequest, query_id: str = "membership") -> str:
    presentation = sd_jwt.present(
        credential, disclose=names, holder=member.signer, audience=request.client_id,
        nonce=request.nonce, transaction_data=request.transaction_data or None,
    )
    token = json.dumps({query_id: [presentation]})
    return urllib.parse.urlencode({"vp_token": token, "state": request.state})


def test_request_object_is_a_signed_jar_with_every_parameter(
    oid4vp: OpenID4VPVerifier, verifier_key: LocalSigner,
) -> None:
    req = oid4vp.create_request(GOLD, purpose="10% off")
    token = oid4vp.request_object(req)
    decoded = verify_compact(token, verifier_key.public_key, typ=REQUEST_OBJECT_TYP)
    assert decoded.header["kid"] == verifier_key.key_id
    p = decoded.payload
    assert p["client_id"] == oid4vp.client_id and p["response_type"] == "vp_token"
    assert p["response_mode"] == "direct_post" and p["response_uri"] == RESPONSE_URI
    assert p["nonce"] == req.nonce and p["state"] == req.state and p["dcql_query"] == GOLD
    assert p["client_metadata"] == {"client_name": "Shop", "contacts": ["help@shop.test"]}
    assert p["aud"] == "https://self-issued.me/v2" and p["exp"] > p["iat"]
    # An independent JOSE library agrees on the signature.
    key = jwk.JWK(**verifier_key.public_key.to_jwk())
    check = jws.JWS()
    check.deserialize(token)
    check.verify(key)
    assert json.loads(check.payload)["nonce"] == req.nonce


def test_deep_link_by_reference_carries_only_client_id_and_request_uri(
    oid4vp: OpenID4VPVerifier,
) -> None:
    req = oid4vp.create_request(GOLD)
    link = req.uri_by_reference("https://shop.test/requests/abc/object")
    parts = urllib.parse.urlsplit(link)
    assert parts.scheme == "openid4vp"
    assert dict(urllib.parse.parse_qsl(parts.query)) == {
        "client_id": oid4vp.client_id, "request_uri": "https://shop.test/requests/abc/object"}
    with pytest.raises(TesseraError) as err:
        req.uri_by_value()  # §5.9.3: a DID-identified request must be signed
    assert err.value.code == ErrorCode.INVALID_REQUEST


def test_redirect_uri_prefix_goes_by_value_unsigned(brand: TestIssuer) -> None:
    v = OpenID4VPVerifier(offline_verifier(brand), client_id=f"redirect_uri:{RESPONSE_URI}",
                          response_uri=RESPONSE_URI)
    req = v.create_request(GOLD)
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(req.uri_by_value()).query))
    assert params["client_id"] == f"redirect_uri:{RESPONSE_URI}"
    assert json.loads(params["dcql_query"]) == GOLD and params["nonce"] == req.nonce
    with pytest.raises(TesseraError):
        v.request_object(req)
    with pytest.raises(TesseraError):
        req.request_object(generate_signer("ES256", key_id="did:x:y#1"))
    with pytest.raises(TesseraError) as err:
        OpenID4VPVerifier(offline_verifier(brand), client_id="redirect_uri:https://evil.test/r",
                          response_uri=RESPONSE_URI)
    assert err.value.code == ErrorCode.INVALID_REQUEST


def test_did_prefix_needs_a_key_of_that_did(brand: TestIssuer) -> None:
    other = generate_signer("ES256")
    signer = other.with_key_id(did_key(generate_signer("ES256").public_key) + "#k")
    with pytest.raises(TesseraError) as err:
        OpenID4VPVerifier(offline_verifier(brand),
                          client_id=f"decentralized_identifier:{did_jwk(other.public_key)}",
                          response_uri=RESPONSE_URI, signer=signer)
    assert err.value.code == ErrorCode.KEY_NOT_FOUND


@pytest.mark.parametrize("client_id", ["", "x509_san_dns:shop.test", "redirect_uri:",
                                       "did:key:z6Mk", "a" * 3000])
def test_unknown_or_empty_prefixes_are_refused(client_id: str) -> None:
    with pytest.raises(TesseraError) as err:
        split_client_id(client_id)
    assert err.value.code == ErrorCode.INVALID_REQUEST


def test_happy_path_returns_only_the_asked_claims(
    oid4vp: OpenID4VPVerifier, brand: TestIssuer, member: TestHolder,
) -> None:
    cred = brand.issue_membership(member, tier="platinum")
    req = oid4vp.create_request(GOLD)
    response = parse_direct_post(_answer(member, cred, ["tier_at_least_gold"], req))
    result = oid4vp.verify_response(response, req)
    assert result.ok, result.errors
    assert result.claims["tier_at_least_gold"] is True
    assert "tier" not in result.claims and "name" not in result.claims
    # The same answer again: the nonce is single use.
    again = oid4vp.verify_response(response, req)
    assert again.errors == ("replayed",)


def test_claims_not_asked_for_make_the_answer_fail(
    oid4vp: OpenID4VPVerifier, brand: TestIssuer, member: TestHolder,
) -> None:
    cred = brand.issue_membership(member, tier="gold", name="Alice")
    req = oid4vp.create_request(GOLD)
    body = _answer(member, cred, ["tier_at_least_gold", "name", "tier"], req)
    result = oid4vp.verify_response(parse_direct_post(body), req)
    assert not result.ok and "disclosure_mismatch" in result.errors
    assert result.claims == {}


def test_missing_required_claim_fails(
    oid4vp: OpenID4VPVerifier, brand: TestIssuer, member: TestHolder,
) -> None:
    cred = brand.issue_membership(member, tier="gold")
    req = oid4vp.create_request(GOLD)
    result = oid4vp.verify_response(parse_direct_post(_answer(member, cred, [], req)), req)
    assert result.errors == ("disclosure_mismatch",)


def test_a_silver_member_does_not_pass_gold(
    oid4vp: OpenID4VPVerifier, brand: TestIssuer, member: TestHolder,
) -> None:
    cred = brand.issue_membership(member, tier="silver")
    req = oid4vp.create_request(GOLD)
    body = _answer(member, cred, ["tier_at_least_gold"], req)
    assert oid4vp.verify_response(parse_direct_post(body), req).errors == ("disclosure_mismatch",)


def test_answer_for_another_requests_nonce_fails(
    oid4vp: OpenID4VPVerifier, brand: TestIssuer, member: TestHolder,
) -> None:
    cred = brand.issue_membership(member)
    first, second = oid4vp.create_request(GOLD), oid4vp.create_request(GOLD)
    body = _answer(member, cred, ["tier_at_least_gold"], first)
    # Delivered with the second request's state, the KB-JWT still names the first nonce.
    moved = body.replace(urllib.parse.quote(first.state), urllib.parse.quote(second.state))
    result = oid4vp.verify_response(parse_direct_post(moved), second)
    assert result.errors == ("nonce_mismatch",)
    # And a state that is not the request's is refused outright.
    assert oid4vp.verify_response(parse_direct_post(body), second).errors == ("invalid_request",)


def test_wallet_refusal_is_consent_denied(oid4vp: OpenID4VPVerifier) -> None:
    req = oid4vp.create_request(GOLD)
    body = urllib.parse.urlencode({"error": "access_denied", "state": req.state})
    parsed = parse_direct_post(body)
    assert parsed.error == "access_denied" and parsed.vp_token is None
    assert oid4vp.verify_response(parsed, req).errors == ("consent_denied",)


def test_transaction_data_is_bound_through_the_kb_jwt(
    oid4vp: OpenID4VPVerifier, brand: TestIssuer, member: TestHolder,
) -> None:
    points = {"credentials": [claims_query("points", POINTS.vct, ["points_at_least_1000"],
                                           require_true=True)]}
    tx = encode_transaction_data(POINTS_REDEMPTION_TYPE, ["points"], points=1000,
                                 order="A-17")
    assert decode_transaction_data(tx)["order"] == "A-17"
    cred = brand.issue_points(member, balance=1500)
    req = oid4vp.create_request(points, transaction_data=[tx])
    assert req.parameters()["transaction_data"] == [tx]
    good = _answer(member, cred, ["points_at_least_1000"], req, "points")
    assert oid4vp.verify_response(parse_direct_post(good), req).ok
    # A KB-JWT without the transaction hashes does not authorise the redemption.
    req2 = oid4vp.create_request(points, transaction_data=[tx])
    unbound = sd_jwt.present(cred, disclose=["points_at_least_1000"], holder=member.signer,
                             audience=req2.client_id, nonce=req2.nonce)
    body = urllib.parse.urlencode({"vp_token": json.dumps({"points": [unbound]}),
                                   "state": req2.state})
    assert "transaction_data_mismatch" in oid4vp.verify_response(
        parse_direct_post(body), req2).errors


def test_transaction_data_must_name_query_credentials(oid4vp: OpenID4VPVerifier) -> None:
    tx = encode_transaction_data(POINTS_REDEMPTION_TYPE, ["nope"])
    with pytest.raises(TesseraError) as err:
        oid4vp.create_request(GOLD, transaction_data=[tx])
    assert err.value.code == ErrorCode.INVALID_REQUEST
    with pytest.raises(TesseraError):
        encode_transaction_data("", ["membership"])
    bad_alg = encode_transaction_data(POINTS_REDEMPTION_TYPE, ["membership"],
                                      transaction_data_hashes_alg=["sha-512"])
    with pytest.raises(TesseraError) as err:
        oid4vp.create_request(GOLD, transaction_data=[bad_alg])
    assert err.value.code == ErrorCode.UNSUPPORTED_ALGORITHM


@pytest.mark.parametrize(("body", "code"), [
    ("state=a&state=b&vp_token=%7B%7D", ErrorCode.MALFORMED),
    ("vp_token=%7B%22a%22%3A%5B%5D%7D", ErrorCode.INVALID_REQUEST),
    ("state=s", ErrorCode.INVALID_REQUEST),
    ("state=s&vp_token=%22abc%22", ErrorCode.MALFORMED),
    ("state=s&vp_token=%7B%7D", ErrorCode.MALFORMED),
    ("state=s&vp_token=%7B", ErrorCode.MALFORMED),
    ("state=s&error=access_denied&vp_token=%7B%22a%22%3A1%7D", ErrorCode.MALFORMED),
    ("state=s&vp_token=" + "a" * 600_000, ErrorCode.TOO_LARGE),
])
def test_bad_direct_post_bodies(body: str, code: ErrorCode) -> None:
    with pytest.raises(TesseraError) as err:
        parse_direct_post(body)
    assert err.value.code == code


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_direct_post_parser_only_raises_tessera_errors(body: bytes) -> None:
    with contextlib.suppress(TesseraError):
        parse_direct_post(body)


def test_request_round_trips_through_storage(oid4vp: OpenID4VPVerifier) -> None:
    req = oid4vp.create_request(GOLD, purpose="why")
    assert AuthorizationRequest.from_dict(json.loads(json.dumps(req.to_dict()))) == req


def test_tampered_request_object_no_longer_verifies(
    oid4vp: OpenID4VPVerifier, verifier_key: LocalSigner,
) -> None:
    token = oid4vp.request_object(oid4vp.create_request(GOLD))
    head, body, sig = token.split(".")
    payload = json.loads(b64url_decode(body))
    payload["response_uri"] = "https://attacker.test/collect"
    forged = ".".join([head, b64url_encode(json.dumps(payload).encode()), sig])
    assert decode_unverified(forged).payload["response_uri"].startswith("https://attacker")
    with pytest.raises(TesseraError) as err:
        verify_compact(forged, verifier_key.public_key)
    assert err.value.code == ErrorCode.INVALID_SIGNATURE
    # The DID in client_id resolves to the signing key (did:jwk, no network).
    did = oid4vp.client_id.split(":", 1)[1]
    assert Resolver().key(verifier_key.key_id or "", relationship="authentication") == \
        verifier_key.public_key
    assert did == (verifier_key.key_id or "").split("#")[0]
