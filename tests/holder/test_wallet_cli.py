"""``tessera wallet``: init, import, receive (OpenID4VCI), list, show, present with a consent
screen, consent log."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import holder._cli as wallet_cli
from holder import Wallet
from tessera.cli import app
from tessera.did import Resolver, did_jwk, did_web
from tessera.keys import generate_signer
from tests.issuer.conftest import FakeClock, Service
from verifier._service import ServiceSettings, create_app
from verifier._tills import TillKeys
from verifier.testing import TestHolder, TestIssuer

PASS = "correct horse battery"
BASE = "https://till.test"
# The till's key rides on the till's calls only; the wallet CLI's calls carry none.
TILLS = TillKeys()
TILL = {"Authorization": f"Bearer {TILLS.create('lane 1')['token']}"}


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
        resolver=Resolver(documents={brand.did: brand.did_document}), tills=TILLS,
    )
    with TestClient(create_app(settings), base_url=BASE) as client:
        monkeypatch.setattr(wallet_cli, "_http_client", _shared(client))
        yield client


def _shared(client: TestClient) -> type[httpx.Client]:
    class Shared(httpx.Client):
        # The CLI closes its client; the app's must outlive one command.
        def __enter__(self) -> Any:
            return client

        def __exit__(self, *exc: object) -> None:
            return None

    return Shared


def _result(till: TestClient, created: dict[str, Any]) -> dict[str, Any]:
    return dict(till.get(created["result"], headers=TILL).json()["result"])


def _checkout(till: TestClient) -> dict[str, Any]:
    r = till.post("/requests", json={"policy": "gold-10"}, headers=TILL)
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


@pytest.fixture
def acme(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """Acme's issuer service (SQLite, real clock: the CLI wallet uses the real time),
    reached by the CLI's HTTP client through the ASGI app."""
    from issuer._app import create_app as create_issuer_app
    from issuer._db import make_engine
    from issuer._settings import Settings
    from issuer.migrations import upgrade

    settings = Settings(database_url=f"sqlite:///{tmp_path / 'issuer.db'}",
                        master_key=secrets.token_bytes(32), public_url="https://issuer.example",
                        # No batches, so no key attestations asked: these tests are
                        # about the offer flow on the DID key; pools: test_pool.py.
                        batch_size=1)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    with TestClient(create_issuer_app(settings, engine=engine)) as client:
        monkeypatch.setattr(wallet_cli, "_http_client", _shared(client))
        service = Service(client=client, engine=engine, settings=settings,
                          clock=FakeClock(datetime.now(UTC)))
        service.brand("acme")
        yield service
    engine.dispose()


def _member_offer(acme: Service, wallet_path: Path, tmp_path: Path,
                  **extra: Any) -> tuple[dict[str, Any], Path]:
    """Enrol the CLI wallet's DID at Acme with 1,250 points; an offer of both SD-JWT VCs
    and the brand's pinned DID document."""
    program = acme.program("acme")
    member = acme.enrol("acme", program["id"], Wallet.open(wallet_path, PASS).signer)
    r = acme.post("acme", f"/admin/v1/members/{member['id']}/points/earn", {"points": 1250})
    assert r.status_code == 201, r.text
    r = acme.client.post(f"/admin/v1/members/{member['id']}/offers", headers=acme.h("acme"),
                         json={"credential_configuration_ids": [
                             "LoyaltyMembershipCredential_sd_jwt",
                             "LoyaltyPointsCredential_sd_jwt"], **extra})
    assert r.status_code == 201, r.text
    doc = tmp_path / "acme.json"
    doc.write_text(json.dumps(acme.client.get("/brands/acme/did.json").json()))
    return dict(r.json()), doc


def test_receive_by_offer_with_tx_code(acme: Service, wallet_path: Path, runner: CliRunner,
                                       tmp_path: Path) -> None:
    offer, doc = _member_offer(acme, wallet_path, tmp_path, tx_code={"length": 6})
    r = runner.invoke(app, ["wallet", "receive", offer["offer_uri"], "--tx-code",
                            offer["tx_code"], "--wallet", str(wallet_path),
                            "--did-document", str(doc)])
    assert r.exit_code == 0, r.output
    stored = Wallet.open(wallet_path, PASS).credentials()
    assert sorted(c.credential_type for c in stored) == ["LoyaltyMembershipCredential",
                                                         "LoyaltyPointsCredential"]
    for cred in stored:
        assert f"{cred.id}  {cred.credential_type}  from {cred.issuer}" in r.output
        assert cred.issuer == "did:web:issuer.example:brands:acme"
    points = next(c for c in stored if c.credential_type == "LoyaltyPointsCredential")
    assert points.claims["points_balance"] == 1250
    # The offer is spent: receiving it again is refused and keeps nothing more.
    r = runner.invoke(app, ["wallet", "receive", offer["offer_uri"], "--tx-code",
                            offer["tx_code"], "--wallet", str(wallet_path),
                            "--did-document", str(doc)])
    assert r.exit_code == 2 and "invalid_request" in r.output and "invalid_grant" in r.output
    assert len(Wallet.open(wallet_path, PASS).credentials()) == 2


