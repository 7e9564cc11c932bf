"""README.md's Services block, run as written (see tests/shell.py): issuer and verifier
on their documented ports, a brand, a member enrolled with the wallet's own commands,
credentials over OpenID4VCI and a checkout that ends in ``true``."""

from __future__ import annotations

from pathlib import Path

from tests.shell import ROOT, run_shell, sh_block


def test_readme_services_block_completes_a_checkout(tmp_path: Path) -> None:
    script = sh_block((ROOT / "README.md").read_text(), "## Services")
    # The block is the one a reader copies: servers, brand, member, wallet, till.
    for command in ("tessera issuer serve --port 8000 &", "issuer brand create acme",
                    "issuer program create", "issuer member enrol", "wallet enrol",
                    "issuer offer create", "verifier serve --trust deploy/trust.json",
                    "wallet present"):
        assert command in script
    done = run_shell(script, tmp_path)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-5000:])
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == "true", done.stdout[-3000:]
    assert "Shared with Partner checkout; the verifier accepted it." in done.stdout
    assert "DEVELOPMENT MODE" in done.stderr  # loudly, in each process that fetches
