"""OpenID4VP 1.0 in the verifier SDK: requests, request objects, direct_post answers."""

from __future__ import annotations

import contextlib
import json
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwe, jwk, jws

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
from verifier._openid4vp import (
    POINTS_REDEMPTION_TYPE,
    REQUEST_OBJECT_TYP,
    EncryptedResponse,
    decrypt_response,
    parse_authorization_response,
)
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


# -- direct_post.jwt (§8.3) -------------------------------------------------------------------


def _spec_encrypt(request_params: dict[str, object], payload: dict[str, object], *,
                  enc: str = "A128GCM", key: jwk.JWK | None = None,
                  header: dict[str, object] | None = None) -> str:
    """What any wallet does, with jwcrypto alone: ECDH-ES to the verifier's jwks key."""
    metadata = request_params["client_metadata"]
    assert isinstance(metadata, dict)
    (public,) = metadata["jwks"]["keys"]
    target = key or jwk.JWK(**public)
    protected = {"alg": "ECDH-ES", "enc": enc, "kid": public["kid"], **(header or {})}
    token = jwe.JWE(json.dumps(payload).encode(), protected=json.dumps(protected))
    token.add_recipient(target)
    return str(token.serialize(compact=True))


def _encrypted_answer(member: TestHolder, credential: str, req: AuthorizationRequest,
                      **kw: object) -> str:
    presentation = sd_jwt.present(credential, disclose=["tier_at_least_gold"],
                                  holder=member.signer, audience=req.client_id, nonce=req.nonce)
    payload = {"vp_token": {"membership": [presentation]}, "state": req.state}
    return _spec_encrypt(req.parameters(), payload, **kw)  # type: ignore[arg-type]


def test_direct_post_jwt_request_publishes_a_fresh_encryption_key(
    oid4vp: OpenID4VPVerifier, verifier_key: LocalSigner,
) -> None:
    req = oid4vp.create_request(GOLD, response_mode="direct_post.jwt")
    params = verify_compact(oid4vp.request_object(req), verifier_key.public_key).payload
    assert params["response_mode"] == "direct_post.jwt"
    metadata = params["client_metadata"]
    (key,) = metadata["jwks"]["keys"]
    assert key["kty"] == "EC" and key["crv"] == "P-256" and "d" not in key
    assert key["use"] == "enc" and key["alg"] == "ECDH-ES" and key["kid"]
    assert metadata["encrypted_response_enc_values_supported"] == ["A128GCM", "A256GCM"]
    assert metadata["client_name"] == "Shop"
    other = oid4vp.create_request(GOLD, response_mode="direct_post.jwt")
    assert other.client_metadata["jwks"]["keys"][0]["x"] != key["x"]  # one key per request
    assert "'d'" not in repr(req)  # the private half stays out of reprs and logs
    assert AuthorizationRequest.from_dict(json.loads(json.dumps(req.to_dict()))) == req
    with pytest.raises(TesseraError) as err:
        oid4vp.create_request(GOLD, response_mode="fragment")
    assert err.value.code == ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("enc", ["A128GCM", "A256GCM"])
def test_direct_post_jwt_round_trip(oid4vp: OpenID4VPVerifier, brand: TestIssuer,
                                    member: TestHolder, enc: str) -> None:
    cred = brand.issue_membership(member, tier="gold")
    req = oid4vp.create_request(GOLD, response_mode="direct_post.jwt")
    body = urllib.parse.urlencode({"response": _encrypted_answer(member, cred, req, enc=enc)})
    parsed = parse_authorization_response(body)
    assert isinstance(parsed, EncryptedResponse)
    assert parsed.kid == req.client_metadata["jwks"]["keys"][0]["kid"]
    opened = decrypt_response(parsed, req)
    assert opened.encrypted and opened.state == req.state
    result = oid4vp.verify_response(opened, req)
    assert result.ok, result.errors
    assert result.claims["tier_at_least_gold"] is True


def test_encrypted_to_another_key_is_refused(oid4vp: OpenID4VPVerifier, brand: TestIssuer,
                                             member: TestHolder) -> None:
    cred = brand.issue_membership(member)
    req = oid4vp.create_request(GOLD, response_mode="direct_post.jwt")
    stranger = jwk.JWK.generate(kty="EC", crv="P-256")
    body = urllib.parse.urlencode(
        {"response": _encrypted_answer(member, cred, req, key=stranger)})
    parsed = parse_authorization_response(body)
    assert isinstance(parsed, EncryptedResponse)
    with pytest.raises(TesseraError) as err:
        decrypt_response(parsed, req)
    assert err.value.code == ErrorCode.MALFORMED
    # Encrypted to another request's key: its kid is not this request's.
    other = oid4vp.create_request(GOLD, response_mode="direct_post.jwt")
    moved = parse_authorization_response(urllib.parse.urlencode(
        {"response": _encrypted_answer(member, cred, other)}))
    assert isinstance(moved, EncryptedResponse)
    with pytest.raises(TesseraError) as err:
        decrypt_response(moved, req)
    assert err.value.code == ErrorCode.KEY_NOT_FOUND


