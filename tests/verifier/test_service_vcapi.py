"""The verifier service also answers the W3C VC API verify endpoints."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from fastapi.testclient import TestClient

from tessera import credentials
from tessera.did import Resolver, did_jwk, did_key
from tessera.formats import data_integrity as di
from tessera.keys import generate_signer
from verifier._service import ServiceSettings, create_app
from verifier._trust import TrustList


def test_credentials_verify_is_mounted(tmp_path: Path) -> None:
    issuer = generate_signer("EdDSA")
    issuer_did = did_key(issuer.public_key)
    issuer = issuer.with_key_id(f"{issuer_did}#{issuer_did.split(':')[2]}")
    now = datetime.now(UTC)
    claims = credentials.points_claims(
        program={"id": "p", "name": "P", "brand": issuer_did}, membership_number="1",
        balance=10, as_of=now, checkpoint=(1, "A" * 43))
    vc = di.issue(
        di.loyalty_credential(credentials.POINTS, claims, issuer=issuer_did,
                              subject="did:example:member", valid_from=now - timedelta(minutes=1)),
        signer=issuer, cryptosuite="eddsa-rdfc-2022", verification_method=issuer.key_id or "",
        created=now)
    signer = generate_signer("ES256")
    settings = ServiceSettings(
        base_url="https://shop.test", trust=TrustList.of([]),
        signer=signer.with_key_id(did_jwk(signer.public_key) + "#0"),
        client_name="Shop", contacts=(), store_url=f"sqlite:///{tmp_path / 'v.db'}",
        resolver=Resolver(),
    )
    with TestClient(create_app(settings), base_url="https://shop.test") as client:
        ok = client.post("/credentials/verify", json={"verifiableCredential": vc})
        assert ok.status_code == 200 and ok.json()["verified"] is True
        vc["credentialSubject"]["points_balance"] = 10_000
        bad = client.post("/credentials/verify", json={"verifiableCredential": vc})
        assert bad.status_code == 400 and bad.json()["verified"] is False


def test_service_takes_a_pinned_context_manifest_and_the_issuer_key_switch(
    tmp_path: Path,
) -> None:
    import base64
    import hashlib
    import json

    import pytest

    from tessera.errors import TesseraError
    from verifier._service import settings_from_env

    url = "https://partner.test/contexts/shoes/v1"
    raw = json.dumps({"@context": {"@protected": True,
                                   "shoeSize": "https://partner.test/vocab#shoeSize"}}).encode()
    (tmp_path / "shoes.jsonld").write_bytes(raw)
    pin = "sha256-" + base64.b64encode(hashlib.sha256(raw).digest()).decode()
    (tmp_path / "contexts.json").write_text(json.dumps(
        {url: {"file": "shoes.jsonld", "digestSRI": pin}}))
    (tmp_path / "trust.json").write_text(json.dumps({"issuers": []}))
    env = {"TESSERA_VERIFIER_TRUST": str(tmp_path / "trust.json"),
           "TESSERA_VERIFIER_STORE": f"sqlite:///{tmp_path / 'v.db'}",
           "TESSERA_VERIFIER_CONTEXTS": str(tmp_path / "contexts.json"),
           "TESSERA_VERIFIER_ISSUER_MUST_CONTROL_KEY": "false"}
    settings = settings_from_env(env)
    assert settings.loader is not None and settings.loader.known(url)
    assert settings.issuer_must_control_key is False
    assert settings_from_env({**env, "TESSERA_VERIFIER_ISSUER_MUST_CONTROL_KEY": "true"}
                             ).issuer_must_control_key is True
    with pytest.raises(TesseraError):
        settings_from_env({**env, "TESSERA_VERIFIER_ISSUER_MUST_CONTROL_KEY": "maybe"})

    # An https issuer signing with its did:key, under the partner's context.
    issuer = generate_signer("EdDSA")
    issuer_did = did_key(issuer.public_key)
    vm = f"{issuer_did}#{issuer_did.split(':')[2]}"
    vc = di.issue({"@context": ["https://www.w3.org/ns/credentials/v2", url],
                   "type": ["VerifiableCredential"], "issuer": "https://shoes.test",
                   "credentialSubject": {"id": "did:example:m", "shoeSize": 42}},
                  signer=issuer.with_key_id(vm), cryptosuite="eddsa-rdfc-2022",
                  verification_method=vm, created=datetime.now(UTC), loader=settings.loader)
    settings.resolver = Resolver()
    with TestClient(create_app(settings), base_url="https://shop.test") as client:
        r = client.post("/credentials/verify", json={"verifiableCredential": vc})
        assert r.status_code == 200, r.text
    settings.issuer_must_control_key = True
    with TestClient(create_app(settings), base_url="https://shop.test") as client:
        r = client.post("/credentials/verify", json={"verifiableCredential": vc})
        assert r.status_code == 400 and r.json()["errors"] == ["issuer_key_mismatch"]
    settings.loader, settings.issuer_must_control_key = None, False
    with TestClient(create_app(settings), base_url="https://shop.test") as client:
        r = client.post("/credentials/verify", json={"verifiableCredential": vc})
        assert r.status_code == 400 and r.json()["errors"] == ["unsupported_format"]
