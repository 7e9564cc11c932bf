"""``python -m bench [topic ...] [--quick] [--json PATH]``: run benchmarks, print a table.

Topics are modules ``bench/<topic>.py`` exposing ``cases() -> list[Case]``;
register a new one in :data:`TOPICS`. With no topic, every topic runs.

Load topics (:data:`LOAD_TOPICS`) drive a running service from a load
generator process instead of timing calls one by one; their module exposes
``run(quick=...) -> report`` and ``print_table(report)``. They start servers
and take minutes, so they run only when named.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench._harness import Case, Result, Settings, git_commit, run_cases

TOPICS: dict[str, str] = {
    "sd_jwt": "bench.sd_jwt",
    "data_integrity": "bench.data_integrity",
    "issuance": "bench.issuance",  # its harness cases: status lists at 1M entries
    "witness": "bench.witness",  # cosigning latency per checkpoint (C2SP tlog-witness)
    "batch_issuance": "bench.batch_issuance",
}
"""topic name -> module with a ``cases()`` function."""

LOAD_TOPICS: dict[str, str] = {
    "load": "bench.load",  # issuance, checkout, redemption against real servers
    "verifier_service": "bench.verifier_service",  # = load, checkout path only
    "translog": "bench.translog",
}
"""topic name -> module with ``run(quick=...)`` and ``print_table(report)``."""

_VERSIONS = ("cryptography", "jwcrypto", "sd-jwt", "jsonschema", "didkit", "pyld")


def _load(topic: str) -> list[Case]:
    module = importlib.import_module(TOPICS[topic])
    built: list[Case] = module.cases()
    return built


def _fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e3:.1f} µs"


def _ratios(result: Result, by_name: dict[str, Result]) -> dict[str, Any]:
    case = result.case
    out: dict[str, Any] = {"floor_ratio": None, "reference_ratio": None,
                           "speedup_vs_reference": None, "targets": {}}
    if case.floor and case.floor in by_name:
        out["floor_ratio"] = result.median_ns / by_name[case.floor].median_ns
    if case.reference and case.reference in by_name:
        out["reference_ratio"] = result.median_ns / by_name[case.reference].median_ns
        out["speedup_vs_reference"] = by_name[case.reference].median_ns / result.median_ns
    if case.max_floor_ratio is not None and out["floor_ratio"] is not None:
        out["targets"]["floor_ratio_max"] = {
            "target": case.max_floor_ratio, "met": out["floor_ratio"] <= case.max_floor_ratio}
    if case.min_speedup is not None and out["speedup_vs_reference"] is not None:
        out["targets"]["speedup_min"] = {
            "target": case.min_speedup, "met": out["speedup_vs_reference"] >= case.min_speedup}
    return out


def _meta(settings: Settings, quick: bool, topics: Sequence[str]) -> dict[str, Any]:
    versions: dict[str, str | None] = {}
    for dist in _VERSIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "topics": list(topics),
        "quick": quick,
        "settings": {"target_seconds": settings.target_seconds, "rounds": settings.rounds,
                     "warmup_seconds": settings.warmup_seconds},
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": git_commit(),
        "versions": versions,
    }


def _target_text(targets: dict[str, Any]) -> str:
    parts = []
    floor = targets.get("floor_ratio_max")
    if floor:
        parts.append(f"{'✓' if floor['met'] else '✗'} ≤{floor['target']:g}× floor")
    speed = targets.get("speedup_min")
    if speed:
        parts.append(f"{'✓' if speed['met'] else '✗'} ≥{speed['target']:g}× ref")
    return ", ".join(parts)


def _print_table(rows: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        # Piped into a file or CI log: do not wrap the table at 80 columns.
        console = Console(width=170)
    for topic in meta["topics"]:
        table = Table(title=f"bench {topic}", title_justify="left")
        for col, justify in (("case", "left"), ("what", "left"), ("median", "right"),
                             ("p90", "right"), ("n", "right"), ("× floor", "right"),
                             ("vs ref", "right"), ("targets", "left")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        group = None
        for row in (r for r in rows if r["topic"] == topic):
            if group is not None and row["group"] != group:
                table.add_section()
            group = row["group"]
            floor = f"{row['floor_ratio']:.2f}×" if row["floor_ratio"] else "—"
            speed = row["speedup_vs_reference"]
            vs_ref = "—" if speed is None else (
                f"{speed:.2f}× faster" if speed >= 1 else f"{1 / speed:.2f}× slower")
            table.add_row(row["name"], row["label"], _fmt_ns(row["median_ns"]),
                          _fmt_ns(row["p90_ns"]), str(row["n"]), floor, vs_ref,
                          _target_text(row["targets"]))
        console.print(table)
    load = meta.get("load_average")
    console.print(
        f"Python {meta['python']} on {meta['cpu_count']} CPU(s)"
        + (f", load {load[0]:.2f}" if load else "")
        + f"; {meta['settings']['rounds']} interleaved round(s), "
        f"~{meta['settings']['target_seconds']:g} s per case. "
        "× floor = median / raw-crypto median; vs ref = reference median / this median "
        "(sd_jwt: the sd-jwt package; data_integrity: didkit)."
    )


def run(
    topics: Sequence[str], settings: Settings, *, quick: bool = False,
    only: str | None = None, progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``topics`` and return the JSON-ready report."""
    rows: list[dict[str, Any]] = []
    for topic in topics:
        cases = _load(topic)
        if only:
            keep = {c.name for c in cases if only in c.name}
            # A kept case drags its comparison cases along, or its ratios are empty.
            keep |= {n for c in cases if c.name in keep for n in (c.floor, c.reference) if n}
            cases = [c for c in cases if c.name in keep]
        results = run_cases(cases, settings, progress=progress)
        by_name = {r.case.name: r for r in results}
        for r in results:
            rows.append({
                "topic": topic, "name": r.case.name, "group": r.case.group,
                "label": r.case.label, "n": r.n,
                "median_ns": r.median_ns, "p90_ns": r.p90_ns, "min_ns": r.min_ns,
                "mean_ns": r.mean_ns, "floor": r.case.floor, "reference": r.case.reference,
                **_ratios(r, by_name),
            })
    return {"meta": _meta(settings, quick, topics), "results": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("topics", nargs="*", metavar="topic",
                        help=f"topics to run (default: all of {', '.join(TOPICS)})")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: a few calls per case, figures not meaningful")
    parser.add_argument("--json", metavar="PATH", type=Path,
                        help="also write machine-readable results to PATH")
    parser.add_argument("--seconds", type=float, default=None,
                        help="timed budget per case (default 1.0)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved rounds per case (default 5)")
    parser.add_argument("-k", dest="only", default=None,
                        help="only cases whose name contains this (plus their floor/ref)")
    parser.add_argument("--list", action="store_true", help="list topics and cases, run nothing")
    args = parser.parse_args(argv)

    known = {**TOPICS, **LOAD_TOPICS}
    unknown = [t for t in args.topics if t not in known]
    if unknown:
        parser.error(f"unknown topic(s) {', '.join(unknown)}; known: {', '.join(known)}")
    load_topics = [t for t in args.topics if t in LOAD_TOPICS]
    topics = [t for t in args.topics if t in TOPICS] if args.topics else list(TOPICS)
    if args.list:
        for topic in topics:
            for case in _load(topic):
                print(f"{topic}\t{case.name}\t{case.label}")
        for topic in load_topics:
            configs = importlib.import_module(LOAD_TOPICS[topic]).CONFIGS
            for path, group in (configs.items() if isinstance(configs, dict)
                                else [("", configs)]):
                for config in group:
                    print(f"{topic}\t{config.name}\t{path or 'operations'} under load")
        return 0
    settings = Settings.quick() if args.quick else Settings()
    if args.seconds is not None:
        settings = replace(settings, target_seconds=args.seconds)
    if args.rounds is not None:
        settings = replace(settings, rounds=max(1, args.rounds))

    def progress(message: str) -> None:
        if sys.stderr.isatty():
            print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True)

    report = run(topics, settings, quick=args.quick, only=args.only, progress=progress)
    if sys.stderr.isatty():
        print("\r\033[K", end="", file=sys.stderr, flush=True)
    if topics:
        _print_table(report["results"], report["meta"])
    failed = False
    for topic in load_topics:
        module = importlib.import_module(LOAD_TOPICS[topic])
        load_report = module.run(quick=args.quick)
        module.print_table(load_report)
        report.setdefault("load", {})[topic] = load_report
        # Only the load topics report per-path errors (bench.translog has none).
        failed |= any(r.get("errors") for r in load_report.get("results", ()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
