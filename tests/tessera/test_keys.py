"""Keys: JWK round trips, signer hygiene, signatures, sealing at rest."""

from __future__ import annotations

import copy
import json
import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwk as jwcrypto_jwk

from tessera.encoding import b64url_decode, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import (
    SUPPORTED_ALGS,
    LocalSigner,
    PublicKey,
    generate_signer,
    public_key_from_jwk,
    seal,
    seal_with_passphrase,
    signer_from_jwk,
    unseal,
    unseal_with_passphrase,
)
from tessera.typing import Signer

ALGS = ("EdDSA", "ES256", "ES384")
CRV = {"EdDSA": "Ed25519", "ES256": "P-256", "ES384": "P-384"}
SIG_LEN = {"EdDSA": 64, "ES256": 64, "ES384": 96}


@pytest.fixture(scope="module", params=ALGS)
def signer(request: pytest.FixtureRequest) -> LocalSigner:
    return generate_signer(request.param)


def test_supported_algs() -> None:
    assert set(ALGS) == SUPPORTED_ALGS


def test_signer_satisfies_protocol(signer: LocalSigner) -> None:
    assert isinstance(signer, Signer)
    assert signer.public_key.alg == signer.alg
    assert signer.public_key.crv == CRV[signer.alg]


def test_public_jwk_round_trip(signer: LocalSigner) -> None:
    jwk = signer.public_key.to_jwk()
    assert "d" not in jwk
    again = PublicKey.from_jwk(jwk)
    assert again == signer.public_key
    assert hash(again) == hash(signer.public_key)
    assert again.to_jwk() == jwk
    assert public_key_from_jwk(jwk) == signer.public_key


def test_public_jwk_matches_jwcrypto(signer: LocalSigner) -> None:
    private = jwcrypto_jwk.JWK(**signer.export_private_jwk())
    theirs = json.loads(private.export_public())
    ours = signer.public_key.to_jwk()
    assert {k: theirs[k] for k in ours} == ours
    # RFC 7638 thumbprints agree with jwcrypto's.
    assert signer.public_key.thumbprint() == private.thumbprint()


def test_private_jwk_round_trip(signer: LocalSigner) -> None:
    private = signer.export_private_jwk()
    again = signer_from_jwk(private, key_id="did:example:1#k")
    assert again.public_key == signer.public_key
    assert again.key_id == "did:example:1#k"
    data = b"round trip"
    signer.public_key.verify(again.sign(data), data)
    again.public_key.verify(signer.sign(data), data)


def test_private_jwk_kid_becomes_key_id(signer: LocalSigner) -> None:
    private = {**signer.export_private_jwk(), "kid": "did:web:x#1"}
    assert signer_from_jwk(private).key_id == "did:web:x#1"


def test_private_jwk_refused_where_public_expected(signer: LocalSigner) -> None:
    with pytest.raises(TesseraError) as exc:
        PublicKey.from_jwk(signer.export_private_jwk())
    assert exc.value.code is ErrorCode.MALFORMED
    # The refusal does not echo the secret.
    assert signer.export_private_jwk()["d"] not in str(exc.value)


