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
