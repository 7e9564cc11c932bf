"""A small, generic micro-benchmark harness.

A :class:`Case` is a name, a ``setup(n) -> state`` that prepares everything
``n`` timed calls will need (so that per-call preparation, such as a fresh
request and nonce for each presentation, stays outside the timed region), a
``fn(state)`` that is the timed call, and optionally the names of the cases it
is compared with: its raw-crypto ``floor`` and a ``reference`` implementation.

Measurement, per case:

1. warm-up and calibration: calls until ``warmup_seconds`` have passed (at
   least a few calls) so caches and lazy imports are settled, and the per-call
   cost is known;
2. the budget (``target_seconds`` per case) is split into ``rounds``, and the
   rounds are interleaved across cases (round 1 of every case, then round 2,
   ...). On a shared machine the load drifts; interleaving spreads that drift
   over every case alike, so ratios measured in one run stay meaningful;
3. every call is timed on its own with :func:`time.perf_counter_ns` (the calls
   measured here take tens of microseconds or more, so the timer's own cost of
   well under a microsecond is noise) with the garbage collector paused, as
   :mod:`timeit` does; median and p90 come from all the samples.

``check(result)`` runs on every result after the timing, outside the timed
region, so a case that silently fails (a refused presentation is fast) cannot
produce a figure.
"""

from __future__ import annotations

import gc
import math
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Case", "Result", "Settings", "run_cases"]


@dataclass(frozen=True)
class Case:
    """One benchmark case."""

    name: str
    setup: Callable[[int], Any]
    """``setup(n)`` returns the state for ``n`` calls of ``fn``."""
    fn: Callable[[Any], Any]
    """The timed call: ``fn(state)``."""
    floor: str | None = None
    """Name of the raw-crypto case this one is compared with."""
    reference: str | None = None
    """Name of the reference-implementation case doing the same work."""
    group: str = ""
    """Rows of a group are shown together (``issue``, ``present``, ``verify``)."""
    label: str = ""
    """What the case measures, in a few words, for the table."""
    check: Callable[[Any], None] | None = None
    """Raise if a result is not the success the case claims to measure."""
    max_floor_ratio: float | None = None
    """Target: ``median / floor median`` at most this."""
    min_speedup: float | None = None
    """Target: ``reference median / median`` at least this."""


@dataclass(frozen=True)
class Settings:
    target_seconds: float = 1.0
    """Timed budget per case (all rounds together)."""
    warmup_seconds: float = 0.2
    rounds: int = 5
    min_calls: int = 5
    max_calls: int = 200_000

    @classmethod
    def quick(cls) -> Settings:
        return cls(target_seconds=0.05, warmup_seconds=0.01, rounds=1, min_calls=3)


@dataclass
class Result:
    case: Case
    samples_ns: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.samples_ns)

    @property
    def median_ns(self) -> float:
        return float(statistics.median(self.samples_ns))

    @property
    def p90_ns(self) -> float:
        return percentile(self.samples_ns, 0.90)

    @property
    def min_ns(self) -> float:
        return float(min(self.samples_ns))

    @property
    def mean_ns(self) -> float:
        return statistics.fmean(self.samples_ns)


def percentile(samples: Sequence[int], q: float) -> float:
    """Linear-interpolated percentile (the same rule as numpy's default)."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _timed(case: Case, n: int) -> tuple[list[int], list[Any]]:
    state = case.setup(n)
    fn = case.fn
    clock = time.perf_counter_ns
    samples = [0] * n
    results: list[Any] = [None] * n
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(n):
            t0 = clock()
            out = fn(state)
            samples[i] = clock() - t0
            results[i] = out
    finally:
        if was_enabled:
            gc.enable()
    return samples, results


def _checked(case: Case, results: Iterable[Any]) -> None:
    if case.check is None:
        return
    for out in results:
        case.check(out)


def _calibrate(case: Case, settings: Settings) -> float:
    """Warm the case up; return its median per-call time in ns."""
    samples: list[int] = []
    n = 3
    deadline = time.perf_counter() + settings.warmup_seconds
    while True:
        batch, results = _timed(case, n)
        _checked(case, results)
        samples.extend(batch)
        if time.perf_counter() >= deadline and len(samples) >= settings.min_calls:
            break
        n = min(n * 2, 1000)
    # The first calls pay for lazy imports and caches: keep the later half.
    tail = samples[len(samples) // 2:]
    return max(float(statistics.median(tail)), 1.0)


def run_cases(
    cases: Sequence[Case],
    settings: Settings,
    *,
    progress: Callable[[str], None] | None = None,
) -> list[Result]:
    """Calibrate every case, then run the interleaved rounds."""
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError("case names must be unique")
    per_call: dict[str, float] = {}
    for case in cases:
        if progress:
            progress(f"warm-up {case.name}")
        per_call[case.name] = _calibrate(case, settings)
    results = {case.name: Result(case) for case in cases}
    round_ns = settings.target_seconds * 1e9 / settings.rounds
    for r in range(settings.rounds):
        for case in cases:
            if progress:
                progress(f"round {r + 1}/{settings.rounds} {case.name}")
            # At least min_calls over all rounds, never more than max_calls.
            lo = math.ceil(settings.min_calls / settings.rounds)
            hi = max(lo, settings.max_calls // settings.rounds)
            n = min(max(int(round_ns / per_call[case.name]), lo), hi)
            samples, outs = _timed(case, n)
            _checked(case, outs)
            results[case.name].samples_ns.extend(samples)
    return [results[name] for name in names]


def git_commit() -> str | None:
    """The short commit of this checkout, for a report's metadata (None outside git)."""
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"],  # noqa: S607
                              capture_output=True, text=True, timeout=5, check=False,
                              cwd=Path(__file__).resolve().parent)
    except OSError:
        return None
    return done.stdout.strip() or None


def in_process_arguments(parser: Any, *, what: str, ops: int, members: int) -> None:
    """The options ``bench.issuance_cpu`` and ``bench.redemption_cpu`` share: how much to
    run (``--ops`` of ``what`` per round, ``--rounds``, ``--members``) and what to show
    (``--profile N``, ``--pstats PATH``, ``--show-sql``)."""
    parser.add_argument("--ops", type=int, default=ops, help=f"{what} per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--members", type=int, default=members)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="cProfile the run, print the top N functions (slows the run)")
    parser.add_argument("--pstats", metavar="PATH",
                        help="with --profile: also save the last round's stats there")
    parser.add_argument("--show-sql", action="store_true",
                        help=f"print the statements of the last of the {what}")


DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def schema_url(base: str, schema: str) -> str:
    """``base`` (a PostgreSQL URL) with every connection's ``search_path`` set to ``schema``."""
    import urllib.parse

    parts = urllib.parse.urlsplit(base)
    query = [*urllib.parse.parse_qsl(parts.query), ("options", f"-csearch_path={schema}")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def issuer_app(settings: Any, engine: Any) -> tuple[Any, dict[str, str]]:
    """The in-process drivers' issuer: its schema migrated, a brand ``bench`` created;
    the app and the admin headers of the brand's key."""
    from issuer._admin import create_brand
    from issuer._app import create_app
    from issuer._keystore import SqlKeyStore
    from issuer._ledger import run_write
    from issuer._models import BrandCreate
    from issuer.migrations import upgrade

    upgrade(engine)
    token = run_write(engine, lambda s: create_brand(
        s, keystore=SqlKeyStore(settings.master_key),
        data=BrandCreate(slug="bench", name="Bench"), did=settings.brand_did("bench"))[1].token)
    return create_app(settings, engine=engine), {"Authorization": f"Bearer {token}"}