@pytest.mark.parametrize("part", [1, 2, 3, 4])
def test_tampered_jwe_is_refused(oid4vp: OpenID4VPVerifier, brand: TestIssuer,
                                 member: TestHolder, part: int) -> None:
    cred = brand.issue_membership(member)
    req = oid4vp.create_request(GOLD, response_mode="direct_post.jwt")
    pieces = _encrypted_answer(member, cred, req).split(".")
    # Flip one bit in the (empty) key, the IV, the ciphertext or the tag.
    raw = bytearray(b64url_decode(pieces[part]) or b"\x00")
    raw[len(raw) // 2] ^= 0x01
    pieces[part] = b64url_encode(bytes(raw))
    parsed = parse_authorization_response(urllib.parse.urlencode({"response": ".".join(pieces)}))
    assert isinstance(parsed, EncryptedResponse)
    with pytest.raises(TesseraError) as err:
        decrypt_response(parsed, req)
    assert err.value.code == ErrorCode.MALFORMED


@pytest.mark.parametrize(("header", "code"), [
    ({"enc": "A192GCM"}, ErrorCode.UNSUPPORTED_ALGORITHM),
    ({"alg": "ECDH-ES+A128KW"}, ErrorCode.UNSUPPORTED_ALGORITHM),
    ({"zip": "DEF"}, ErrorCode.MALFORMED),
])
def test_jwe_header_rules(oid4vp: OpenID4VPVerifier, brand: TestIssuer, member: TestHolder,
                          header: dict[str, object], code: ErrorCode) -> None:
    cred = brand.issue_membership(member)
    req = oid4vp.create_request(GOLD, response_mode="direct_post.jwt")
    enc = str(header.pop("enc", "A128GCM"))
    token = _encrypted_answer(member, cred, req, enc=enc, header=header)
    parsed = parse_authorization_response(urllib.parse.urlencode({"response": token}))
    assert isinstance(parsed, EncryptedResponse)
    with pytest.raises(TesseraError) as err:
        decrypt_response(parsed, req)
    assert err.value.code == code


def test_plain_direct_post_to_an_encrypted_request_is_refused(
    oid4vp: OpenID4VPVerifier, brand: TestIssuer, member: TestHolder,
) -> None:
    cred = brand.issue_membership(member)
    req = oid4vp.create_request(GOLD, response_mode="direct_post.jwt")
    plain = parse_direct_post(_answer(member, cred, ["tier_at_least_gold"], req))
    assert oid4vp.verify_response(plain, req).errors == ("invalid_request",)
    # The other way round: an encrypted body for a plain request cannot be opened.
    plain_req = oid4vp.create_request(GOLD)
    with pytest.raises(TesseraError) as err:
        decrypt_response(EncryptedResponse("a.b.c.d.e", "k", {"alg": "ECDH-ES"}), plain_req)
    assert err.value.code == ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize("body", [
    "response=a.b.c", "response=abc&state=s", "response=" + b64url_encode(b'{"alg":"x"}')
    + ".a.b.c.d", "response=%21%21.a.b.c.d",
])
def test_bad_encrypted_bodies(body: str) -> None:
    with pytest.raises(TesseraError) as err:
        parse_authorization_response(body)
    assert err.value.code == ErrorCode.MALFORMED


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.",
               max_size=400))
def test_decrypt_only_raises_tessera_errors(token: str) -> None:
    req = _JWT_VERIFIER.create_request(GOLD, response_mode="direct_post.jwt")
    with contextlib.suppress(TesseraError):
        parsed = parse_authorization_response(urllib.parse.urlencode({"response": token}))
        assert isinstance(parsed, EncryptedResponse)
        decrypt_response(parsed, req)


def _jwt_verifier() -> OpenID4VPVerifier:
    signer = generate_signer("ES256")
    signer = signer.with_key_id(did_jwk(signer.public_key) + "#0")
    did = (signer.key_id or "").split("#")[0]
    return OpenID4VPVerifier(offline_verifier(TestIssuer()),
                             client_id=f"decentralized_identifier:{did}",
                             response_uri=RESPONSE_URI, signer=signer)


_JWT_VERIFIER = _jwt_verifier()
