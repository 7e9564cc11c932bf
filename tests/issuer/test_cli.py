"""The admin command line against a real (SQLite) database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from issuer._cli import issuer_app
from issuer._models import utcnow
from issuer._settings import generate_master_key
from tessera.did import did_key
from tessera.keys import generate_signer
from tests.issuer.conftest import enrolment_proof


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TESSERA_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("TESSERA_MASTER_KEY", generate_master_key())
    monkeypatch.setenv("TESSERA_PUBLIC_URL", "https://issuer.example")
    runner = CliRunner()

    def run(*args: str, ok: bool = True) -> Any:
        result = runner.invoke(issuer_app, list(args))
        if ok:
            assert result.exit_code == 0, (result.output, result.exception)
            return json.loads(result.stdout)
        assert result.exit_code == 1, result.output
        return result.stderr

    return run


def test_brand_to_points_from_the_shell(cli: Any) -> None:
    head = cli("migrate")["revision"]
    assert head >= "0002"
    assert cli("migrate")["revision"] == head  # idempotent
    brand = cli("brand", "create", "acme", "--name", "Acme Air")
    assert brand["did"] == "did:web:issuer.example:brands:acme"
    assert brand["api_key"].startswith("tsk_")
    assert "error: conflict" in cli("brand", "create", "acme", "--name", "x", ok=False)
    program = cli("program", "create", "--brand", "acme", "--name", "Miles",
                  "--tier", "blue:0:0", "--tier", "gold:1:1000:365:30:immediate",
                  "--ladder", "100,500,1000")
    assert [t["name"] for t in program["tiers"]] == ["blue", "gold"]
    assert program["points_ladder"] == [100, 500, 1000]

    challenge = cli("member", "challenge", "--brand", "acme")
    signer = generate_signer("ES256")
    did = did_key(signer.public_key)
    proof = enrolment_proof(signer, did, challenge["audience"], challenge["nonce"], utcnow())
    member = cli("member", "enrol", "--brand", "acme", "--program", program["id"],
                 "--did", did, "--proof", proof)
    assert member["tier"] == "blue"
    # The same proof again: the challenge is spent.
    err = cli("member", "enrol", "--brand", "acme", "--program", program["id"], "--did", did,
              "--proof", proof, ok=False)
    assert "error: replayed" in err

    mid = member["id"]
    earned = cli("points", "earn", "--brand", "acme", "--member", mid, "1200", "-k", "tx-1")
    assert earned["balance"]["available"] == 1200 and earned["balance"]["tier"] == "gold"
    again = cli("points", "earn", "--brand", "acme", "--member", mid, "1200", "-k", "tx-1")
    assert again["replayed"] is True and again["balance"]["available"] == 1200
    red = cli("points", "redeem", "--brand", "acme", "--member", mid, "200")
    assert red["balance"]["available"] == 1000
    assert "error: insufficient_balance" in cli(
        "points", "redeem", "--brand", "acme", "--member", mid, "1001", ok=False)
    adj = cli("points", "adjust", "--brand", "acme", "--member", mid, "--reason", "goodwill",
              "--operator", "agent-1", "--", "-100")
    assert adj["entry"]["points"] == -100 and adj["balance"]["available"] == 900
    rev = cli("points", "reverse", "--brand", "acme", "--member", mid,
              str(red["entry"]["id"]), "--reason", "cancelled")
    assert rev["entry"]["reverses_id"] == red["entry"]["id"]
    assert rev["balance"]["available"] == 1100
    shown = cli("member", "show", "--brand", "acme", "--member", mid)
    assert shown["balance"]["available"] == 1100
    key = cli("apikey", "create", "--brand", "acme", "--label", "pos")
    assert key["token"].startswith("tsk_")
    rotated = cli("brand", "rotate-key", "--brand", "acme", "--alg", "ES256")
    assert rotated["kid"] == "key-2"


def test_missing_master_key_is_an_error(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("migrate")
    monkeypatch.delenv("TESSERA_MASTER_KEY")
    assert "TESSERA_MASTER_KEY" in cli("brand", "create", "acme", "--name", "A", ok=False)


def test_offer_create_and_credential_state_from_the_shell(cli: Any, tmp_path: Path) -> None:
    import urllib.parse

    from typer.testing import CliRunner

    cli("migrate")
    cli("brand", "create", "acme", "--name", "Acme Air")
    program = cli("program", "create", "--brand", "acme", "--name", "Miles",
                  "--tier", "blue:0:0")
    challenge = cli("member", "challenge", "--brand", "acme")
    signer = generate_signer("ES256")
    did = did_key(signer.public_key)
    proof = enrolment_proof(signer, did, challenge["audience"], challenge["nonce"], utcnow())
    member = cli("member", "enrol", "--brand", "acme", "--program", program["id"],
                 "--did", did, "--proof", proof)
    runner = CliRunner()
    qr = tmp_path / "offer.png"
    result = runner.invoke(issuer_app, ["offer", "create", "--brand", "acme", "--member",
                                        member["id"], "--tx-code", "6", "--qr", str(qr)])
    assert result.exit_code == 0, result.output
    uri, tx_line = result.stdout.strip().splitlines()
    assert uri.startswith("openid-credential-offer://?credential_offer=")
    offer = json.loads(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(uri).query))[
        "credential_offer"])
    assert offer["credential_issuer"] == "https://issuer.example/brands/acme"
    assert offer["credential_configuration_ids"] == [
        "LoyaltyMembershipCredential_sd_jwt", "LoyaltyPointsCredential_sd_jwt"]
    code = tx_line.removeprefix("tx_code: ")
    assert len(code) == 6 and code.isdigit()
    assert qr.read_bytes().startswith(b"\x89PNG")
    err = cli("offer", "create", "--brand", "acme", "--member", member["id"],
              "--credential", "Nope", ok=False)
    assert "error: invalid_request" in err
    for verb in ("revoke", "suspend", "resume"):
        assert "error: not_found" in cli("credential", verb, "--brand", "acme",
                                         "no-such-credential", ok=False)


def test_apikey_list_and_revoke(cli: Any) -> None:
    cli("migrate")
    first = cli("brand", "create", "acme", "--name", "Acme Air")["api_key"]
    cli("brand", "create", "beta", "--name", "Beta")
    second = cli("apikey", "create", "--brand", "acme", "--label", "pos")
    keys = cli("apikey", "list", "--brand", "acme")
    assert [k["id"] for k in keys] == [first.split("_")[1], second["id"]]
    assert all("token" not in k and "secret_sha256" not in k for k in keys)
    assert "error: not_found" in cli("apikey", "revoke", "--brand", "beta", second["id"],
                                     ok=False)
    revoked = cli("apikey", "revoke", "--brand", "acme", second["id"])
    assert revoked["revoked_at"] is not None
    assert "error: conflict" in cli("apikey", "revoke", "--brand", "acme",
                                    first.split("_")[1], ok=False)
    assert [k["revoked_at"] is None for k in cli("apikey", "list", "--brand", "acme")] \
        == [True, False]


def _enrolled(cli: Any) -> dict[str, Any]:
    cli("migrate")
    cli("brand", "create", "acme", "--name", "Acme Air")
    program = cli("program", "create", "--brand", "acme", "--name", "Miles")
    challenge = cli("member", "challenge", "--brand", "acme")
    signer = generate_signer("ES256")
    did = did_key(signer.public_key)
    proof = enrolment_proof(signer, did, challenge["audience"], challenge["nonce"], utcnow())
    return dict(cli("member", "enrol", "--brand", "acme", "--program", program["id"],
                    "--did", did, "--proof", proof))


def _engine_of(tmp_path: Path) -> Any:
    from issuer._db import make_engine

    return make_engine(f"sqlite:///{tmp_path}/cli.db")


def test_holds_release_expired_for_cron(cli: Any, tmp_path: Path) -> None:
    from datetime import timedelta

    from issuer._admin import brand_by_slug
    from issuer._ledger import create_hold, earn, run_write

    member = _enrolled(cli)
    engine = _engine_of(tmp_path)
    try:
        # The CLI runs on the wall clock: make the past here.
        def hold(session: Any, ttl: int, key: str) -> Any:
            brand = brand_by_slug(session, slug="acme")
            return create_hold(session, brand_id=brand.id, member_id=member["id"],
                               idempotency_key=key, points=200, ttl_seconds=ttl,
                               now=utcnow() - timedelta(hours=1))
        run_write(engine, lambda s: earn(
            s, brand_id=brand_by_slug(s, slug="acme").id, member_id=member["id"],
            idempotency_key="e-1", points=500, now=utcnow() - timedelta(hours=2)))
        run_write(engine, lambda s: hold(s, 60, "h-expired"))
        run_write(engine, lambda s: hold(s, 7200, "h-live"))
    finally:
        engine.dispose()
    shown = cli("member", "show", "--brand", "acme", "--member", member["id"])
    assert shown["balance"]["held"] == 200 and shown["balance"]["available"] == 300
    out = cli("holds", "release-expired")
    assert out["count"] == 1 and out["released"][0]["status"] == "expired"
    assert cli("holds", "release-expired", "--brand", "acme") == {"released": [], "count": 0}
    assert "error: not_found" in cli("holds", "release-expired", "--brand", "nobody", ok=False)
    shown = cli("member", "show", "--brand", "acme", "--member", member["id"])
    assert shown["balance"]["held"] == 200 and shown["balance"]["available"] == 300


def test_log_integrate_puts_pending_leaves_in_the_tree(cli: Any, tmp_path: Path) -> None:
    from issuer import _translog
    from issuer._admin import brand_by_slug
    from issuer._db import session_scope
    from issuer._log_models import TreeHead

    member = _enrolled(cli)
    for n in ("10", "20", "30"):
        cli("points", "earn", "--brand", "acme", "--member", member["id"], n)
    assert cli("log", "integrate", "--brand", "acme") == {"integrated": 3}
    assert cli("log", "integrate") == {"integrated": 0}  # nothing twice
    assert "error: not_found" in cli("log", "integrate", "--brand", "nobody", ok=False)
    engine = _engine_of(tmp_path)
    try:
        with session_scope(engine) as s:
            brand_id = brand_by_slug(s, slug="acme").id
            assert _translog.log_state(s, brand_id).size == 3
            assert _translog.check_log(s, brand_id) == []
            assert s.get(TreeHead, (brand_id, 3)) is not None  # the batch signed its head
    finally:
        engine.dispose()


def test_partners_and_settlement_from_the_shell(cli: Any, tmp_path: Path) -> None:
    import csv
    import io

    from issuer._admin import brand_by_slug
    from issuer._db import session_scope
    from issuer._keystore import SqlKeyStore
    from issuer._ledger import run_write
    from issuer._redemption import authenticate_partner, partner_earn
    from issuer._settings import Settings
    from tessera.errors import TesseraError
    from tessera.keys import PublicKey
    from tessera.redemption import verify_statement

    member = _enrolled(cli)
    partner = cli("partner", "create", "--brand", "acme", "--name", "cafe",
                  "--client-id", "redirect_uri:https://cafe.example/cb")
    assert partner["token"].startswith("tpk_")
    assert "error: conflict" in cli("partner", "create", "--brand", "acme", "--name", "cafe",
                                    "--client-id", "x", ok=False)
    assert "error: invalid_request" in cli("partner", "create", "--brand", "acme", "--name",
                                           "", "--client-id", "x", ok=False)
    second = cli("partner", "add-key", "--brand", "acme", "--partner", partner["id"])
    listed = cli("partner", "list", "--brand", "acme")
    old_id = partner["token"].split("_")[1]
    assert [k["id"] for k in listed[0]["keys"]] == [old_id, second["token"].split("_")[1]]
    assert partner["token"].split("_", 2)[2] not in json.dumps(listed)
    revoked = cli("partner", "revoke-key", "--brand", "acme", "--partner", partner["id"],
                  old_id)
    assert revoked["id"] == old_id and revoked["revoked_at"] is not None
    assert "error: not_found" in cli("partner", "revoke-key", "--brand", "acme", "--partner",
                                     partner["id"], "nope", ok=False)

    engine = _engine_of(tmp_path)
    try:
        with session_scope(engine) as s:
            brand = brand_by_slug(s, slug="acme")
            with pytest.raises(TesseraError) as refused:
                authenticate_partner(s, brand=brand, token=partner["token"])
            assert refused.value.code.value == "unauthorized"
            cafe = authenticate_partner(s, brand=brand, token=second["token"])
        for order, points in (("o-1", 120), ("o-2", 80)):
            run_write(engine, lambda s, o=order, p=points: partner_earn(
                s, brand=brand, partner=cafe, membership_number=member["membership_number"],
                points=p, order_reference=o, now=utcnow()))
        with session_scope(engine) as s:
            keys = SqlKeyStore(Settings.from_env().master_key).public_keys(
                s, brand_id=brand.id, did=brand.did)
    finally:
        engine.dispose()

    csv_path, json_path = tmp_path / "s.csv", tmp_path / "s.json"
    day = utcnow().date()
    statement = cli("settlement", "--brand", "acme", "--partner", partner["id"],
                    "--from", day.isoformat(), "--to", f"{day.isoformat()}T23:59:59+00:00",
                    "--csv", str(csv_path), "--json", str(json_path))
    assert json.loads(json_path.read_text()) == statement
    assert [ln["reference"] for ln in statement["lines"]] == ["o-1", "o-2"]
    assert statement["totals"]["earn"] == 200
    key = PublicKey.from_jwk(keys[0].public_jwk)
    payload = verify_statement(statement["jws"], key, issuer=brand.did)
    assert payload["totals"] == statement["totals"]
    rows = list(csv.reader(io.StringIO(csv_path.read_bytes().decode(), newline="")))
    assert [r[rows[0].index("reference")] for r in rows[1:3]] == ["o-1", "o-2"]
    assert csv_path.read_bytes().count(b"\r\n") == len(rows)
    assert "error: invalid_request" in cli("settlement", "--brand", "acme", "--partner",
                                           partner["id"], "--from", "yesterday", "--to",
                                           day.isoformat(), ok=False)
    assert "error: not_found" in cli("settlement", "--brand", "acme", "--partner", "nope",
                                     "--from", day.isoformat(), "--to",
                                     f"{day.isoformat()}T23:59:59", ok=False)


# -- first run: init, an unmigrated database, the public URL ----------------------------------


def test_admin_commands_on_an_unmigrated_database_say_what_to_do(cli: Any) -> None:
    err = cli("brand", "create", "acme", "--name", "Acme", ok=False)
    assert err.startswith("error: database_unavailable: the database sqlite:////")
    assert "has no Tessera schema: run `tessera issuer migrate`" in err
    assert "Traceback" not in err and "no such table" not in err
    assert "database_unavailable" in cli("member", "show", "-b", "acme", "-m", "x", ok=False)


def test_an_unreachable_database_is_one_line(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TESSERA_DATABASE_URL", f"sqlite:///{tmp_path}/missing/dir/x.db")
    monkeypatch.setenv("TESSERA_MASTER_KEY", generate_master_key())
    result = CliRunner().invoke(issuer_app, ["apikey", "list", "-b", "acme"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: database_unavailable: cannot reach the database")
    assert "Traceback" not in result.output


def test_serve_refuses_an_unmigrated_database(cli: Any) -> None:
    # Before this, serve started and /healthz said ok on a database without tables.
    assert "has no Tessera schema" in cli("serve", "--port", "1", ok=False)


def test_init_writes_a_master_key_migrates_and_prints_next_steps(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("TESSERA_MASTER_KEY", "TESSERA_MASTER_KEY_FILE", "TESSERA_DATABASE_URL",
                 "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    runner = CliRunner()
    first = runner.invoke(issuer_app, ["init"])
    assert first.exit_code == 0, first.output
    key = tmp_path / "tessera-master.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert f"export TESSERA_MASTER_KEY_FILE={key}" in first.stdout
    assert f"export TESSERA_DATABASE_URL=sqlite:///{tmp_path}/tessera.db" in first.stdout
    assert "tessera issuer brand create acme" in first.stdout
    again = runner.invoke(issuer_app, ["init"])  # idempotent: the key is kept
    assert again.exit_code == 0 and "kept: it already exists" in again.stdout
    monkeypatch.setenv("TESSERA_MASTER_KEY_FILE", str(key))
    made = runner.invoke(issuer_app, ["brand", "create", "acme", "--name", "Acme"])
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["did"] == "did:web:localhost%3A8000:brands:acme"
    # A damaged key file is refused, not replaced.
    key.write_text("not a key\n")
    bad = runner.invoke(issuer_app, ["init"])
    assert bad.exit_code == 1 and bad.stderr.startswith("error: malformed:")


def test_master_key_file_that_cannot_be_read(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from issuer._settings import Settings
    from tessera.errors import TesseraError

    with pytest.raises(TesseraError) as info:
        Settings.from_env({"TESSERA_MASTER_KEY_FILE": str(tmp_path / "nope")})
    assert "TESSERA_MASTER_KEY_FILE" in info.value.detail


@pytest.mark.parametrize(("public", "host", "port", "warns"), [
    ("http://localhost:8000", "127.0.0.1", 8000, False),
    ("http://localhost:8000", "0.0.0.0", 8000, False),  # noqa: S104 - compared only
    ("http://localhost:8000", "127.0.0.1", 8001, True),
    ("http://issuer:8000", "127.0.0.1", 8000, True),
    ("https://acme.example", "127.0.0.1", 8001, False),  # behind a proxy by design
])
def test_public_url_mismatch_warning(public: str, host: str, port: int, warns: bool) -> None:
    from issuer._cli import public_url_mismatch

    warning = public_url_mismatch(public, host, port)
    assert (warning is not None) == warns
    if warning:
        assert "TESSERA_PUBLIC_URL" in warning and f":{port}" in warning


def test_dev_master_key_refused_in_production() -> None:
    from issuer._settings import Settings
    from tessera.errors import ErrorCode, TesseraError

    with pytest.raises(TesseraError) as info:
        Settings.from_env({"TESSERA_DEV": "1", "TESSERA_ENV": "production"})
    assert info.value.code == ErrorCode.FORBIDDEN
    assert Settings.from_env({"TESSERA_DEV": "1"}).dev_mode