def test_private_jwk_with_other_public_part_refused() -> None:
    a, b = generate_signer("ES256"), generate_signer("ES256")
    mixed = {**a.export_private_jwk(), "x": b.public_key.to_jwk()["x"],
             "y": b.public_key.to_jwk()["y"]}
    with pytest.raises(TesseraError) as exc:
        signer_from_jwk(mixed)
    assert exc.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize("jwk", [
    {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"},
    {"kty": "EC", "crv": "P-256", "x": b64url_encode(b"\x01" * 32)},
    {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
    {"kty": "OKP", "crv": "Ed25519", "x": 5},
    {"kty": "OKP", "crv": "Ed25519"},
    "not a dict",
])
def test_bad_public_jwks_are_malformed(jwk: Any) -> None:
    with pytest.raises(TesseraError) as exc:
        PublicKey.from_jwk(jwk)
    assert exc.value.code is ErrorCode.MALFORMED


def test_public_jwk_members_must_be_full_size_unpadded_base64url() -> None:
    """RFC 7518 §6.2.1.2: a coordinate is the full size for its curve; RFC 8037 §2: the
    Ed25519 key is 32 bytes; base64url without padding (RFC 7515 §2)."""
    ec_jwk = generate_signer("ES256").public_key.to_jwk()
    ed_jwk = generate_signer("EdDSA").public_key.to_jwk()
    x = b64url_decode(ec_jwk["x"])
    for bad in ({**ec_jwk, "x": b64url_encode(x[1:])},  # short
                {**ec_jwk, "x": b64url_encode(b"\x00" + x)},  # long
                {**ec_jwk, "x": ec_jwk["x"] + "="},  # padded
                {**ed_jwk, "x": b64url_encode(b64url_decode(ed_jwk["x"])[:31])},
                {**ed_jwk, "y": ec_jwk["y"]}):
        with pytest.raises(TesseraError) as exc:
            PublicKey.from_jwk(bad)
        assert exc.value.code is ErrorCode.MALFORMED


def test_a_coordinate_with_a_leading_zero_byte_round_trips() -> None:
    # About one P-256 key in 128 has a coordinate starting with a zero byte: its member
    # is still the full 32 bytes, and it imports as any other.
    for _ in range(5000):
        key = generate_signer("ES256").public_key
        jwk = key.to_jwk()
        if b64url_decode(jwk["x"])[0] == 0 or b64url_decode(jwk["y"])[0] == 0:
            assert PublicKey.from_jwk(jwk) == key
            return
    raise AssertionError("no key with a leading zero byte in 5000")


def test_point_not_on_curve_refused() -> None:
    good = generate_signer("ES256").public_key.to_jwk()
    y = bytearray(b"\x00" * 31 + b"\x01")
    with pytest.raises(TesseraError) as exc:
        PublicKey.from_jwk({**good, "y": b64url_encode(bytes(y))})
    assert exc.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize("jwk", [
    {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
    {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
    {"kty": "OKP", "crv": "X25519", "x": b64url_encode(b"\x09" * 32)},
    {"kty": "oct", "k": "c2VjcmV0"},
])
def test_unsupported_key_types(jwk: dict[str, Any]) -> None:
    with pytest.raises(TesseraError) as exc:
        PublicKey.from_jwk(jwk)
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


def test_jwk_alg_must_fit_curve() -> None:
    jwk = generate_signer("ES256").public_key.to_jwk()
    assert PublicKey.from_jwk({**jwk, "alg": "ES256"}).alg == "ES256"
    for alg in ("EdDSA", "ES384", "HS256", "none"):
        with pytest.raises(TesseraError) as exc:
            PublicKey.from_jwk({**jwk, "alg": alg})
        assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


def test_signer_repr_has_no_key_material(signer: LocalSigner) -> None:
    d = signer.export_private_jwk()["d"]
    text = repr(signer) + str(signer) + repr(signer.public_key)
    assert d not in text
    assert signer.alg in repr(signer)
    assert not hasattr(signer, "__dict__")  # slots: nothing else to leak


def test_signature_encoding_and_verification(signer: LocalSigner) -> None:
    data = b"the payload"
    sig = signer.sign(data)
    assert len(sig) == SIG_LEN[signer.alg]  # JOSE raw r||s for ECDSA, not DER
    signer.public_key.verify(sig, data)
    with pytest.raises(TesseraError) as exc:
        signer.public_key.verify(sig, data + b"!")
    assert exc.value.code is ErrorCode.INVALID_SIGNATURE
    flipped = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(TesseraError) as exc:
        signer.public_key.verify(flipped, data)
    assert exc.value.code is ErrorCode.INVALID_SIGNATURE


@given(st.binary(max_size=200))
@settings(max_examples=25)
def test_arbitrary_signatures_raise_invalid_signature(junk: bytes) -> None:
    for alg in ALGS:
        key = _KEYS[alg].public_key
        with pytest.raises(TesseraError) as exc:
            key.verify(junk, b"data")
        assert exc.value.code is ErrorCode.INVALID_SIGNATURE


_KEYS = {alg: generate_signer(alg) for alg in ALGS}


def test_signature_by_other_key_refused() -> None:
    a, b = generate_signer("EdDSA"), generate_signer("EdDSA")
    with pytest.raises(TesseraError) as exc:
        b.public_key.verify(a.sign(b"x"), b"x")
    assert exc.value.code is ErrorCode.INVALID_SIGNATURE


def test_der_ecdsa_signature_refused() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    der = private.sign(b"x", ec.ECDSA(hashes.SHA256()))
    signer = LocalSigner(private, "ES256")
    with pytest.raises(TesseraError) as exc:
        signer.public_key.verify(der, b"x")
    assert exc.value.code is ErrorCode.INVALID_SIGNATURE


def test_raw_forms(signer: LocalSigner) -> None:
    key = signer.public_key
    assert PublicKey.from_raw(key.crv, key.raw()) == key
    if key.crv != "Ed25519":
        uncompressed = key.raw(compressed=False)
        assert uncompressed[0] == 4
        assert PublicKey.from_raw(key.crv, uncompressed) == key
    with pytest.raises(TesseraError) as exc:
        PublicKey.from_raw(key.crv, b"\x02" + b"\xff" * 3)
    assert exc.value.code is ErrorCode.MALFORMED
    with pytest.raises(TesseraError) as exc:
        PublicKey.from_raw("secp256k1", key.raw())
    assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


def test_generate_refuses_unknown_alg() -> None:
    for alg in ("RS256", "HS256", "none", "ES512"):
        with pytest.raises(TesseraError) as exc:
            generate_signer(alg)
        assert exc.value.code is ErrorCode.UNSUPPORTED_ALGORITHM


def test_signer_from_jwk_refuses_public_and_bad_scalars() -> None:
    pub = generate_signer("ES256").public_key.to_jwk()
    with pytest.raises(TesseraError) as exc:
        signer_from_jwk(pub)
    assert exc.value.code is ErrorCode.MALFORMED
    with pytest.raises(TesseraError) as exc:
        signer_from_jwk({**pub, "d": b64url_encode(b"\x00" * 32)})
    assert exc.value.code is ErrorCode.MALFORMED


# -- sealing at rest --------------------------------------------------------------


@given(st.binary(max_size=200), st.binary(max_size=20))
@settings(max_examples=30)
def test_seal_round_trip(data: bytes, aad: bytes) -> None:
    key = os.urandom(32)
    box = seal(data, key, aad=aad)
    assert json.loads(json.dumps(box)) == box
    assert unseal(box, key, aad=aad) == data


def test_seal_wrong_key_or_aad_or_tamper() -> None:
    key = os.urandom(32)
    box = seal(b"secret", key, aad=b"wallet-1")
    with pytest.raises(TesseraError) as exc:
        unseal(box, os.urandom(32), aad=b"wallet-1")
    assert exc.value.code is ErrorCode.WRONG_PASSPHRASE
    with pytest.raises(TesseraError) as exc:
        unseal(box, key, aad=b"wallet-2")
    assert exc.value.code is ErrorCode.WRONG_PASSPHRASE
    tampered = dict(box, ciphertext=b64url_encode(b"\x00" * 22))
    with pytest.raises(TesseraError) as exc:
        unseal(tampered, key, aad=b"wallet-1")
    assert exc.value.code is ErrorCode.WRONG_PASSPHRASE


def test_seal_needs_a_32_byte_key() -> None:
    with pytest.raises(TesseraError) as exc:
        seal(b"x", b"short")
    assert exc.value.code is ErrorCode.MALFORMED
    box = seal(b"x", os.urandom(32))
    with pytest.raises(TesseraError) as exc:
        unseal(box, b"short")
    assert exc.value.code is ErrorCode.MALFORMED


@pytest.mark.parametrize("mutate", [
    lambda b: b.pop("nonce"),
    lambda b: b.update(nonce="AAAA"),  # 3 bytes: AES-GCM refuses such a nonce
    lambda b: b.update(nonce=5),
    lambda b: b.update(ciphertext="!!"),
])
def test_unseal_malformed_boxes(mutate: Any) -> None:
    key = os.urandom(32)
    box = seal(b"x", key)
    mutate(box)
    with pytest.raises(TesseraError) as exc:
        unseal(box, key)
    assert exc.value.code is ErrorCode.MALFORMED


@pytest.fixture(scope="module")
def sealed_box() -> dict[str, Any]:
    return seal_with_passphrase(b'{"d": "private"}', "correct horse")


def test_passphrase_round_trip(sealed_box: dict[str, Any]) -> None:
    assert unseal_with_passphrase(sealed_box, "correct horse") == b'{"d": "private"}'
    assert b"private" not in json.dumps(sealed_box).encode()
    assert sealed_box["kdf"]["name"] == "scrypt"


def test_passphrase_wrong(sealed_box: dict[str, Any]) -> None:
    with pytest.raises(TesseraError) as exc:
        unseal_with_passphrase(sealed_box, "battery staple")
    assert exc.value.code is ErrorCode.WRONG_PASSPHRASE


def test_passphrase_seal_is_salted() -> None:
    a = seal_with_passphrase(b"x", "pw")
    b = seal_with_passphrase(b"x", "pw")
    assert a["kdf"]["salt"] != b["kdf"]["salt"] and a["ciphertext"] != b["ciphertext"]


@pytest.mark.parametrize("kdf_change", [
    {"n": 2**30},  # would take GiB of memory
    {"n": 2**21},
    {"n": 2**9},   # too weak
    {"n": 3000},   # not a power of two
    {"r": 1000},
    {"r": 0},
    {"p": 64},
    {"p": -1},
    {"name": "pbkdf2"},
    {"n": "lots"},
    {"salt": "!!"},
])
def test_passphrase_hostile_kdf_params_refused(
    sealed_box: dict[str, Any], kdf_change: dict[str, Any]
) -> None:
    box = copy.deepcopy(sealed_box)
    box["kdf"].update(kdf_change)
    with pytest.raises(TesseraError) as exc:
        unseal_with_passphrase(box, "correct horse")
    assert exc.value.code is ErrorCode.MALFORMED


def test_passphrase_box_without_kdf(sealed_box: dict[str, Any]) -> None:
    for box in ({k: v for k, v in sealed_box.items() if k != "kdf"}, {**sealed_box, "kdf": "x"}):
        with pytest.raises(TesseraError) as exc:
            unseal_with_passphrase(box, "correct horse")
        assert exc.value.code is ErrorCode.MALFORMED
