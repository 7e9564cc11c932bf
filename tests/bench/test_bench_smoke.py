"""Smoke test of the benchmark harness: every case runs, succeeds and is timed.

No timing assertions: the figures depend on the machine and its load. What is
checked is that the command works end to end and that each case produced
samples, so a benchmark that breaks (an API change, a case whose verification
started failing: the harness checks every result) is noticed in CI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench._harness import Case, Settings, percentile, run_cases

ROOT = Path(__file__).resolve().parents[2]

EXPECTED = {
    "floor.issue.es256", "tessera.issue.es256", "tessera.issue_credential.es256",
    "sd-jwt.issue.es256",
    "floor.present.es256", "floor.present.ed25519", "tessera.present.es256",
    "tessera.present.eddsa", "sd-jwt.present.es256",
    "floor.verify.es256+es256", "floor.verify.es256+ed25519",
    "tessera.format.verify.es256", "tessera.format.verify.eddsa",
    "verifier.sd_jwt.verify.es256", "verifier.sd_jwt.verify.eddsa",
    "verifier.Verifier.verify.es256", "verifier.Verifier.verify.eddsa",
    "sd-jwt.verify.es256",
}


def test_python_m_bench_sd_jwt_quick_writes_every_case(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "bench", "sd_jwt", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "tessera.format.verify.es256" in done.stdout  # the table was printed
    report = json.loads(out.read_text())
    rows = {r["name"]: r for r in report["results"]}
    assert set(rows) == EXPECTED
    for name, row in rows.items():
        assert row["topic"] == "sd_jwt"
        assert row["n"] >= 1, name
        assert row["median_ns"] > 0 and row["p90_ns"] >= row["median_ns"] * 0.999, name
        if row["floor"] is not None:
            assert row["floor"] in rows and row["floor_ratio"] > 0, name
        if row["reference"] is not None:
            assert row["reference"] in rows and row["speedup_vs_reference"] > 0, name
    assert report["meta"]["quick"] is True
    assert report["meta"]["versions"]["sd-jwt"]


def test_unknown_topic_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "no_such_topic", "--quick"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode != 0 and "unknown topic" in done.stderr


def test_a_failing_case_produces_no_figure() -> None:
    def check(out: object) -> None:
        if out != "ok":
            raise AssertionError("refused")

    case = Case("fails", lambda n: None, lambda _s: "refused", check=check)
    try:
        run_cases([case], Settings.quick())
    except AssertionError as exc:
        assert "refused" in str(exc)
    else:
        raise AssertionError("a case whose result fails its check was timed")


def test_per_call_setup_gets_enough_state_and_percentiles() -> None:
    seen: list[int] = []

    def setup(n: int) -> list[int]:
        return list(range(n))

    def fn(state: list[int]) -> int:
        value = state.pop()
        seen.append(value)
        return value

    [result] = run_cases([Case("pool", setup, fn)], Settings.quick())
    assert result.n >= Settings.quick().min_calls
    assert percentile([1, 2, 3, 4], 0.5) == 2.5
    assert percentile([5], 0.9) == 5


def test_python_m_bench_witness_quick_cosigns(tmp_path: Path) -> None:
    out = tmp_path / "witness.json"
    done = subprocess.run(  # noqa: S603 (our own interpreter and arguments)
        [sys.executable, "-m", "bench", "witness", "--quick", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert set(rows) == {"floor.cosign.ed25519", "witness.add_checkpoint",
                         "witness.round_trip"}
    assert all(r["n"] >= 1 and r["median_ns"] > 0 for r in rows.values())


def test_batch_issuance_cases_issue_ten_credentials_each() -> None:
    from bench.batch_issuance import cases

    results = run_cases(cases(), Settings.quick())
    assert [r.case.name for r in results] == ["10 credentials, one batch request",
                                              "10 credentials, 10 requests"]
    # Each case's check (ten distinct credentials a call) ran on every call.
    assert all(len(r.samples_ns) >= 3 and min(r.samples_ns) > 0 for r in results)


def test_issuance_cpu_runs_whole_exchanges_on_sqlite() -> None:
    """bench.issuance_cpu drives token, nonce and credential in process; every exchange
    is checked (its batch of credentials came back) before anything is counted."""
    from bench.issuance_cpu import run

    report = run(None, batch=3, ops=2, rounds=1, members=2, profile=0)
    assert report["batch"] == 3 and report["database"] == "sqlite"
    assert report["statements_per_exchange"] > 0 and report["commits_per_exchange"] > 0
    assert len(report["cpu_ms_per_exchange"]) == 1
    assert len(report["write_lock_cpu_ms_per_exchange"]) == 1
