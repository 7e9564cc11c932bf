"""The verifier service's liveness and readiness (tessera.health): /readyz checks the
store and the key a checkout needs, and says which failed."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tessera.did import did_jwk
from tessera.keys import generate_signer
from verifier._service import ServiceSettings, create_app
from verifier._trust import TrustList


def _settings(store_url: str) -> ServiceSettings:
    signer = generate_signer("ES256")
    signer = signer.with_key_id(did_jwk(signer.public_key) + "#0")
    trust = TrustList.from_dict({"issuers": [{"id": "did:web:acme.example", "name": "Acme",
                                              "credential_types": ["LoyaltyPointsCredential"]}]})
    return ServiceSettings(base_url="https://till.test", trust=trust, signer=signer,
                           store_url=store_url)


def test_ready_when_store_and_key_answer() -> None:
    settings = _settings("memory://")
    with TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        r = c.get("/readyz")
        assert r.status_code == 200, r.text
        assert r.json() == {"status": "ready", "checks": {
            "store": "ok", "key": settings.signer.key_id if settings.signer else "",
            "trust_list": "1 trusted issuers"}}


def test_not_ready_when_the_store_does_not_answer() -> None:
    # Redis on a closed port: live (the process answers), not ready, no address leaked.
    with TestClient(create_app(_settings("redis://127.0.0.1:1/0"))) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert body["code"] == "database_unavailable"
        assert body["checks"]["store"].startswith("database_unavailable: the session and "
                                                  "nonce store did not answer (")
        assert body["checks"]["key"].startswith("did:jwk:")
        assert "127.0.0.1" not in r.text