def test_receive_refuses_a_missing_or_wrong_tx_code(acme: Service, wallet_path: Path,
                                                    runner: CliRunner, tmp_path: Path) -> None:
    offer, doc = _member_offer(acme, wallet_path, tmp_path, tx_code={"length": 6})
    base = ["wallet", "receive", offer["offer_uri"], "--wallet", str(wallet_path),
            "--did-document", str(doc)]
    r = runner.invoke(app, base)
    assert r.exit_code == 2 and "invalid_request" in r.output and "tx_code" in r.output
    wrong = "000000" if offer["tx_code"] != "000000" else "111111"
    r = runner.invoke(app, [*base, "--tx-code", wrong])
    assert r.exit_code == 2 and "invalid_grant" in r.output
    assert Wallet.open(wallet_path, PASS).credentials() == []


def test_present_resolves_a_did_web_verifier(loaded: Path, runner: CliRunner, brand: TestIssuer,
                                            monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    """`tessera verifier serve` signs as the did:web of its base URL (issue 11 item 9):
    the wallet checks the request object with the key that DID's document names."""
    signer = generate_signer("ES256").with_key_id(did_web(BASE) + "#0")
    settings = ServiceSettings(
        base_url=BASE, trust=brand.trust_list(), signer=signer, client_name="Corner Shop",
        store_url="memory://", resolver=Resolver(documents={brand.did: brand.did_document}),
        tills=TILLS,
    )
    with TestClient(create_app(settings), base_url=BASE) as client:
        monkeypatch.setattr(wallet_cli, "_http_client", _shared(client))
        created = _checkout(client)
        assert created["client_id"] == f"decentralized_identifier:{did_web(BASE)}"
        # Without a way to resolve the verifier's DID the wallet shares nothing.
        r = runner.invoke(app, ["wallet", "present", created["deep_link"], "--yes",
                                "--wallet", str(loaded)])
        assert r.exit_code == 2 and "did_resolution_failed" in r.output, r.output
        # Pinned (as a wallet would fetch it from https://till.test/.well-known/did.json).
        doc = tmp_path / "verifier.json"
        doc.write_text(client.get("/.well-known/did.json").text)
        created = _checkout(client)
        r = runner.invoke(app, ["wallet", "present", created["deep_link"], "--yes",
                                "--wallet", str(loaded), "--did-document", str(doc)])
        assert r.exit_code == 0, r.output
        assert client.get(created["result"], headers=TILL).json()["result"]["ok"] is True


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
    result = till.get(created["result"], headers=TILL).json()["result"]
    assert result["ok"] and result["claims"]["tier_at_least_gold"] is True


def test_present_declined_shares_nothing(loaded: Path, runner: CliRunner,
                                         till: TestClient) -> None:
    created = _checkout(till)
    r = runner.invoke(app, ["wallet", "present", created["deep_link"], "--wallet", str(loaded)],
                      input="n\n")
    assert r.exit_code == 1 and "Nothing was shared" in r.output
    assert _result(till, created)["errors"] == ["consent_denied"]
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
    assert _result(till, created)["errors"] == ["consent_denied"]
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
    till.get(f"/r/{created['id']}")  # someone else fetched it first
    r = runner.invoke(app, ["wallet", "present", created["deep_link"], "--yes",
                            "--wallet", str(loaded)])
    assert r.exit_code == 2 and "invalid_request" in r.output


# -- enrolment and bringing one's own key ------------------------------------------------------


def test_wallet_enrol_signs_the_issuers_challenge(
        tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    from issuer._admin import ENROLMENT_TYP
    from issuer._settings import generate_master_key
    from tessera.jose import decode_unverified

    monkeypatch.setenv("TESSERA_DATABASE_URL", f"sqlite:///{tmp_path}/issuer.db")
    monkeypatch.setenv("TESSERA_MASTER_KEY", generate_master_key())
    monkeypatch.setenv("TESSERA_WALLET", str(tmp_path / "w.wallet"))

    def issuer(*args: str) -> Any:
        r = runner.invoke(app, ["issuer", *args])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    issuer("migrate")
    issuer("brand", "create", "acme", "--name", "Acme")
    program = issuer("program", "create", "-b", "acme", "--name", "R", "--tier", "blue:0:0")
    did = runner.invoke(app, ["wallet", "init"]).stdout.strip()
    assert runner.invoke(app, ["wallet", "did"]).stdout.strip() == did  # no passphrase needed
    challenge = tmp_path / "challenge.json"
    challenge.write_text(json.dumps(issuer("member", "challenge", "-b", "acme")))
    signed = runner.invoke(app, ["wallet", "enrol", str(challenge)])
    assert signed.exit_code == 0, signed.output
    proof = signed.stdout.strip()
    decoded = decode_unverified(proof)
    assert decoded.header["typ"] == ENROLMENT_TYP
    assert decoded.header["kid"].startswith(did + "#")
    assert set(decoded.payload) == {"iss", "aud", "nonce", "iat"}
    member = issuer("member", "enrol", "-b", "acme", "--program", program["id"], "--did", did,
                    "--proof", proof)
    assert member["did"] == did
    # stdin works too; a challenge that is not one is refused clearly.
    bad = runner.invoke(app, ["wallet", "enrol", "-"], input='{"nonce": "n"}')
    assert bad.exit_code == 2 and "error malformed: an enrolment challenge" in bad.output
    other = runner.invoke(app, ["wallet", "enrol", "-"], input=json.dumps(
        {"nonce": "n", "audience": "did:web:x", "typ": "other+jwt"}))
    assert other.exit_code == 2 and "unsupported_format" in other.output
    late = runner.invoke(app, ["wallet", "enrol", "-"], input=json.dumps(
        {"nonce": "n", "audience": "did:web:x", "expires_at": "2020-01-01T00:00:00Z"}))
    assert late.exit_code == 2 and "error expired" in late.output


def test_wallet_init_imports_a_jwk_and_exports_the_did(
        tmp_path: Path, runner: CliRunner) -> None:
    from tessera.did import did_key

    signer = generate_signer("ES256")
    key = tmp_path / "member.jwk"
    key.write_text(json.dumps(signer.export_private_jwk()))
    path = tmp_path / "mine.wallet"
    r = runner.invoke(app, ["wallet", "init", "--wallet", str(path), "--import-key", str(key)])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == did_key(signer.public_key)
    shown = runner.invoke(app, ["wallet", "did", "--wallet", str(path), "--jwk"])
    assert json.loads(shown.stdout) == signer.public_key.to_jwk()
    assert "\"d\"" not in shown.stdout
    assert Wallet.open(path, PASS).did == did_key(signer.public_key)


def test_wallet_init_imports_a_sealed_key(tmp_path: Path, runner: CliRunner,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    signer = generate_signer("EdDSA")
    key = tmp_path / "member.jwk"
    key.write_text(json.dumps(signer.export_private_jwk()))
    monkeypatch.setenv("TESSERA_KEY_PASSPHRASE", "key file secret")
    sealed = runner.invoke(app, ["key", "seal", str(key)])
    assert sealed.exit_code == 0, sealed.output
    assert signer.export_private_jwk()["d"] not in sealed.stdout
    sealed_file = tmp_path / "member.sealed.json"
    sealed_file.write_text(sealed.stdout)
    monkeypatch.setenv("TESSERA_KEY_PASSPHRASE", "not the secret")
    wrong = runner.invoke(app, ["wallet", "init", "--wallet", str(tmp_path / "a.wallet"),
                                "--import-key", str(sealed_file)])
    assert wrong.exit_code == 2 and "error wrong_passphrase" in wrong.output
    assert not (tmp_path / "a.wallet").exists()
    monkeypatch.setenv("TESSERA_KEY_PASSPHRASE", "key file secret")
    ok = runner.invoke(app, ["wallet", "init", "--wallet", str(tmp_path / "a.wallet"),
                             "--import-key", str(sealed_file)])
    assert ok.exit_code == 0, ok.output
    assert Wallet.open(tmp_path / "a.wallet", PASS).signer.public_key.to_jwk() == \
        signer.public_key.to_jwk()


@pytest.mark.parametrize(("content", "code"), [
    ("{not json", "malformed"),
    ('{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA", "d": "AAAA"}', "malformed"),
    ('{"kty": "oct", "k": "c2VjcmV0", "d": "AAAA"}', "unsupported_algorithm"),
    ("PUBLIC", "malformed"),  # a public key cannot sign: refused before any wallet exists
])
def test_wallet_init_refuses_a_bad_key_file(tmp_path: Path, runner: CliRunner, content: str,
                                            code: str) -> None:
    if content == "PUBLIC":
        content = json.dumps(generate_signer("ES256").public_key.to_jwk())
    key = tmp_path / "bad.jwk"
    key.write_text(content)
    path = tmp_path / "bad.wallet"
    r = runner.invoke(app, ["wallet", "init", "--wallet", str(path), "--import-key", str(key)])
    assert r.exit_code == 2
    assert r.output.startswith(f"error {code}:"), r.output
    assert "Traceback" not in r.output and not path.exists()


def test_wallet_opened_with_a_wrong_passphrase(wallet_path: Path, runner: CliRunner,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_WALLET_PASSPHRASE", "wrong passphrase")
    r = runner.invoke(app, ["wallet", "enrol", "-", "--wallet", str(wallet_path)],
                      input='{"nonce": "n", "audience": "did:web:x"}')
    assert r.exit_code == 2 and "error wrong_passphrase" in r.output
