"""Compact JWS: our signer and verifier against jwcrypto's, and algorithm confusion."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwk as jwcrypto_jwk
from jwcrypto import jws as jwcrypto_jws

from tessera.encoding import b64url_encode, canonical_json
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import MAX_JWS_BYTES, decode_unverified, sign_compact, verify_compact
from tessera.keys import LocalSigner, generate_signer

ALGS = ("EdDSA", "ES256", "ES384")
PAYLOAD = {"iss": "did:example:issuer", "n": 1, "name": "Jöhn"}


@pytest.fixture(scope="module", params=ALGS)
def signer(request: pytest.FixtureRequest) -> LocalSigner:
    return generate_signer(request.param, key_id="did:example:issuer#k1")


def _b64json(value: Any) -> str:
    return b64url_encode(json.dumps(value).encode())


def _forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{_b64json(header)}.{_b64json(payload)}.{b64url_encode(signature)}"


def test_sign_and_verify(signer: LocalSigner) -> None:
    token = sign_compact({"typ": "test+jwt"}, PAYLOAD, signer)
    jws = verify_compact(token, signer.public_key, typ="test+jwt")
    assert jws.payload == PAYLOAD
    assert jws.header == {"alg": signer.alg, "typ": "test+jwt", "kid": "did:example:issuer#k1"}


def test_kid_not_added_when_header_carries_jwk(signer: LocalSigner) -> None:
    token = sign_compact({"jwk": signer.public_key.to_jwk()}, PAYLOAD, signer)
    assert "kid" not in decode_unverified(token).header


def test_sign_refuses_header_alg_that_is_not_the_keys(signer: LocalSigner) -> None:
    other = "ES256" if signer.alg != "ES256" else "EdDSA"
    with pytest.raises(TesseraError) as exc:
        sign_compact({"alg": other}, PAYLOAD, signer)
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


def test_jwcrypto_verifies_ours(signer: LocalSigner) -> None:
    token = sign_compact({"typ": "test+jwt"}, PAYLOAD, signer)
    theirs = jwcrypto_jws.JWS()
    theirs.deserialize(token)
    theirs.verify(jwcrypto_jwk.JWK(**signer.public_key.to_jwk()), alg=signer.alg)
    assert json.loads(theirs.payload) == PAYLOAD


def test_we_verify_jwcrypto(signer: LocalSigner) -> None:
    key = jwcrypto_jwk.JWK(**signer.export_private_jwk())
    theirs = jwcrypto_jws.JWS(json.dumps(PAYLOAD).encode())
    theirs.add_signature(key, alg=signer.alg, protected=json.dumps({"alg": signer.alg,
                                                                    "typ": "test+jwt"}))
    token = theirs.serialize(compact=True)
    assert verify_compact(token, signer.public_key, typ="test+jwt").payload == PAYLOAD


def test_tampered_payload_refused(signer: LocalSigner) -> None:
    token = sign_compact({}, PAYLOAD, signer)
    h, _, s = token.split(".")
    forged = f"{h}.{_b64json({**PAYLOAD, 'n': 2})}.{s}"
    with pytest.raises(TesseraError) as exc:
        verify_compact(forged, signer.public_key)
    assert exc.value.code is ErrorCode.INVALID_SIGNATURE


def test_other_key_refused(signer: LocalSigner) -> None:
    token = sign_compact({}, PAYLOAD, signer)
    with pytest.raises(TesseraError) as exc:
        verify_compact(token, generate_signer(signer.alg).public_key)
    assert exc.value.code is ErrorCode.INVALID_SIGNATURE


def test_alg_none_refused(signer: LocalSigner) -> None:
    token = _forge({"alg": "none"}, PAYLOAD)
    with pytest.raises(TesseraError) as exc:
        verify_compact(token, signer.public_key)
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_with_public_key_as_secret_refused(signer: LocalSigner, alg: str) -> None:
    # The classic confusion: the attacker MACs with the (public) verification
    # key in the forms a naive library might feed to HMAC.
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for secret in (canonical_json(signer.public_key.to_jwk()), signer.public_key.raw()):
        header = {"alg": alg}
        signing_input = f"{_b64json(header)}.{_b64json(PAYLOAD)}".encode()
        mac = hmac.new(secret, signing_input, digest).digest()
        with pytest.raises(TesseraError) as exc:
            verify_compact(_forge(header, PAYLOAD, mac), signer.public_key)
        assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


def test_alg_that_does_not_fit_the_key_refused() -> None:
    ed = generate_signer("EdDSA")
    p256 = generate_signer("ES256")
    token = sign_compact({}, PAYLOAD, p256)
    with pytest.raises(TesseraError) as exc:
        verify_compact(token, ed.public_key)
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM
    # A P-384 signature claimed as ES256 under the P-384 key's own header still fails.
    p384 = generate_signer("ES384")
    _h, p, s = sign_compact({}, PAYLOAD, p384).split(".")
    relabelled = f"{_b64json({'alg': 'ES256'})}.{p}.{s}"
    with pytest.raises(TesseraError) as exc:
        verify_compact(relabelled, p384.public_key)
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


def test_allow_list_is_enforced(signer: LocalSigner) -> None:
    token = sign_compact({}, PAYLOAD, signer)
    others = [a for a in ALGS if a != signer.alg]
    with pytest.raises(TesseraError) as exc:
        verify_compact(token, signer.public_key, allowed_algs=others)
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM
    # An allow-list cannot enable an algorithm we do not implement.
    forged = _forge({"alg": "RS256"}, PAYLOAD, b"x" * 256)
    with pytest.raises(TesseraError) as exc:
        verify_compact(forged, signer.public_key, allowed_algs=["RS256", *ALGS])
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


def test_crit_and_unencoded_payload_refused(signer: LocalSigner) -> None:
    for extra in ({"crit": ["exp"], "exp": 1}, {"b64": False, "crit": ["b64"]}, {"b64": False}):
        token = sign_compact(extra, PAYLOAD, signer)
        with pytest.raises(TesseraError) as exc:
            verify_compact(token, signer.public_key)
        assert exc.value.code is ErrorCode.MALFORMED


def test_typ_is_checked_when_asked(signer: LocalSigner) -> None:
    token = sign_compact({"typ": "a+jwt"}, PAYLOAD, signer)
    with pytest.raises(TesseraError) as exc:
        verify_compact(token, signer.public_key, typ="b+jwt")
    assert exc.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize("token", [
    "", "a.b", "a.b.c.d", "..", "e30.e30.!!", "!!.e30.AA", 5,
    _forge({"alg": "EdDSA"}, {}).replace(".", ".[", 1),
    b64url_encode(b"[]") + ".e30.AA",
    b64url_encode(b'{"alg":"EdDSA","alg":"none"}') + ".e30.AA",
])
def test_malformed_tokens(signer: LocalSigner, token: Any) -> None:
    with pytest.raises(TesseraError) as exc:
        verify_compact(token, signer.public_key)
    assert exc.value.code is ErrorCode.MALFORMED


def test_oversized_token() -> None:
    key = generate_signer("EdDSA")
    with pytest.raises(TesseraError) as exc:
        verify_compact("a" * (MAX_JWS_BYTES + 1), key.public_key)
    assert exc.value.code is ErrorCode.TOO_LARGE


@given(st.text(max_size=120))
@settings(max_examples=100)
def test_arbitrary_text_only_raises_tessera_errors(text: str) -> None:
    with pytest.raises(TesseraError):
        verify_compact(text, _ED.public_key)


_ED = generate_signer("EdDSA")


@given(st.lists(st.sampled_from(["e30", "AA", ""]), min_size=1, max_size=5))
def test_decode_takes_exactly_three_parts(parts: list[str]) -> None:
    # decode_unverified finds the two dots itself (no split): the parts, the
    # signing input and the refusals must be those of a plain split.
    token = ".".join(parts)
    if len(parts) == 3 and parts[0] == parts[1] == "e30":
        jws = decode_unverified(token)
        assert (jws.header, jws.payload) == ({}, {})
        assert jws.signing_input == b"e30.e30"
        assert jws.signature == base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
    else:
        with pytest.raises(TesseraError) as exc:
            decode_unverified(token)
        assert exc.value.code is ErrorCode.MALFORMED
