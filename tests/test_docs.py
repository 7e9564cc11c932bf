"""The documented error codes are exactly the ones the code can produce."""

from __future__ import annotations

import re
from pathlib import Path

from tessera.errors import ErrorCode

DOC = Path(__file__).resolve().parent.parent / "docs" / "errors.md"


def test_every_error_code_is_documented_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", DOC.read_text(), flags=re.M))
    assert documented == {c.value for c in ErrorCode}


def test_every_environment_variable_is_in_the_configuration_table() -> None:
    root = DOC.parent.parent
    table = (DOC.parent / "configuration.md").read_text()
    documented = set(re.findall(r"`(TESSERA_[A-Z_]+|DATABASE_URL)`", table))
    read: set[str] = set()
    for package in ("tessera", "issuer", "holder", "verifier"):
        for source in (root / package).rglob("*.py"):
            read |= set(re.findall(r"\b(TESSERA_[A-Z_]*[A-Z])\b", source.read_text()))
    # Constants that are not variables: the JSON-LD vocabulary, the verifier's prefix.
    read -= {"TESSERA_VOCAB", "TESSERA_VERIFIER"}
    assert read and read <= documented, sorted(read - documented)
    assert "docs/configuration.md" in (root / "README.md").read_text()


# -- guides that run ---------------------------------------------------------------------------

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)


def command_blocks(markdown: str) -> list[tuple[str, str | None]]:
    """Each ```sh block with the output block right after it (```text or ```json,
    nothing but blank lines between), or None when it shows no output."""
    fences = list(_FENCE.finditer(markdown))
    found: list[tuple[str, str | None]] = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "sh":
            continue
        nxt = fences[i + 1] if i + 1 < len(fences) else None
        adjacent = (nxt is not None and nxt.group(1) in ("text", "json")
                    and not markdown[fence.end():nxt.start()].strip())
        found.append((fence.group(2), nxt.group(2) if adjacent and nxt else None))
    return found


def run_guide(path: Path, tmp_path: Path) -> list[tuple[str, str | None, str]]:
    """Run a guide's sh blocks in order in one shell; (command, shown, printed) each."""
    from tests.shell import run_shell

    blocks = command_blocks(path.read_text())
    script = ['export PATH="$PWD/.venv/bin:$PATH"']
    for n, (command, _) in enumerate(blocks):
        script += [f"printf '\\n@@block-{n}@@\\n'", command]
    done = run_shell("\n".join(script) + "\n", tmp_path)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    printed = re.split(r"\n@@block-\d+@@\n", done.stdout)[1:]
    assert len(printed) == len(blocks)
    return [(c, shown, out) for (c, shown), out in zip(blocks, printed, strict=True)]


def test_issuer_service_guide_runs_as_written(tmp_path: Path) -> None:
    import doctest

    guide = DOC.parent / "issuer-service.md"
    checker = doctest.OutputChecker()
    results = run_guide(guide, tmp_path)
    assert sum(shown is not None for _, shown, _ in results) >= 12  # the outputs are shown
    for command, shown, printed in results:
        if shown is None:
            continue
        assert checker.check_output(shown.strip() + "\n", printed.strip() + "\n",
                                    doctest.ELLIPSIS), (command, shown, printed)


def test_guide_output_check_can_fail() -> None:
    # The comparison above is not vacuous: a changed value or a missing line fails it.
    import doctest

    checker = doctest.OutputChecker()
    assert checker.check_output('{"a": "..."}\n', '{"a": "x"}\n', doctest.ELLIPSIS)
    assert not checker.check_output('"gold"\n', '"silver"\n', doctest.ELLIPSIS)
    assert not checker.check_output("a\nb\n", "a\n", doctest.ELLIPSIS)
    blocks = command_blocks("```sh\necho hi\n```\n\n```text\nhi\n```\n```sh\ntrue\n```\n")
    assert blocks == [("echo hi\n", "hi\n"), ("true\n", None)]


def test_redemption_refusal_statuses_are_the_services() -> None:
    from tessera.web import HTTP_STATUS

    text = (DOC.parent / "points-log-and-redemption.md").read_text()
    section = text[text.index("### Refusals and their HTTP status"):]
    section = section[:section.index("\n### ")]
    rows = re.findall(r"^\| ((?:`[a-z_]+`(?:, )?)+) \| ([0-9, ]+) \|", section, flags=re.M)
    assert len(rows) >= 15
    for codes, statuses in rows:
        names = re.findall(r"`([a-z_]+)`", codes)
        shown = {int(s) for s in statuses.split(",")}
        assert shown == {HTTP_STATUS.get(ErrorCode(n), 400) for n in names}, (names, shown)


def test_privacy_guide_runs_as_written(tmp_path: Path) -> None:
    import doctest

    checker = doctest.OutputChecker()
    results = run_guide(DOC.parent / "privacy.md", tmp_path)
    assert sum(shown is not None for _, shown, _ in results) >= 2
    for command, shown, printed in results:
        if shown is not None:
            assert checker.check_output(shown.strip() + "\n", printed.strip() + "\n",
                                        doctest.ELLIPSIS), (command, shown, printed)


def test_privacy_numbers_are_the_codes() -> None:
    """The figures docs/privacy.md gives are the ones the wallet and the issuer use."""
    from holder._wallet import DEFAULT_TOP_UP_BELOW, KEY_ATTESTATION_LIFETIME_SECONDS
    from issuer._issuance import TIME_GRANULARITY
    from issuer._openid4vci import REFRESH_FAMILY_TTL, REFRESH_TOKEN_TTL
    from issuer._settings import DEFAULT_BATCH_SIZE
    from tessera.status import DEFAULT_LIST_SIZE

    text = " ".join((DOC.parent / "privacy.md").read_text().split())
    assert f"({DEFAULT_BATCH_SIZE} by default: `TESSERA_BATCH_SIZE`" in text
    assert TIME_GRANULARITY.total_seconds() == 3600
    assert text.count("rounded down to the hour") == 2
    assert f"lapses after {REFRESH_TOKEN_TTL.days} days unused" in text
    assert f"its family after {REFRESH_FAMILY_TTL.days} days" in text
    assert f"fewer than **{DEFAULT_TOP_UP_BELOW}** unused credentials" in text
    assert f"`exp` {KEY_ATTESTATION_LIFETIME_SECONDS} seconds later" in text
    assert f"at least {DEFAULT_LIST_SIZE:,} entries" in text
    assert text.count(f"{DEFAULT_LIST_SIZE:,}") == 2


def test_witness_guide_runs_as_written(tmp_path: Path) -> None:
    import doctest

    checker = doctest.OutputChecker()
    results = run_guide(DOC.parent / "witness.md", tmp_path)
    assert sum(shown is not None for _, shown, _ in results) >= 4
    for command, shown, printed in results:
        if shown is None:
            continue
        assert checker.check_output(shown.strip() + "\n", printed.strip() + "\n",
                                    doctest.ELLIPSIS), (command, shown, printed)
