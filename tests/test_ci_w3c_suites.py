""".ci/w3c_suites.py: the W3C suites' mocha report judged against the committed allow-list."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "w3c_suites.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("w3c_suites", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["w3c_suites"] = module
    spec.loader.exec_module(module)
    return module


w3c = _load()
SUITE = "vc-api-verifier-test-suite"


def _report(passes: list[str], failures: list[str], pending: int = 0) -> dict[str, Any]:
    return {
        "stats": {"tests": len(passes) + len(failures) + pending, "passes": len(passes),
                  "failures": len(failures), "pending": pending},
        "passes": [{"fullTitle": t} for t in passes],
        "failures": [{"fullTitle": t, "err": {"message": "expected x\nstack"}} for t in failures],
    }


def _allowed(test: str) -> Any:
    return w3c.Allowed(suite=SUITE, test=test, spec="text", why="reason")


def test_a_failure_off_the_list_fails_the_run() -> None:
    verdict = w3c.judge(SUITE, _report(["a"], ["b"]), [])
    assert verdict.problems == ("FAILED (not allow-listed): b\n      expected x",)


def test_an_allow_listed_failure_passes_and_is_counted() -> None:
    verdict = w3c.judge(SUITE, _report(["a"], ["b"], pending=1), [_allowed("b")])
    assert verdict.problems == ()
    assert verdict.allowed_failures == ("b",)
    assert (verdict.passed, verdict.failed, verdict.pending) == (1, 1, 1)


def test_an_allow_listed_test_that_passes_is_stale() -> None:
    verdict = w3c.judge(SUITE, _report(["b"], []), [_allowed("b")])
    assert verdict.problems == ("PASSED but allow-listed (remove it from the list): b",)


def test_an_entry_counts_for_its_own_suite_only() -> None:
    verdict = w3c.judge("vc-di-eddsa-test-suite", _report([], ["b"]), [_allowed("b")])
    assert verdict.problems and verdict.problems[0].startswith("FAILED (not allow-listed): b")


def test_a_suite_that_ran_nothing_fails() -> None:
    assert w3c.judge(SUITE, _report([], []), []).problems


def test_the_committed_allow_list_is_short_and_justified() -> None:
    entries = w3c.load_allowlist()
    assert len(entries) <= 5
    for entry in entries:
        assert entry.suite in w3c.SUITES
        assert len(entry.spec) > 40 and len(entry.why) > 40


@pytest.mark.parametrize(("body", "message"), [
    ('[[allow]]\nsuite = "vc-api-verifier-test-suite"\ntest = "t"\nspec = "s"\n', "lacks why"),
    ('[[allow]]\nsuite = "nope"\ntest = "t"\nspec = "s"\nwhy = "w"\n', "unknown suite"),
    ('[[allow]]\nsuite = "vc-api-verifier-test-suite"\ntest = "t"\nspec = "s"\nwhy = "w"\n' * 2,
     "duplicate"),
])
def test_malformed_allow_lists_are_refused(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "allow.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=message):
        w3c.load_allowlist(path)


def _fake_run_sh(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "run.sh"
    script.write_text("#!/usr/bin/env bash\n" + body)
    script.chmod(0o755)
    return script


def test_run_suite_reads_the_report_run_sh_leaves_in_w3c_out(tmp_path: Path) -> None:
    run_sh = _fake_run_sh(tmp_path, (
        'mkdir -p "$W3C_OUT"; [ "$1" = vc-api-issuer-test-suite ] || exit 9\n'
        'echo "{\\"stats\\": {\\"tests\\": 1, \\"passes\\": 1}, \\"tessera\\": \\"$TESSERA\\"}"'
        ' > "$W3C_OUT/results.json"\n'))
    out = tmp_path / "work" / "vc-api-issuer-test-suite"
    out.parent.mkdir()
    results = w3c.run_suite(run_sh, "vc-api-issuer-test-suite", Path("/x/tessera"), out)
    assert results == {"stats": {"tests": 1, "passes": 1}, "tessera": "/x/tessera"}


def test_run_suite_without_a_report_or_with_an_error_is_none(tmp_path: Path) -> None:
    out = tmp_path / "work" / "s"
    out.parent.mkdir()
    assert w3c.run_suite(_fake_run_sh(tmp_path, "exit 3\n"), "s", Path("t"), out) is None
    assert w3c.run_suite(_fake_run_sh(tmp_path, "exit 0\n"), "s", Path("t"), out) is None


def test_a_hung_suite_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(w3c, "SUITE_TIMEOUT_S", 1)
    out = tmp_path / "work" / "s"
    out.parent.mkdir()
    run_sh = _fake_run_sh(tmp_path, "trap 'exit 130' TERM\nsleep 60 & wait\n")
    assert w3c.run_suite(run_sh, "s", Path("t"), out) is None
