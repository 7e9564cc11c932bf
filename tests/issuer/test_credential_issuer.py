"""The issuer library: schema-checked, key-bound, short-lived credentials."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from issuer import CredentialIssuer, Program, did_document
from tessera.credentials import MEMBERSHIP, POINTS
from tessera.did import Resolver, issuer_key_lookup
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.jose import decode_unverified
from tessera.keys import generate_signer

BRAND = "did:web:brand.test"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.fixture
def brand() -> CredentialIssuer:
    signer = generate_signer("EdDSA", key_id=f"{BRAND}#k1")
    program = Program(id="https://brand.test/rewards", name="Brand", brand=BRAND,
                      points_ladder=(100, 1000))
    return CredentialIssuer(signer=signer, did=BRAND, program=program, clock=lambda: NOW)


def _verify(brand: CredentialIssuer, credential: str) -> sd_jwt.VerifiedSdJwt:
    doc = did_document(BRAND, [(brand.signer.key_id or "", brand.signer.public_key)])
    return sd_jwt.verify(credential, issuer_key=issuer_key_lookup(Resolver(documents={BRAND: doc})),
                         now=NOW, audience=None, nonce=None, require_key_binding=False)


def test_membership_credential_shape(brand: CredentialIssuer) -> None:
    holder = generate_signer("ES256")
    cred = brand.issue_membership(
        holder_key=holder.public_key, membership_number="M-7", tier="silver",
        member_since=date(2022, 2, 2), tier_valid_until=date(2026, 12, 1),
    )
    vc = _verify(brand, cred)
    assert vc.header["typ"] == "dc+sd-jwt" and vc.header["kid"] == f"{BRAND}#k1"
    assert vc.vct == MEMBERSHIP.vct
    assert vc.holder_key == holder.public_key
    assert vc.claims["tier_at_least_silver"] is True and vc.claims["tier_at_least_gold"] is False
    # Capped by the end of the tier, which comes before the 30-day default.
    assert vc.payload["exp"] == int(datetime(2026, 12, 1, 23, 59, 59, 999999,
                                             tzinfo=UTC).timestamp())
    # Only the programme is in clear; every personal claim is a disclosure.
    jwt_payload = decode_unverified(cred.split("~")[0]).payload
    assert set(jwt_payload) >= {"iss", "vct", "cnf", "_sd", "program"}
    assert jwt_payload["_sd_alg"] == "sha-256"
    assert "membership_number" not in jwt_payload and "tier" not in jwt_payload


def test_points_credential_uses_the_program_ladder_and_is_short_lived(
    brand: CredentialIssuer,
) -> None:
    holder = generate_signer("ES256")
    cred = brand.issue_points(holder_key=holder.public_key, membership_number="M-7",
                              balance=999, checkpoint=(1, "A" * 43))
    vc = _verify(brand, cred)
    assert vc.vct == POINTS.vct
    assert {k for k in vc.claims if k.startswith("points_at_least_")} == {
        "points_at_least_100", "points_at_least_1000"}
    assert vc.claims["points_at_least_1000"] is False
    assert vc.payload["exp"] - vc.payload["iat"] == 24 * 3600


def test_claims_outside_the_schema_are_refused_at_issuance(brand: CredentialIssuer) -> None:
    holder = generate_signer("ES256")
    with pytest.raises(TesseraError) as err:
        brand.issue_claims(MEMBERSHIP.name, {"program": brand.program.as_claim(), "ssn": "1"},
                           holder_key=holder.public_key)
    assert err.value.code is ErrorCode.SCHEMA_INVALID
    with pytest.raises(TesseraError) as err:
        brand.issue_membership(holder_key=holder.public_key, membership_number="M",
                               tier="diamond", member_since=date(2020, 1, 1),
                               tier_valid_until=date(2030, 1, 1))
    assert err.value.code is ErrorCode.SCHEMA_INVALID


def test_signer_must_belong_to_the_issuer_did() -> None:
    program = Program(id="p", name="P", brand=BRAND)
    with pytest.raises(TesseraError):
        CredentialIssuer(signer=generate_signer(key_id="did:web:other.test#k"), did=BRAND,
                         program=program)


def test_rotation_keeps_old_credentials_verifiable(brand: CredentialIssuer) -> None:
    holder = generate_signer("ES256")
    old = brand.issue_points(holder_key=holder.public_key, membership_number="M",
                             balance=5, checkpoint=(1, "A" * 43))
    new_signer = generate_signer("ES256", key_id=f"{BRAND}#k2")
    both = did_document(BRAND, [(f"{BRAND}#k2", new_signer.public_key),
                                (f"{BRAND}#k1", brand.signer.public_key)])
    lookup = issuer_key_lookup(Resolver(documents={BRAND: both}))
    sd_jwt.verify(old, issuer_key=lookup, now=NOW, audience=None, nonce=None,
                  require_key_binding=False)
    only_new = did_document(BRAND, [(f"{BRAND}#k2", new_signer.public_key)])
    with pytest.raises(TesseraError) as err:
        sd_jwt.verify(old, issuer_key=issuer_key_lookup(Resolver(documents={BRAND: only_new})),
                      now=NOW, audience=None, nonce=None, require_key_binding=False)
    assert err.value.code is ErrorCode.KEY_NOT_FOUND
