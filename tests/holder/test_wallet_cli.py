"""``tessera wallet``: init, import, list, show, present with a consent screen, consent log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import holder._cli as wallet_cli
from holder import Wallet
from tessera.cli import app
from tessera.did import Resolver, did_jwk
from tessera.keys import generate_signer
from verifier._service import ServiceSettings, create_app
from verifier.testing import TestHolder, TestIssuer

PASS = "correct horse battery"
BASE = "https://till.test"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("TESSERA_WALLET_PASSPHRASE", PASS)
    monkeypatch.setenv("COLUMNS", "200")
    return CliRunner()


@pytest.fixture
def brand() -> TestIssuer:
    return TestIssuer()


@pytest.fixture
def wallet_path(tmp_path: Path, runner: CliRunner) -> Path:
    path = tmp_path / "alice.wallet"
    r = runner.invoke(app, ["wallet", "init", "--wallet", str(path)])
    assert r.exit_code == 0, r.output
    assert r.output.strip().startswith("did:key:z")
    return path


@pytest.fixture
def loaded(wallet_path: Path, runner: CliRunner, brand: TestIssuer, tmp_path: Path) -> Path:
    w = Wallet.open(wallet_path, PASS)
    cred = tmp_path / "gold.sdjwt"
    cred.write_text(brand.issue_membership(TestHolder(w.signer), tier="gold", name="Alice"))
    doc = tmp_path / "brand.json"
    doc.write_text(json.dumps(brand.did_document))
    r = runner.invoke(app, ["wallet", "import", str(cred), "--wallet", str(wallet_path),
                            "--did-document", str(doc)])
    assert r.exit_code == 0, r.output
    assert "LoyaltyMembershipCredential" in r.output
    return wallet_path


@pytest.fixture
def till(brand: TestIssuer, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    signer = generate_signer("ES256")
    signer = signer.with_key_id(did_jwk(signer.public_key) + "#0")
    settings = ServiceSettings(
        base_url=BASE, trust=brand.trust_list(), signer=signer, client_name="Corner Shop",
        contacts=("help@corner.test",), store_url="memory://",
        resolver=Resolver(documents={brand.did: brand.did_document}),
    )
    with TestClient(create_app(settings), base_url=BASE) as client:
        class Shared(httpx.Client):
            # The CLI closes its client; the till's must outlive one command.
            def __enter__(self) -> Any:
                return client

            def __exit__(self, *exc: object) -> None:
                return None

        monkeypatch.setattr(wallet_cli, "_http_client", Shared)
        yield client


def _checkout(till: TestClient) -> dict[str, Any]:
    r = till.post("/requests", json={"policy": "gold-10"})
    assert r.status_code == 201
    return dict(r.json())


def test_init_refuses_an_existing_wallet(wallet_path: Path, runner: CliRunner) -> None:
    r = runner.invoke(app, ["wallet", "init", "--wallet", str(wallet_path)])
    assert r.exit_code == 2 and "conflict" in r.output


def test_wrong_passphrase(loaded: Path, runner: CliRunner,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_WALLET_PASSPHRASE", "not the passphrase")
    r = runner.invoke(app, ["wallet", "list", "--wallet", str(loaded)])
    assert r.exit_code == 2 and "wrong_passphrase" in r.output


def test_import_refuses_a_credential_for_someone_else(
    wallet_path: Path, runner: CliRunner, brand: TestIssuer, tmp_path: Path,
) -> None:
    cred = tmp_path / "other.sdjwt"
    cred.write_text(brand.issue_membership(TestHolder(generate_signer("ES256"))))
    doc = tmp_path / "brand.json"
    doc.write_text(json.dumps(brand.did_document))
    r = runner.invoke(app, ["wallet", "import", str(cred), "--wallet", str(wallet_path),
                            "--did-document", str(doc)])
    assert r.exit_code == 2 and "key_binding_invalid" in r.output


def test_list_and_show(loaded: Path, runner: CliRunner) -> None:
    r = runner.invoke(app, ["wallet", "list", "--wallet", str(loaded)])
    assert r.exit_code == 0 and "LoyaltyMembershipCredential" in r.output
    short = Wallet.open(loaded, PASS).credentials()[0].id[:8]
    assert short in r.output
    r = runner.invoke(app, ["wallet", "show", short, "--wallet", str(loaded)])
    assert r.exit_code == 0 and "Alice" in r.output and "tier_at_least_gold" in r.output
    r = runner.invoke(app, ["wallet", "show", "zzzz", "--wallet", str(loaded)])
    assert r.exit_code == 2 and "not_found" in r.output


def test_receive_by_offer_says_what_it_needs(loaded: Path, runner: CliRunner) -> None:
    r = runner.invoke(app, ["wallet", "receive", "openid-credential-offer://?x=1",
                            "--wallet", str(loaded)])
    assert r.exit_code == 2 and "issuer service" in r.output and "import" in r.output


def test_present_shows_consent_and_shares_on_yes(loaded: Path, runner: CliRunner,
                                                 till: TestClient) -> None:
    created = _checkout(till)
    r = runner.invoke(app, ["wallet", "present", created["deep_link"], "--wallet", str(loaded)],
                      input="y\n")
    assert r.exit_code == 0, r.output
    screen = r.output
    for expected in ("Corner Shop", created["client_id"], "help@corner.test",
                     "Apply the 10% discount", "tier_at_least_gold", "shared", "withheld",
                     "name", "membership_number"):
        assert expected in screen, expected
    assert "Alice" not in screen  # withheld values are never shown, only their names
    result = till.get(created["result"]).json()["result"]
    assert result["ok"] and result["claims"]["tier_at_least_gold"] is True


def test_present_declined_shares_nothing(loaded: Path, runner: CliRunner,
                                         till: TestClient) -> None:
    created = _checkout(till)
    r = runner.invoke(app, ["wallet", "present", created["deep_link"], "--wallet", str(loaded)],
                      input="n\n")
    assert r.exit_code == 1 and "Nothing was shared" in r.output
    assert till.get(created["result"]).json()["result"]["errors"] == ["consent_denied"]
    log = json.loads(runner.invoke(app, ["wallet", "consents", "export",
                                         "--wallet", str(loaded)]).output)
    assert log[-1]["event"] == "declined" and log[-1]["verifier_name"] == "Corner Shop"


def test_yes_flag_scripts_consent_and_the_log_records_it(
    loaded: Path, runner: CliRunner, till: TestClient, tmp_path: Path,
) -> None:
    created = _checkout(till)
    r = runner.invoke(app, ["wallet", "present", created["deep_link"], "--yes",
                            "--wallet", str(loaded)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["wallet", "consents", "list", "--wallet", str(loaded)])
    assert r.exit_code == 0 and "shared" in r.output and "Corner Shop" in r.output
    target = tmp_path / "consents.json"
    r = runner.invoke(app, ["wallet", "consents", "export", "--output", str(target),
                            "--wallet", str(loaded)])
    assert r.exit_code == 0
    (record,) = json.loads(target.read_text())
    assert record["event"] == "shared" and record["verifier_id"] == created["client_id"]
    assert record["claims"] == {"LoyaltyMembershipCredential": ["program",
                                                                "tier_at_least_gold"]}
    assert record["purpose"].startswith("Apply the 10% discount")


def test_withdrawn_verifier_is_refused_until_granted(loaded: Path, runner: CliRunner,
                                                     till: TestClient) -> None:
    client_id = _checkout(till)["client_id"]
    r = runner.invoke(app, ["wallet", "consents", "withdraw", client_id, "--wallet",
                            str(loaded)])
    assert r.exit_code == 0
    created = _checkout(till)
    r = runner.invoke(app, ["wallet", "present", created["deep_link"], "--yes",
                            "--wallet", str(loaded)])
    assert r.exit_code == 1 and "withdrawn" in r.output
    assert "Consent" not in r.output  # refused before any screen
    assert till.get(created["result"]).json()["result"]["errors"] == ["consent_denied"]
    runner.invoke(app, ["wallet", "consents", "grant", client_id, "--wallet", str(loaded)])
    created = _checkout(till)
    r = runner.invoke(app, ["wallet", "present", created["deep_link"], "--yes",
                            "--wallet", str(loaded)])
    assert r.exit_code == 0, r.output
    events = [c["event"] for c in json.loads(runner.invoke(
        app, ["wallet", "consents", "export", "--wallet", str(loaded)]).output)]
    assert events == ["withdrawn", "regranted", "shared"]


def test_present_refuses_a_bad_request_uri(loaded: Path, runner: CliRunner,
                                           till: TestClient) -> None:
    created = _checkout(till)
    till.get(f"/requests/{created['id']}/object")  # someone else fetched it first
    r = runner.invoke(app, ["wallet", "present", created["deep_link"], "--yes",
                            "--wallet", str(loaded)])
    assert r.exit_code == 2 and "invalid_request" in r.output
