"""The verifier service also answers the W3C VC API verify endpoints."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from typer.testing import CliRunner

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


# -- the fetch budget (--fetch-budget / TESSERA_FETCH_BUDGET) reaches every verifier ----------

WEB_ISSUER = "did:web:issuer.example"


def _did_web_credential() -> dict[str, object]:
    """A credential signed by a did:web issuer: verifying it must fetch a DID document."""
    signer = generate_signer("EdDSA").with_key_id(f"{WEB_ISSUER}#k")
    return di.issue({"@context": ["https://www.w3.org/ns/credentials/v2"],
                     "type": ["VerifiableCredential"], "issuer": WEB_ISSUER,
                     "credentialSubject": {"id": "did:example:m"}},
                    signer=signer, cryptosuite="eddsa-rdfc-2022",
                    verification_method=f"{WEB_ISSUER}#k", created=datetime.now(UTC))


class BudgetSeen:
    """A fetcher that records how much of the verification's fetch budget is left."""

    def __init__(self) -> None:
        self.left: list[float] = []

    def fetch(self, url: str, *, accept: str = "application/json") -> bytes:
        from tessera.did import _BUDGET
        from tessera.errors import ErrorCode, TesseraError

        end = _BUDGET.get()
        assert end is not None, "a fetch outside any fetch budget"
        self.left.append(end - time.monotonic())
        raise TesseraError(ErrorCode.DID_RESOLUTION_FAILED, "offline test")


def test_fetch_budget_setting_reaches_both_verifiers_of_the_service(tmp_path: Path) -> None:
    from tessera.errors import TesseraError
    from verifier._service import settings_from_env

    (tmp_path / "trust.json").write_text(json.dumps({"issuers": []}))
    env = {"TESSERA_VERIFIER_TRUST": str(tmp_path / "trust.json"),
           "TESSERA_VERIFIER_STORE": f"sqlite:///{tmp_path / 'v.db'}"}
    assert settings_from_env(env).fetch_budget_seconds == 10
    settings = settings_from_env({**env, "TESSERA_FETCH_BUDGET": "2.5"})
    assert settings.fetch_budget_seconds == 2.5
    for bad in ("0", "-1", "121", "nan", "soon"):
        with pytest.raises(TesseraError) as err:
            settings_from_env({**env, "TESSERA_FETCH_BUDGET": bad})
        assert "TESSERA_FETCH_BUDGET" in err.value.detail
    seen = BudgetSeen()
    settings.resolver = Resolver(seen)
    app = create_app(settings)
    # The OpenID4VP verifier and the VC API verifier both run under the budget.
    assert app.state.service.verifier._fetch_budget == 2.5
    with TestClient(app, base_url="https://shop.test") as client:
        r = client.post("/credentials/verify", json={"verifiableCredential": _did_web_credential()})
    assert r.status_code == 400 and "did_resolution_failed" in r.json()["errors"], r.text
    assert seen.left and all(0 < left <= 2.5 for left in seen.left), seen.left


def test_verifier_serve_takes_fetch_budget_option_and_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tessera.cli import app as cli_app

    served: list[object] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.append(app))
    (tmp_path / "trust.json").write_text(json.dumps({"issuers": []}))
    base = ["verifier", "serve", "--trust", str(tmp_path / "trust.json"),
            "--store", f"sqlite:///{tmp_path / 'v.db'}"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}

    def serve(args: list[str], **env: str) -> tuple[int, str]:
        # serve hands its settings to workers through os.environ: a fresh one per run.
        monkeypatch.setattr(os, "environ", {**clean, **env})
        done = CliRunner().invoke(cli_app, args)
        return done.exit_code, done.output

    assert serve([*base, "--fetch-budget", "2.5"])[0] == 0
    assert serve(base, TESSERA_FETCH_BUDGET="4")[0] == 0
    assert serve(base)[0] == 0
    budgets = [app.state.service.settings.fetch_budget_seconds  # type: ignore[attr-defined]
               for app in served]
    assert budgets == [2.5, 4, 10]
    assert [app.state.service.verifier._fetch_budget  # type: ignore[attr-defined]
            for app in served] == budgets
    code, output = serve([*base, "--fetch-budget", "120.5"])
    assert code == 2 and "TESSERA_FETCH_BUDGET" in output
