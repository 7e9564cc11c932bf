"""bench.data_integrity: every case runs and its result is the success it claims."""

from __future__ import annotations

from bench._harness import Settings, run_cases
from bench.data_integrity import cases


def test_every_case_runs_and_checks() -> None:
    built = cases()
    names = {c.name for c in built}
    assert {"tessera.verify.eddsa-rdfc-2022", "tessera.verify.ecdsa-sd-2023",
            "c14n.rdfc10.pyoxigraph", "floor.verify.ed25519"} <= names
    for case in built:
        for ref in (case.floor, case.reference):
            assert ref is None or ref in names, (case.name, ref)
    results = run_cases(built, Settings.quick())
    assert all(r.n >= 1 and r.median_ns > 0 for r in results)
