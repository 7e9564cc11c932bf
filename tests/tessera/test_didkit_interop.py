"""didkit 0.3.3 interop, both directions, on the suites it knows (VCDM 1.1).

didkit cannot load the loyalty context by URL, so these credentials carry it
inline (the same term definitions). Its verdicts are never trusted alone:
it accepts expired credentials and ignores the ones inside a presentation.
"""

from __future__ import annotations

import asyncio
import copy
import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

didkit = pytest.importorskip("didkit")

from tessera import jsonld  # noqa: E402
from tessera.credentials import membership_claims  # noqa: E402
from tessera.did import Resolver  # noqa: E402
from tessera.errors import ErrorCode, TesseraError  # noqa: E402
from tessera.formats import data_integrity as di  # noqa: E402
from tessera.keys import signer_from_jwk  # noqa: E402

NOW = datetime(2025, 6, 1, tzinfo=UTC)
RESOLVER = Resolver()


def _lookup(vm: str, rel: str) -> Any:
    return RESOLVER.key(vm, relationship=rel)


def _run(call: Any) -> Any:
    # didkit's calls return futures bound to the running loop: call inside one.
    async def wrap() -> Any:
        return await call()
    return asyncio.run(wrap())


def _inline_loyalty() -> dict[str, Any]:
    return dict(jsonld.DocumentLoader()(jsonld.LOYALTY_V1)["document"]["@context"])


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for who in ("issuer", "holder"):
        jwk = didkit.generate_ed25519_key()
        did = didkit.key_to_did("key", jwk)
        vm = _run(lambda jwk=jwk: didkit.key_to_verification_method("key", jwk))
        out[who] = {"jwk": jwk, "did": did, "vm": vm,
                    "signer": signer_from_jwk(json.loads(jwk), key_id=vm)}
    return out


def _credential(keys: dict[str, Any], expires: str = "2026-01-01T00:00:00Z") -> dict[str, Any]:
    claims = membership_claims(
        program={"id": "acme", "name": "Acme", "brand": keys["issuer"]["did"]},
        membership_number="M-7", tier="gold", tiers=[("silver", 1), ("gold", 2)],
        member_since=date(2021, 3, 1), tier_valid_until=date(2026, 1, 1))
    return {"@context": [jsonld.CREDENTIALS_V1, _inline_loyalty()],
            "id": "urn:uuid:0f6c1a1e-0000-4000-8000-000000000001",
            "type": ["VerifiableCredential", "LoyaltyMembershipCredential"],
            "issuer": keys["issuer"]["did"], "issuanceDate": "2025-01-01T00:00:00Z",
            "expirationDate": expires,
            "credentialSubject": {"id": keys["holder"]["did"], **claims}}


def _didkit_issue(keys: dict[str, Any], vc: dict[str, Any], suite: str) -> dict[str, Any]:
    opts = {"proofPurpose": "assertionMethod", "verificationMethod": keys["issuer"]["vm"],
            "type": suite}
    jwk = keys["issuer"]["jwk"]
    out = _run(lambda: didkit.issue_credential(json.dumps(vc), json.dumps(opts), jwk))
    return dict(json.loads(out))


def _didkit_verify(vc: dict[str, Any]) -> list[str]:
    res = json.loads(_run(lambda: didkit.verify_credential(
        json.dumps(vc), json.dumps({"proofPurpose": "assertionMethod"}))))
    return list(res["errors"])


@pytest.mark.parametrize("suite", ["Ed25519Signature2020", "JsonWebSignature2020"])
def test_tessera_verifies_didkit(keys: dict[str, Any], suite: str) -> None:
    vc = _didkit_issue(keys, _credential(keys), suite)
    assert vc["proof"]["type"] == suite
    out = di.verify_credential(vc, key_lookup=_lookup, now=NOW)
    assert out["credentialSubject"]["tier_at_least_gold"] is True
    tampered = copy.deepcopy(vc)
    tampered["credentialSubject"]["tier_at_least_gold"] = False
    with pytest.raises(TesseraError) as err:
        di.verify_credential(tampered, key_lookup=_lookup, now=NOW)
    assert err.value.code == ErrorCode.INVALID_SIGNATURE


