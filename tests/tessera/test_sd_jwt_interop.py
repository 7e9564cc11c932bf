"""Interop with the IETF reference implementation (``sd-jwt``, sd-jwt-python), both ways.

Quirks of the reference package that shape these tests (notes/dependencies.md §5):
its verifier hard-wires ES256 for the KB-JWT (so holders are P-256 when it
verifies), its issuer's default ``typ`` is ``example+sd-jwt`` (we pass
``dc+sd-jwt``), it does not check ``exp`` and it skips key binding unless
given both ``aud`` and ``nonce``. The last two are why Tessera never relies
on it: see the tests at the end.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sd_jwt.holder as ref_holder_module
from jwcrypto.jwk import JWK
from sd_jwt.common import SDObj
from sd_jwt.holder import SDJWTHolder
from sd_jwt.issuer import SDJWTIssuer
from sd_jwt.verifier import SDJWTVerifier

import verifier.sd_jwt as low_level
from tessera.credentials import MEMBERSHIP, membership_claims
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.keys import LocalSigner, generate_signer
from verifier import Verifier
from verifier.testing import DEFAULT_TIERS, FixedClock, InMemoryResolver, TestIssuer

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
AUD = "https://partner.example"
NONCE = "n-0S6_WzA2Mj"
DID = "did:web:acme.example"
KID = f"{DID}#key-1"
PROGRAM = {"id": f"{DID}/programs/miles", "name": "Acme Miles", "brand": DID}


@pytest.fixture(autouse=True)
def _reference_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # The reference holder stamps the KB-JWT with time.time(); pin it so the
    # tests do not depend on the wall clock.
    monkeypatch.setattr(ref_holder_module, "time", lambda: NOW.timestamp())


def _jwk(signer: LocalSigner) -> JWK:
    return JWK(**signer.export_private_jwk())


def _public_jwk(signer: LocalSigner) -> JWK:
    return JWK(**signer.public_key.to_jwk())


def _claims() -> dict[str, Any]:
    return membership_claims(
        program=PROGRAM, membership_number="A-1", tier="gold", tiers=DEFAULT_TIERS,
        member_since=date(2020, 5, 1), tier_valid_until=date(2027, 5, 1), name="Ada",
    )


def _reference_issue(issuer: LocalSigner, holder: LocalSigner, *, nested: bool = False,
                     expires: datetime | None = None) -> str:
    claims = _claims()
    user_claims: dict[Any, Any] = {
        "iss": DID, "vct": MEMBERSHIP.vct, "iat": int((NOW - timedelta(days=1)).timestamp()),
        "exp": int((expires or NOW + timedelta(days=30)).timestamp()),
        "program": claims.pop("program"),
    }
    for name, value in claims.items():
        if nested and name == "tier":
            value = {SDObj(k): v for k, v in value.items()}  # recursive disclosure
        user_claims[SDObj(name)] = value
    return SDJWTIssuer(
        user_claims, _jwk(issuer), holder_key=_jwk(holder), sign_alg=issuer.alg,
        add_decoy_claims=True, extra_header_parameters={"typ": "dc+sd-jwt", "kid": KID},
    ).sd_jwt_issuance


def _reference_present(issuance: str, holder: LocalSigner, disclose: dict[str, Any]) -> str:
    h = SDJWTHolder(issuance)
    h.create_presentation(disclose, nonce=NONCE, aud=AUD, holder_key=_jwk(holder),
                          sign_alg=holder.alg)
    presentation: str = h.sd_jwt_presentation
    return presentation


def _reference_verify(presentation: str, issuer: LocalSigner, *, kb: bool = True
                      ) -> dict[str, Any]:
    v = SDJWTVerifier(presentation, lambda iss, header: _public_jwk(issuer),
                      expected_aud=AUD if kb else None, expected_nonce=NONCE if kb else None)
    payload: dict[str, Any] = v.get_verified_payload()
    return payload


def _tessera_issue(issuer: LocalSigner, holder: LocalSigner,
                   expires: datetime | None = None) -> str:
    return sd_jwt.issue_credential(
        MEMBERSHIP, _claims(), signer=issuer.with_key_id(KID), issuer=DID,
        holder_key=holder.public_key, issued_at=NOW - timedelta(days=1),
        expires_at=expires or NOW + timedelta(days=30),
    )


def _tessera_present(cred: str, holder: LocalSigner, names: list[str]) -> str:
    return sd_jwt.present(cred, disclose=names, holder=holder, audience=AUD, nonce=NONCE,
                          issued_at=NOW)


def _offline_verifier(issuer: LocalSigner) -> Verifier:
    brand = TestIssuer(DID, signer=issuer)  # publishes the key as did#key-1
    return Verifier(trust=brand.trust_list(), resolver=InMemoryResolver(brand.did_document),
                    clock=FixedClock(NOW))


# -- the reference issues and presents; Tessera verifies ------------------------------------


@pytest.mark.parametrize("issuer_alg", ["EdDSA", "ES256", "ES384"])
@pytest.mark.parametrize("holder_alg", ["ES256", "EdDSA"])
def test_reference_issued_tessera_verifies(issuer_alg: str, holder_alg: str) -> None:
    issuer, holder = generate_signer(issuer_alg), generate_signer(holder_alg)
    issuance = _reference_issue(issuer, holder)
    pres = _reference_present(issuance, holder, {"tier_at_least_silver": True, "name": True})
    expected = {"program": PROGRAM, "tier_at_least_silver": True, "name": "Ada"}

    vc = sd_jwt.verify(pres, issuer_key=issuer.public_key, now=NOW, audience=AUD, nonce=NONCE)
    assert vc.claims == expected
    assert vc.holder_key == holder.public_key

    result = low_level.verify(pres, issuer_keys={KID: issuer.public_key}, audience=AUD,
                              nonce=NONCE, now=NOW)
    assert result.ok, result.errors
    assert result.claims == expected and result.credential_type == MEMBERSHIP.name

    v = _offline_verifier(issuer)
    req = v.create_request(audience=AUD)
    # The reference holder answered a fixed nonce; rebuild its KB for this request.
    h = SDJWTHolder(issuance)
    h.create_presentation({"tier_at_least_silver": True}, nonce=req.nonce, aud=AUD,
                          holder_key=_jwk(holder), sign_alg=holder.alg)
    full = v.verify(h.sd_jwt_presentation, request=req)
    assert full.ok, full.errors
    assert full.claims == {"program": PROGRAM, "tier_at_least_silver": True}
    assert full.issuer == DID


def test_reference_ed25519_kb_is_verified_by_tessera_only() -> None:
    # The reference verifier cannot check an EdDSA KB-JWT (ES256 hard-wired);
    # Tessera verifies it, and still refuses one from the wrong key.
    issuer, holder = generate_signer("ES256"), generate_signer("EdDSA")
    pres = _reference_present(_reference_issue(issuer, holder), holder, {"tier": True})
    vc = sd_jwt.verify(pres, issuer_key=issuer.public_key, now=NOW, audience=AUD, nonce=NONCE)
    assert vc.claims["tier"] == {"name": "gold", "rank": 2}
    assert vc.key_binding is not None
    intruder = generate_signer("EdDSA")
    bad = _reference_present(_reference_issue(issuer, holder), intruder, {"tier": True})
    with pytest.raises(TesseraError) as exc:
        sd_jwt.verify(bad, issuer_key=issuer.public_key, now=NOW, audience=AUD, nonce=NONCE)
    assert exc.value.code is ErrorCode.KEY_BINDING_INVALID


def test_reference_recursive_disclosures() -> None:
    issuer, holder = generate_signer("ES256"), generate_signer("ES256")
    issuance = _reference_issue(issuer, holder, nested=True)
    # Reference holder reveals only tier.name inside tier.
    pres = _reference_present(issuance, holder, {"tier": {"name": True}})
    vc = sd_jwt.verify(pres, issuer_key=issuer.public_key, now=NOW, audience=AUD, nonce=NONCE)
    assert vc.claims["tier"] == {"name": "gold"}
    assert vc.claims == {k: v for k, v in _reference_verify(pres, issuer).items()
                         if k not in ("iss", "iat", "exp", "vct", "cnf")}
    # Tessera's holder presenting a reference credential brings the nested
    # disclosures of a disclosed claim, and the reference verifier accepts it.
    ours = _tessera_present(issuance, holder, ["tier"])
    assert _reference_verify(ours, issuer)["tier"] == {"name": "gold", "rank": 2}
    assert sd_jwt.verify(ours, issuer_key=issuer.public_key, now=NOW, audience=AUD,
                         nonce=NONCE).claims["tier"] == {"name": "gold", "rank": 2}


# -- Tessera issues and presents; the reference verifies -------------------------------------


@pytest.mark.parametrize("issuer_alg", ["EdDSA", "ES256", "ES384"])
def test_tessera_issued_reference_verifies(issuer_alg: str) -> None:
    issuer, holder = generate_signer(issuer_alg), generate_signer("ES256")
    cred = _tessera_issue(issuer, holder)
    pres = _tessera_present(cred, holder, ["tier_at_least_gold", "membership_number"])
    payload = _reference_verify(pres, issuer)
    assert payload["tier_at_least_gold"] is True
    assert payload["membership_number"] == "A-1"
    assert payload["program"] == PROGRAM
    assert payload["iss"] == DID and payload["vct"] == MEMBERSHIP.vct
    assert payload["cnf"] == {"jwk": holder.public_key.to_jwk()}
    assert "tier" not in payload and "name" not in payload
    # And the two verifiers agree on every claim.
    ours = sd_jwt.verify(pres, issuer_key=issuer.public_key, now=NOW, audience=AUD,
                         nonce=NONCE)
    assert ours.payload == payload


def test_reference_holder_presents_tessera_credential() -> None:
    issuer, holder = generate_signer("EdDSA"), generate_signer("ES256")
    cred = _tessera_issue(issuer, holder)
    pres = _reference_present(cred, holder, {"tier_at_least_platinum": True})
    assert _reference_verify(pres, issuer)["tier_at_least_platinum"] is False
    v = sd_jwt.verify(pres, issuer_key=issuer.public_key, now=NOW, audience=AUD, nonce=NONCE)
    assert v.claims == {"program": PROGRAM, "tier_at_least_platinum": False}


def test_reference_catches_tessera_tampering_too() -> None:
    issuer, holder = generate_signer("ES256"), generate_signer("ES256")
    cred = _tessera_issue(issuer, holder)
    pres = _tessera_present(cred, holder, ["tier_at_least_gold"])
    with pytest.raises(ValueError, match="nonce"):
        SDJWTVerifier(pres, lambda iss, header: _public_jwk(issuer), expected_aud=AUD,
                      expected_nonce="other")


# -- why Tessera does not rely on the reference verifier ------------------------------------


def test_reference_accepts_expired_tessera_refuses() -> None:
    issuer, holder = generate_signer("ES256"), generate_signer("ES256")
    expired = _tessera_issue(issuer, holder, expires=NOW - timedelta(days=2))
    pres = _tessera_present(expired, holder, ["tier_at_least_gold"])
    payload = _reference_verify(pres, issuer)  # no exception: exp is not checked
    assert payload["exp"] < NOW.timestamp()
    with pytest.raises(TesseraError) as exc:
        sd_jwt.verify(pres, issuer_key=issuer.public_key, now=NOW, audience=AUD, nonce=NONCE)
    assert exc.value.code is ErrorCode.EXPIRED
    result = low_level.verify(pres, issuer_keys=[issuer.public_key], audience=AUD,
                              nonce=NONCE, now=NOW)
    assert result.errors == ("expired",)


def test_reference_skips_key_binding_without_aud_and_nonce() -> None:
    issuer, holder = generate_signer("ES256"), generate_signer("ES256")
    cred = _tessera_issue(issuer, holder)
    stolen = _tessera_present(cred, generate_signer("ES256"), ["tier_at_least_gold"])
    # The reference verifier, called without aud/nonce, never looks at the KB-JWT.
    assert _reference_verify(stolen, issuer, kb=False)["tier_at_least_gold"] is True
    with pytest.raises(TesseraError) as exc:
        sd_jwt.verify(stolen, issuer_key=issuer.public_key, now=NOW, audience=AUD,
                      nonce=NONCE)
    assert exc.value.code is ErrorCode.KEY_BINDING_INVALID
    # Nor does it notice a missing KB-JWT; Tessera requires one by default.
    bare = sd_jwt.present(cred, disclose=["tier_at_least_gold"], holder=None)
    assert _reference_verify(bare, issuer, kb=False)["tier_at_least_gold"] is True
    with pytest.raises(TesseraError) as exc:
        sd_jwt.verify(bare, issuer_key=issuer.public_key, now=NOW, audience=AUD, nonce=NONCE)
    assert exc.value.code is ErrorCode.KEY_BINDING_MISSING

