"""The ``tessera`` command line, end to end through typer's runner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tessera.cli import app
from tessera.credentials import membership_claims

runner = CliRunner()


def _run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout.strip()


@pytest.fixture
def setup(tmp_path: Path) -> dict[str, Path | str]:
    brand_key = tmp_path / "brand.jwk"
    member_key = tmp_path / "member.jwk"
    brand_key.write_text(_run("key", "new", "--alg", "ES256"))
    member_key.write_text(_run("key", "new", "--alg", "EdDSA"))
    brand_did = _run("did", str(brand_key))
    member_did = _run("did", str(member_key))
    from datetime import date

    claims = membership_claims(
        program={"id": "p-1", "name": "Acme Rewards", "brand": brand_did},
        membership_number="A-1", tier="gold", tiers=[("silver", 1), ("gold", 2)],
        member_since=date(2020, 1, 1), tier_valid_until=date(2030, 1, 1), name="Alice",
    )
    claims_file = tmp_path / "claims.json"
    claims_file.write_text(json.dumps(claims))
    cred = tmp_path / "cred.txt"
    cred.write_text(_run(
        "issue", "--key", str(brand_key), "--issuer", brand_did,
        "--type", "LoyaltyMembershipCredential", "--subject", member_did,
        "--claims", str(claims_file),
    ))
    trust = tmp_path / "trust.json"
    trust.write_text(json.dumps({"issuers": [
        {"id": brand_did, "credential_types": ["LoyaltyMembershipCredential"]}]}))
    return {"brand_key": brand_key, "member_key": member_key, "cred": cred, "trust": trust,
            "brand_did": brand_did, "member_did": member_did, "tmp": tmp_path}


def test_key_new_and_did(tmp_path: Path) -> None:
    jwk = json.loads(_run("key", "new", "--alg", "ES256"))
    assert jwk["kty"] == "EC" and "d" in jwk
    key = tmp_path / "k.jwk"
    key.write_text(json.dumps(jwk))
    assert _run("did", str(key)).startswith("did:key:zDn")
    assert _run("did", str(key), "--method", "jwk").startswith("did:jwk:")
    bad = runner.invoke(app, ["key", "new", "--alg", "HS256"])
    assert bad.exit_code == 2 and "unsupported_algorithm" in bad.output


def test_issue_present_verify_round_trip(setup: dict[str, Path | str]) -> None:
    tmp = Path(setup["tmp"])
    vp = tmp / "vp.txt"
    vp.write_text(_run(
        "present", "--key", str(setup["member_key"]), "--credential", str(setup["cred"]),
        "--disclose", "tier_at_least_silver", "--audience", "https://beta.test",
        "--nonce", "nonce-0123456789abcdef",
    ))
    out = runner.invoke(app, [
        "verify", "--presentation", str(vp), "--trust", str(setup["trust"]),
        "--audience", "https://beta.test", "--nonce", "nonce-0123456789abcdef",
    ])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["ok"] is True and result["holder"] == setup["member_did"]
    assert result["claims"]["tier_at_least_silver"] is True and "name" not in result["claims"]

    # The same presentation against another nonce is refused, exit code 1.
    wrong = runner.invoke(app, [
        "verify", "--presentation", str(vp), "--trust", str(setup["trust"]),
        "--audience", "https://beta.test", "--nonce", "another-nonce-0123456789",
    ])
    assert wrong.exit_code == 1 and json.loads(wrong.stdout)["errors"] == ["nonce_mismatch"]


def test_verify_with_issuer_key_and_untrusted_issuer(setup: dict[str, Path | str]) -> None:
    tmp = Path(setup["tmp"])
    vp = tmp / "vp.txt"
    vp.write_text(_run(
        "present", "--key", str(setup["member_key"]), "--credential", str(setup["cred"]),
        "--disclose", "tier", "--audience", "aud", "--nonce", "nonce-0123456789abcdef",
    ))
    ok = runner.invoke(app, ["verify", "--presentation", str(vp), "--issuer-key",
                             str(setup["brand_key"]), "--audience", "aud",
                             "--nonce", "nonce-0123456789abcdef"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["claims"]["tier"] == {"name": "gold", "rank": 2}
    other = tmp / "trust2.json"
    other.write_text(json.dumps({"issuers": []}))
    refused = runner.invoke(app, ["verify", "--presentation", str(vp), "--trust", str(other),
                                  "--audience", "aud", "--nonce", "nonce-0123456789abcdef"])
    assert refused.exit_code == 1
    assert json.loads(refused.stdout)["errors"] == ["untrusted_issuer"]


def test_bad_inputs_get_codes_not_tracebacks(setup: dict[str, Path | str]) -> None:
    tmp = Path(setup["tmp"])
    garbage = tmp / "garbage.txt"
    garbage.write_text("not~a~presentation")
    out = runner.invoke(app, ["verify", "--presentation", str(garbage), "--trust",
                              str(setup["trust"]), "--audience", "a", "--nonce", "n" * 20])
    assert out.exit_code == 1 and json.loads(out.stdout)["errors"] == ["malformed"]
    unknown = runner.invoke(app, ["present", "--key", str(setup["member_key"]), "--credential",
                                  str(setup["cred"]), "--disclose", "ssn", "--audience", "a",
                                  "--nonce", "n" * 20])
    assert unknown.exit_code == 2 and "disclosure_mismatch" in unknown.output