@pytest.mark.parametrize("suite", ["Ed25519Signature2020", "JsonWebSignature2020"])
def test_didkit_verifies_tessera(keys: dict[str, Any], suite: str) -> None:
    vc = _credential(keys)
    if suite == "Ed25519Signature2020":
        vc["@context"].insert(1, jsonld.ED25519_2020_V1)
    else:
        vc["@context"].insert(1, jsonld.JWS_2020_V1)
    signer = keys["issuer"]["signer"]
    signed = di.issue(vc, signer=signer, cryptosuite=suite, verification_method=signer.key_id,
                      created=NOW)
    assert _didkit_verify(signed) == []
    tampered = copy.deepcopy(signed)
    tampered["credentialSubject"]["membership_number"] = "M-8"
    assert _didkit_verify(tampered) != []


def test_expired_didkit_credential_is_refused_by_tessera(keys: dict[str, Any]) -> None:
    vc = _didkit_issue(keys, _credential(keys, expires="2025-02-01T00:00:00Z"),
                       "Ed25519Signature2020")
    assert _didkit_verify(vc) == []  # didkit does not look at expiry
    with pytest.raises(TesseraError) as err:
        di.verify_credential(vc, key_lookup=_lookup, now=NOW)
    assert err.value.code == ErrorCode.EXPIRED


def test_presentations_both_ways(keys: dict[str, Any]) -> None:
    vc = _didkit_issue(keys, _credential(keys), "Ed25519Signature2020")
    # didkit presents, Tessera verifies (and also checks the embedded credential)
    vp = {"@context": [jsonld.CREDENTIALS_V1], "type": ["VerifiablePresentation"],
          "holder": keys["holder"]["did"], "verifiableCredential": [vc]}
    popts = {"proofPurpose": "authentication", "verificationMethod": keys["holder"]["vm"],
             "challenge": "n-1", "domain": "partner.example", "type": "Ed25519Signature2020"}
    signed_vp = json.loads(_run(lambda: didkit.issue_presentation(
        json.dumps(vp), json.dumps(popts), keys["holder"]["jwk"])))
    out = di.verify_presentation(signed_vp, key_lookup=_lookup, challenge="n-1",
                                 domain="partner.example", now=NOW)
    assert out[0]["credentialSubject"]["membership_number"] == "M-7"
    with pytest.raises(TesseraError) as err:
        di.verify_presentation(signed_vp, key_lookup=_lookup, challenge="n-2",
                               domain="partner.example", now=NOW)
    assert err.value.code == ErrorCode.NONCE_MISMATCH
    # a tampered embedded credential passes didkit's VP check, not Tessera's
    bad = copy.deepcopy(vp)
    bad["verifiableCredential"][0]["credentialSubject"]["membership_number"] = "M-8"
    bad_vp = json.loads(_run(lambda: didkit.issue_presentation(
        json.dumps(bad), json.dumps(popts), keys["holder"]["jwk"])))
    res = json.loads(_run(lambda: didkit.verify_presentation(json.dumps(bad_vp), json.dumps(
        {"proofPurpose": "authentication", "challenge": "n-1", "domain": "partner.example"}))))
    assert res["errors"] == []
    with pytest.raises(TesseraError) as err:
        di.verify_presentation(bad_vp, key_lookup=_lookup, challenge="n-1",
                               domain="partner.example", now=NOW)
    assert err.value.code == ErrorCode.INVALID_SIGNATURE
    # Tessera presents, didkit verifies
    tessera_vp = di.present([vc], signer=keys["holder"]["signer"], holder=keys["holder"]["did"],
                            challenge="n-3", domain="partner.example", created=NOW)
    res = json.loads(_run(lambda: didkit.verify_presentation(json.dumps(tessera_vp), json.dumps(
        {"proofPurpose": "authentication", "challenge": "n-3", "domain": "partner.example"}))))
    assert res["errors"] == []
