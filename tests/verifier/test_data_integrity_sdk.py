"""Data Integrity presentations through the same SDK and the same error codes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tessera import credentials
from tessera.did import HttpFetcher, Resolver, did_key
from tessera.formats import data_integrity as di
from tessera.keys import LocalSigner, generate_signer
from tessera.status import BitstringStatusList, bitstring_status_list_credential
from verifier import TrustList, Verifier, default_status_check
from verifier import data_integrity as low_level

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
PARTNER = "https://partner.test"
LIST_URL = "https://brand.test/status/1"


def _did_signer(alg: str) -> tuple[LocalSigner, str]:
    signer = generate_signer(alg)
    did = did_key(signer.public_key)
    return signer.with_key_id(f"{did}#{did.split(':')[2]}"), did


@pytest.fixture
def parties() -> dict[str, Any]:
    issuer, issuer_did = _did_signer("ES256")
    holder, holder_did = _did_signer("EdDSA")
    return {"issuer": issuer, "issuer_did": issuer_did, "holder": holder, "holder_did": holder_did}


def _membership(p: dict[str, Any], *, suite: str = "eddsa-rdfc-2022",
                status: dict[str, Any] | None = None, signer_alg: str = "EdDSA",
                valid_until: datetime | None = None) -> dict[str, Any]:
    claims = credentials.membership_claims(
        program={"id": "acme-rewards", "name": "Acme", "brand": p["issuer_did"]},
        membership_number="M-9", tier="gold", tiers=[("silver", 1), ("gold", 2)],
        member_since=NOW.date(), tier_valid_until=NOW.date(), name="Alice",
    )
    vc = di.loyalty_credential(
        credentials.MEMBERSHIP, claims, issuer=p["issuer_did"], subject=p["holder_did"],
        valid_from=NOW - timedelta(days=1), valid_until=valid_until or NOW + timedelta(days=30),
        status=status,
    )
    if suite == "eddsa-rdfc-2022":
        signer, did = _did_signer("EdDSA")
        p["issuer"], p["issuer_did"] = signer, did
        vc["issuer"] = did
        vc["credentialSubject"]["program"]["brand"] = did
    return di.issue(vc, signer=p["issuer"], cryptosuite=suite,
                    verification_method=p["issuer"].key_id, created=NOW)


def _verifier(p: dict[str, Any], **kwargs: Any) -> Verifier:
    trust = TrustList.of([(p["issuer_did"], [credentials.MEMBERSHIP.name])])
    return Verifier(trust=trust, resolver=Resolver(), clock=lambda: NOW, **kwargs)


def test_eddsa_presentation_verifies_and_replay_is_refused(parties: dict[str, Any]) -> None:
    signed = _membership(parties)
    v = _verifier(parties)
    req = v.create_request(audience=PARTNER)
    vp = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                    challenge=req.nonce, domain=PARTNER, created=NOW)
    result = v.verify(vp, request=req)
    assert result.ok, result.errors
    assert result.credential_type == "LoyaltyMembershipCredential"
    assert result.holder == parties["holder_did"] and result.claims["tier"]["name"] == "gold"
    assert v.verify(vp, request=req).errors == ("replayed",)


def test_ecdsa_sd_derived_presentation_reveals_only_what_was_asked(
    parties: dict[str, Any],
) -> None:
    signed = _membership(parties, suite="ecdsa-sd-2023")
    derived = di.derive(signed, selective_pointers=["/credentialSubject/tier_at_least_silver"])
    assert "name" not in derived["credentialSubject"]
    v = _verifier(parties)
    dcql = {"credentials": [{
        "id": "m", "format": "ldp_vc",
        "meta": {"type_values": [["VerifiableCredential", "LoyaltyMembershipCredential"]]},
        "claims": [{"path": ["credentialSubject", "tier_at_least_silver"], "values": [True]}],
    }]}
    req = v.create_request(audience=PARTNER, dcql=dcql)
    vp = di.present([derived], signer=parties["holder"], holder=parties["holder_did"],
                    challenge=req.nonce, domain=PARTNER, created=NOW)
    result = v.verify({"m": [vp]}, request=req)
    assert result.ok, result.errors
    assert result.claims == {"tier_at_least_silver": True}


def test_wrong_challenge_domain_and_untrusted_issuer(parties: dict[str, Any]) -> None:
    signed = _membership(parties)
    v = _verifier(parties)
    req = v.create_request(audience=PARTNER)
    other = v.create_request(audience=PARTNER)
    stale = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                       challenge=other.nonce, domain=PARTNER, created=NOW)
    assert v.verify(stale, request=req).errors == ("nonce_mismatch",)
    elsewhere = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                           challenge=req.nonce, domain="https://evil.test", created=NOW)
    assert v.verify(elsewhere, request=req).errors == ("audience_mismatch",)
    nobody = Verifier(trust=TrustList.of([]), resolver=Resolver(), clock=lambda: NOW)
    req2 = nobody.create_request(audience=PARTNER)
    vp = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                    challenge=req2.nonce, domain=PARTNER, created=NOW)
    assert nobody.verify(vp, request=req2).errors == ("untrusted_issuer",)


def test_tampered_claim_and_expired_credential(parties: dict[str, Any]) -> None:
    signed = _membership(parties)
    signed["credentialSubject"]["tier"]["name"] = "platinum"
    v = _verifier(parties)
    req = v.create_request(audience=PARTNER)
    vp = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                    challenge=req.nonce, domain=PARTNER, created=NOW)
    assert v.verify(vp, request=req).errors == ("invalid_signature",)
    old = _membership(parties, valid_until=NOW - timedelta(hours=1))
    v = _verifier(parties)  # _membership made a new issuer DID for the eddsa suite
    req = v.create_request(audience=PARTNER)
    vp = di.present([old], signer=parties["holder"], holder=parties["holder_did"],
                    challenge=req.nonce, domain=PARTNER, created=NOW)
    assert v.verify(vp, request=req).errors == ("expired",)


def _status_fetcher(issuer: LocalSigner, issuer_did: str, revoked: set[int]) -> HttpFetcher:
    bits = BitstringStatusList()
    for i in revoked:
        bits.set(i, 1)
    body = bitstring_status_list_credential(
        bits, credential_id=LIST_URL, issuer=issuer_did, status_purpose="revocation",
        valid_from=NOW - timedelta(days=1),
    )
    signed = di.issue(body, signer=issuer, cryptosuite="ecdsa-rdfc-2019",
                      verification_method=issuer.key_id or "", created=NOW)

    def handler(request: httpx.Request) -> httpx.Response:
        assert str(request.url) == LIST_URL
        return httpx.Response(200, content=json.dumps(signed).encode())

    return HttpFetcher(httpx.Client(transport=httpx.MockTransport(handler)),
                       is_public_host=lambda host: True)


@pytest.mark.parametrize(("index", "expected"), [(5, ()), (7, ("revoked",))])
def test_bitstring_status_is_checked(
    parties: dict[str, Any], index: int, expected: tuple[str, ...],
) -> None:
    status = {"id": f"{LIST_URL}#{index}", "type": "BitstringStatusListEntry",
              "statusPurpose": "revocation", "statusListIndex": str(index),
              "statusListCredential": LIST_URL}
    signed = _membership(parties, suite="ecdsa-rdfc-2019", status=status)
    resolver = Resolver()
    fetcher = _status_fetcher(parties["issuer"], parties["issuer_did"], revoked={7})
    v = _verifier(parties, status_check=default_status_check(resolver, fetcher))
    req = v.create_request(audience=PARTNER)
    vp = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                    challenge=req.nonce, domain=PARTNER, created=NOW)
    assert v.verify(vp, request=req).errors == expected


def test_status_list_signed_by_someone_else_is_unavailable(parties: dict[str, Any]) -> None:
    status = {"type": "BitstringStatusListEntry", "statusPurpose": "revocation",
              "statusListIndex": "3", "statusListCredential": LIST_URL}
    signed = _membership(parties, suite="ecdsa-rdfc-2019", status=status)
    mallory, mallory_did = _did_signer("ES256")
    v = _verifier(parties, status_check=default_status_check(
        Resolver(), _status_fetcher(mallory, mallory_did, revoked=set())))
    req = v.create_request(audience=PARTNER)
    vp = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                    challenge=req.nonce, domain=PARTNER, created=NOW)
    assert v.verify(vp, request=req).errors == ("status_unavailable",)


def test_low_level_verify_with_given_keys(parties: dict[str, Any]) -> None:
    signed = _membership(parties, suite="ecdsa-rdfc-2019")
    keys = {parties["issuer"].key_id: parties["issuer"].public_key}
    assert low_level.verify(signed, keys=keys, now=NOW).ok
    vp = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                    challenge="c" * 20, domain=PARTNER, created=NOW)
    result = low_level.verify(vp, keys=keys, now=NOW, challenge="c" * 20, domain=PARTNER)
    assert result.ok and result.holder == parties["holder_did"]
    # The given keys win over resolution: the wrong key for that method fails.
    wrong = {parties["issuer"].key_id: generate_signer("ES256").public_key}
    assert low_level.verify(vp, keys=wrong, now=NOW, challenge="c" * 20,
                            domain=PARTNER).errors == ("invalid_signature",)
    assert low_level.verify(vp, keys=keys, now=NOW).errors == ("invalid_request",)
    assert low_level.verify({"type": "nonsense"}, keys=keys, now=NOW).errors == ("malformed",)


def test_a_failing_nonce_store_fails_closed_with_a_code(parties: dict[str, Any]) -> None:
    class Down:
        def issue(self, value: str, *, ttl_seconds: int, data: Any = None) -> None:
            return None

        def consume(self, value: str) -> Any:
            raise ConnectionError("redis is down")

    signed = _membership(parties)
    v = _verifier(parties, nonces=Down())
    req = v.create_request(audience=PARTNER)
    vp = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                    challenge=req.nonce, domain=PARTNER, created=NOW)
    result = v.verify(vp, request=req)
    assert not result.ok and result.errors == ("internal_error",)


# -- issue 9: operator contexts, holder objects, the issuer-key policy ----------------

PARTNER_CTX = "https://partner.test/contexts/shoes/v1"


def _pinned_loader(tmp_path: Any) -> Any:
    import base64
    import hashlib

    from tessera import jsonld

    raw = json.dumps({"@context": {
        "@protected": True, "shoeSize": "https://partner.test/vocab#shoeSize"}}).encode()
    (tmp_path / "shoes.jsonld").write_bytes(raw)
    pin = "sha256-" + base64.b64encode(hashlib.sha256(raw).digest()).decode()
    (tmp_path / "contexts.json").write_text(json.dumps(
        {PARTNER_CTX: {"file": "shoes.jsonld", "digestSRI": pin}}))
    return jsonld.DocumentLoader.from_manifest(tmp_path / "contexts.json")


def _partner_credential(p: dict[str, Any], loader: Any) -> dict[str, Any]:
    vc = {"@context": ["https://www.w3.org/ns/credentials/v2", PARTNER_CTX],
          "type": ["VerifiableCredential"], "issuer": p["issuer_did"],
          "validFrom": "2026-01-01T00:00:00Z",
          "credentialSubject": {"id": p["holder_did"], "shoeSize": 42}}
    return di.issue(vc, signer=p["issuer"], cryptosuite="ecdsa-rdfc-2019",
                    verification_method=p["issuer"].key_id, created=NOW, loader=loader)


def test_sdk_verifies_a_credential_with_an_operator_pinned_context(
    parties: dict[str, Any], tmp_path: Any,
) -> None:
    loader = _pinned_loader(tmp_path)
    signed = _partner_credential(parties, loader)
    keys = {parties["issuer"].key_id: parties["issuer"].public_key}
    # Offline by default: a context nobody configured is refused, never fetched.
    assert low_level.verify(signed, keys=keys, now=NOW).errors == ("unsupported_format",)
    result = low_level.verify(signed, keys=keys, now=NOW, loader=loader)
    assert result.ok and result.claims == {"shoeSize": 42}
    vp = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                    challenge="c" * 20, domain=PARTNER, created=NOW, loader=loader)
    assert low_level.verify(vp, keys=keys, now=NOW, challenge="c" * 20, domain=PARTNER,
                            loader=loader).ok


def test_low_level_verify_takes_a_holder_object_and_the_issuer_key_switch(
    parties: dict[str, Any],
) -> None:
    signed = _membership(parties, suite="ecdsa-rdfc-2019")
    keys = {parties["issuer"].key_id: parties["issuer"].public_key}
    vp = di.present([signed], signer=parties["holder"], holder=parties["holder_did"],
                    challenge="c" * 20, domain=PARTNER, created=NOW)
    vp["holder"] = {"id": parties["holder_did"]}
    result = low_level.verify(vp, keys=keys, now=NOW, challenge="c" * 20, domain=PARTNER)
    assert result.ok and result.holder == parties["holder_did"]
    # An https issuer whose key is a did:key: refused by policy, accepted with it off.
    unsigned = {k: v for k, v in signed.items() if k != "proof"}
    unsigned["issuer"] = "https://brand.test"
    foreign = di.issue(unsigned, signer=parties["issuer"], cryptosuite="ecdsa-rdfc-2019",
                       verification_method=parties["issuer"].key_id, created=NOW)
    assert low_level.verify(foreign, keys=keys, now=NOW).errors == ("issuer_key_mismatch",)
    assert low_level.verify(foreign, keys=keys, now=NOW, issuer_must_control_key=False).ok


def test_verifier_sdk_takes_a_loader_and_the_issuer_key_switch(
    parties: dict[str, Any], tmp_path: Any,
) -> None:
    loader = _pinned_loader(tmp_path)
    # The SDK wants loyalty types; a membership credential with the partner
    # context added shows that the loader reaches ldp_vc verification.
    member = _membership(parties, suite="ecdsa-rdfc-2019")
    unsigned = {k: v for k, v in member.items() if k != "proof"}
    unsigned["@context"] = [*unsigned["@context"], PARTNER_CTX]
    with_ctx = di.issue(unsigned, signer=parties["issuer"], cryptosuite="ecdsa-rdfc-2019",
                        verification_method=parties["issuer"].key_id, created=NOW, loader=loader)

    def run(v: Verifier, cred: dict[str, Any]) -> tuple[str, ...]:
        req = v.create_request(audience=PARTNER)
        vp = di.present([cred], signer=parties["holder"], holder=parties["holder_did"],
                        challenge=req.nonce, domain=PARTNER, created=NOW, loader=loader)
        vp["holder"] = {"id": parties["holder_did"]}
        return v.verify(vp, request=req).errors

    assert run(_verifier(parties), with_ctx) == ("unsupported_format",)
    assert run(_verifier(parties, loader=loader), with_ctx) == ()
    # The issuer-key policy: an https issuer signing with its did:key.
    foreign_unsigned = {k: v for k, v in member.items() if k != "proof"}
    foreign_unsigned["issuer"] = "https://brand.test"
    foreign = di.issue(foreign_unsigned, signer=parties["issuer"], cryptosuite="ecdsa-rdfc-2019",
                       verification_method=parties["issuer"].key_id, created=NOW)
    trust = TrustList.of([("https://brand.test", [credentials.MEMBERSHIP.name])])
    strict = Verifier(trust=trust, resolver=Resolver(), clock=lambda: NOW)
    lax = Verifier(trust=trust, resolver=Resolver(), clock=lambda: NOW,
                   issuer_must_control_key=False)
    assert run(strict, foreign) == ("issuer_key_mismatch",)
    assert run(lax, foreign) == ()


def test_with_the_issuer_key_policy_off_a_foreign_web_key_is_still_trust_checked(
    parties: dict[str, Any],
) -> None:
    # Off means "another DID's key may sign", not "fetch whatever DID a
    # credential names": a did:web key of an unlisted party is untrusted_issuer
    # and causes no resolution at all.
    asked: list[str] = []

    class Recording(Resolver):
        def resolve(self, did: str) -> Any:
            asked.append(did)
            return super().resolve(did)

    member = _membership(parties, suite="ecdsa-rdfc-2019")
    unsigned = {k: v for k, v in member.items() if k != "proof"}
    unsigned["issuer"] = "https://brand.test"
    foreign = di.issue(unsigned, signer=parties["issuer"], cryptosuite="ecdsa-rdfc-2019",
                       verification_method="did:web:elsewhere.test#k1", created=NOW)
    trust = TrustList.of([("https://brand.test", [credentials.MEMBERSHIP.name])])
    lax = Verifier(trust=trust, resolver=Recording(), clock=lambda: NOW,
                   issuer_must_control_key=False)
    req = lax.create_request(audience=PARTNER)
    vp = di.present([foreign], signer=parties["holder"], holder=parties["holder_did"],
                    challenge=req.nonce, domain=PARTNER, created=NOW)
    assert lax.verify(vp, request=req).errors == ("untrusted_issuer",)
    assert not any(d.startswith("did:web:") for d in asked)
