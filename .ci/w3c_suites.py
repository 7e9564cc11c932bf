"""Run the W3C interop suites against this checkout and judge them with the allow-list.

Usage: .ci/w3c_suites.py RUN_SH [SUITE ...]

RUN_SH is ``../shared/w3c-suites/run.sh`` (it starts ``tessera vcapi serve``,
installs the suite's npm dependencies, runs mocha with the JSON reporter and
copies ``results.json`` into ``$W3C_OUT``). Every failing test must be on
``.ci/w3c-allowlist.toml``; an allow-listed test that passes is an error too,
so the list (and docs/conformance.md, which quotes it) stays true. A suite that
produced no results, or ran no test, fails. Exit status 0 only when all hold.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ALLOWLIST = ROOT / ".ci" / "w3c-allowlist.toml"
SUITE_TIMEOUT_S = 900
SUITES = (
    "vc-di-eddsa-test-suite",
    "vc-data-model-2.0-test-suite",
    "vc-api-issuer-test-suite",
    "vc-api-verifier-test-suite",
)


@dataclass(frozen=True)
class Allowed:
    suite: str
    test: str
    spec: str
    why: str


def load_allowlist(path: Path = ALLOWLIST) -> list[Allowed]:
    """Entries of ``[[allow]]`` tables; each needs a suite, a test title, spec text and a why."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out: list[Allowed] = []
    for n, entry in enumerate(data.get("allow", []), 1):
        missing = [k for k in ("suite", "test", "spec", "why")
                   if not isinstance(entry.get(k), str) or not entry[k].strip()]
        if missing:
            raise ValueError(f"allow-list entry {n} lacks {', '.join(missing)}")
        if entry["suite"] not in SUITES:
            raise ValueError(f"allow-list entry {n}: unknown suite {entry['suite']!r}")
        out.append(Allowed(entry["suite"], entry["test"], entry["spec"], entry["why"]))
    keys = [(a.suite, a.test) for a in out]
    if len(set(keys)) != len(keys):
        raise ValueError("allow-list has duplicate entries")
    return out


@dataclass(frozen=True)
class Verdict:
    suite: str
    passed: int
    failed: int
    pending: int
    problems: tuple[str, ...]
    allowed_failures: tuple[str, ...]


def _first_line(err: Any) -> str:
    if not isinstance(err, dict):
        return ""
    message = err.get("message") or err.get("stack") or ""
    return str(message).split("\n", 1)[0][:300]


def judge(suite: str, results: dict[str, Any], allowlist: list[Allowed]) -> Verdict:
    """Compare one suite's mocha JSON report with the allow-list."""
    stats = results.get("stats", {})
    failures = {str(t.get("fullTitle", "")): _first_line(t.get("err"))
                for t in results.get("failures", [])}
    passes = {str(t.get("fullTitle", "")) for t in results.get("passes", [])}
    allowed = {a.test for a in allowlist if a.suite == suite}
    problems: list[str] = []
    if not stats.get("tests") and not failures:
        problems.append("the suite ran no test (is the local implementation configured?)")
    for title, error in failures.items():
        if title not in allowed:
            problems.append(f"FAILED (not allow-listed): {title}\n      {error}")
    for title in sorted(allowed & passes):
        problems.append(f"PASSED but allow-listed (remove it from the list): {title}")
    return Verdict(
        suite=suite, passed=int(stats.get("passes", 0)), failed=int(stats.get("failures", 0)),
        pending=int(stats.get("pending", 0)), problems=tuple(problems),
        allowed_failures=tuple(t for t in failures if t in allowed),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_suite(run_sh: Path, suite: str, tessera: Path, out: Path) -> dict[str, Any] | None:
    env = dict(os.environ, TESSERA=str(tessera), W3C_OUT=str(out), PORT=str(_free_port()))
    # npm's own cache (~/.npm) serves every package after the first run; do not
    # revalidate its metadata against the registry each time.
    env.setdefault("npm_config_prefer_offline", "true")
    log = out.parent / f"{suite}.log"
    with log.open("wb") as fh:
        # Its own session, so a hung suite can be stopped with its server and mocha
        # (run.sh's TERM trap stops the server it started).
        proc = subprocess.Popen([str(run_sh), suite], env=env, stdout=fh,  # noqa: S603
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=SUITE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
            print(f"{suite}: stopped after {SUITE_TIMEOUT_S} s")
            return None
    results = out / "results.json"
    if rc != 0 or not results.is_file():
        sys.stdout.write(log.read_text(encoding="utf-8", errors="replace")[-4000:])
        return None
    loaded: dict[str, Any] = json.loads(results.read_text(encoding="utf-8"))
    return loaded


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    run_sh = Path(argv[0]).resolve()
    suites = argv[1:] or list(SUITES)
    tessera = ROOT / ".venv" / "bin" / "tessera"
    allowlist = load_allowlist()
    work = Path(tempfile.mkdtemp(prefix="w3c-suites-"))
    ok = True
    try:
        for suite in suites:
            started = time.monotonic()
            results = run_suite(run_sh, suite, tessera, work / suite)
            took = time.monotonic() - started
            if results is None:
                print(f"{suite}: did not produce results ({took:.0f} s)")
                ok = False
                continue
            verdict = judge(suite, results, allowlist)
            print(f"{suite}: passed={verdict.passed} failed={verdict.failed} "
                  f"pending={verdict.pending} (allow-listed failures: "
                  f"{len(verdict.allowed_failures)}; {took:.0f} s)")
            for problem in verdict.problems:
                print(f"  {problem}")
            ok = ok and not verdict.problems
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
