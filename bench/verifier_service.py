"""Verifier service throughput: complete OpenID4VP checkouts on loopback, 1 and 2 workers.

``python -m bench verifier_service [--quick] [--json PATH]`` (or
``python -m bench.verifier_service``). Each configuration starts the real
service, ``tessera verifier serve`` (uvicorn, ``--workers N``, a key file, a
trust list and the brand's pinned DID document), as a subprocess:

* 1 worker, SQLite session and nonce store;
* 2 workers, SQLite (one file shared by both processes);
* 2 workers, Redis (skipped with a note when no Redis answers).

The load generator is a second process (``multiprocessing``, spawn): one
asyncio loop, one ``httpx.AsyncClient`` with keep-alive, ``CONCURRENCY``
virtual wallets in a closed loop (each starts its next checkout when the last
one ends), for a fixed time after a warm-up whose checkouts are discarded.

One exchange is what a till and a wallet do for one checkout:

1. ``POST /requests`` (the till, with its till key; the service creates the
   request, its nonce and state, stores the session);
2. ``GET`` the ``request_uri`` (the wallet; the service signs the request
   object, single use);
3. the wallet builds its SD-JWT presentation with a KB-JWT over the nonce;
4. ``POST /response`` (``direct_post``; the service verifies the presentation
   against the trust list and the DCQL query, consumes the nonce, stores the
   result);
5. ``GET /requests/{id}/result`` (the till's poll; it must say ``ok``, or the
   exchange counts as an error and produces no latency sample).

Timed region: the **latency** of an exchange is the sum of the four HTTP
round trips (1, 2, 4, 5), as seen by the load generator. Step 3 is wallet
work (one ES256 signature, ~0.3 ms) and is excluded, and so is the wallet's
check of the request object's signature, which the load generator skips (it
only reads the payload): the figure is the service's, not a wallet's. The
credentials and member keys are issued before the run. **Exchanges per
second** is completed, successful exchanges divided by the measured wall
time: the wallet's step 3 overlaps other wallets' requests, but it still
takes CPU from the same machine as the server.

Caveat: everything runs on one machine (here 2 vCPUs, shared): the load
generator competes with the workers for the CPUs, so 2 workers cannot double
the 1-worker figure; the result shows how far the service scales under that
constraint, not on dedicated hardware.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

__all__ = ["CONFIGS", "Config", "main", "print_table", "run"]

CONCURRENCY: Final = 8
POLICY: Final = "gold-10"


@dataclass(frozen=True)
class Config:
    name: str
    workers: int
    store: str  # "sqlite" or "redis"


CONFIGS: Final = (
    Config("1 worker, SQLite", 1, "sqlite"),
    Config("2 workers, SQLite", 2, "sqlite"),
    Config("2 workers, Redis", 2, "redis"),
)


@dataclass
class Outcome:
    config: str
    workers: int
    store: str
    concurrency: int
    seconds: float
    exchanges: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    response_step_ms: list[float] = field(default_factory=list)
    skipped: str | None = None

    def summary(self) -> dict[str, Any]:
        lat = self.latencies_ms
        out = {k: v for k, v in asdict(self).items()
               if k not in ("latencies_ms", "response_step_ms")}
        out["exchanges_per_second"] = self.exchanges / self.seconds if self.seconds else 0.0
        out["p50_ms"] = _percentile(lat, 0.50) if lat else None
        out["p99_ms"] = _percentile(lat, 0.99) if lat else None
        out["mean_ms"] = statistics.fmean(lat) if lat else None
        out["response_step_p50_ms"] = (_percentile(self.response_step_ms, 0.50)
                                       if self.response_step_ms else None)
        return out


def _percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# -- the load generator (runs in its own process) ---------------------------------------------


async def _one_exchange(http: Any, wallet: dict[str, Any]) -> tuple[float, float]:
    """One checkout; returns (sum of the HTTP round trips, the direct_post step) in ms."""
    from tessera.encoding import b64url_decode
    from tessera.formats import sd_jwt

    clock = time.perf_counter
    t0 = clock()
    created = await http.post("/requests", json={"policy": POLICY})
    if created.status_code != 201:
        raise RuntimeError(f"create {created.status_code}")
    body = created.json()
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(body["deep_link"]).query))
    fetched = await http.get(query["request_uri"])
    if fetched.status_code != 200:
        raise RuntimeError(f"request object {fetched.status_code}")
    t1 = clock()
    # Wallet work, outside the timed region: read the request, build the answer.
    request = json.loads(b64url_decode(fetched.text.split(".")[1]))
    presentation = sd_jwt.present(
        wallet["credential"], disclose=["tier_at_least_gold"], holder=wallet["signer"],
        audience=query["client_id"], nonce=request["nonce"],
    )
    form = {"vp_token": json.dumps({"membership": [presentation]}, separators=(",", ":")),
            "state": request["state"]}
    t2 = clock()
    answered = await http.post(request["response_uri"], data=form)
    t3 = clock()
    if answered.status_code != 200:
        raise RuntimeError(f"response {answered.status_code}: {answered.text[:120]}")
    result = await http.get(body["result"])
    t4 = clock()
    view = result.json()
    if not (view.get("status") == "done" and view["result"]["ok"]):
        raise RuntimeError(f"result {view.get('result')}")
    return ((t1 - t0) + (t4 - t2)) * 1000, (t3 - t2) * 1000


async def _drive(base_url: str, till_key: str, wallets: list[dict[str, Any]], warmup: float,
                 seconds: float) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=len(wallets), max_keepalive_connections=len(wallets))
    start = time.perf_counter()
    measure_from, until = start + warmup, start + warmup + seconds
    latencies: list[float] = []
    steps: list[float] = []
    errors: list[str] = []
    # One client plays the till and the wallets: the till key rides on every call
    # (the wallet's two routes ignore it), as cheap as a header gets.
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0,
                                 headers={"Authorization": f"Bearer {till_key}"}) as http:

        async def user(wallet: dict[str, Any]) -> None:
            while time.perf_counter() < until:
                began = time.perf_counter()
                try:
                    latency, step = await _one_exchange(http, wallet)
                except (RuntimeError, httpx.HTTPError, KeyError, ValueError) as exc:
                    if began >= measure_from:
                        errors.append(f"{type(exc).__name__}: {exc}"[:200])
                    continue
                # Only exchanges that started and ended inside the measured window count.
                if began >= measure_from and time.perf_counter() <= until:
                    latencies.append(latency)
                    steps.append(step)

        await asyncio.gather(*(user(w) for w in wallets))
    return {"latencies_ms": latencies, "response_step_ms": steps, "errors": errors}


def _load_process(wallets: list[dict[str, Any]], jobs: Any, out: Any) -> None:
    """One load generator for the whole run: a job is (base URL, warm-up, seconds)."""
    from tessera.keys import signer_from_jwk

    live = [{"credential": w["credential"], "signer": signer_from_jwk(w["jwk"])}
            for w in wallets]
    out.put({"ready": True})
    while (job := jobs.get()) is not None:
        base_url, till_key, warmup, seconds = job
        try:
            out.put(asyncio.run(_drive(base_url, till_key, live, warmup, seconds)))
        except Exception as exc:
            out.put({"fatal": f"{type(exc).__name__}: {exc}"})


# -- the server -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _redis_url() -> str | None:
    url = (os.environ.get("TESSERA_BENCH_REDIS_URL") or os.environ.get("TESSERA_TEST_REDIS_URL")
           or "redis://127.0.0.1:6379/0")
    try:
        import redis

        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except Exception:
        return None
    return url


def _start_server(config: Config, work: Path, store_url: str) -> tuple[subprocess.Popen[bytes],
                                                                          str]:
    import httpx

    port = _free_port()
    log = (work / f"server-{port}.log").open("wb")
    cmd = [sys.executable, "-c", "import sys; from tessera.cli import app; app(sys.argv[1:])",
           "verifier", "serve", "--port", str(port), "--workers", str(config.workers),
           "--store", store_url, "--trust", str(work / "trust.json"),
           "--did-document", str(work / "brand.json"), "--key", str(work / "verifier.jwk"),
           "--tills", str(work / "tills.json"), "--log-level", "warning"]
    # One load generator on loopback is one client: far over the per-client
    # rate limits by design (docs/configuration.md), so they are off here.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                            start_new_session=True,
                            env={**os.environ, "TESSERA_RATE_LIMITS": "off"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if httpx.get(base + "/", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    _stop_server(proc)
    raise RuntimeError("the verifier did not start:\n" + (work / f"server-{port}.log")
                       .read_text(errors="replace")[-2000:])


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _prepare(work: Path, count: int) -> tuple[list[dict[str, Any]], str]:
    """Brand, trust list, DID document, one credential per virtual wallet; a till key."""
    from tessera.keys import generate_signer
    from verifier._tills import TillKeys
    from verifier.testing import TestHolder, TestIssuer

    brand = TestIssuer()
    (work / "trust.json").write_text(json.dumps({"issuers": [
        {"id": brand.did, "name": "Bench brand", "credential_types": ["*"]}]}))
    (work / "brand.json").write_text(json.dumps(brand.did_document))
    wallets = []
    for i in range(count):
        signer = generate_signer("ES256")
        credential = brand.issue_membership(TestHolder(signer), tier="gold",
                                            membership_number=f"B-{i:04d}")
        wallets.append({"credential": credential, "jwk": signer.export_private_jwk()})
    return wallets, str(TillKeys(work / "tills.json").create("bench")["token"])


def _store_url(config: Config, work: Path) -> str | None:
    if config.store == "redis":
        return _redis_url()
    return f"sqlite:///{work / f'verifier-{config.workers}w.db'}"


def run(*, quick: bool = False, configs: Sequence[Config] = CONFIGS,
        concurrency: int = CONCURRENCY) -> dict[str, Any]:
    """Run every configuration; the JSON-ready report.

    The servers and the load generator start together (their imports dominate a
    quick run); servers wait idle until their turn, so only one is under load
    at a time.
    """
    from concurrent.futures import ThreadPoolExecutor

    warmup, seconds = (0.5, 2.5) if quick else (3.0, 20.0)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="tessera-bench-verifier-") as tmp:
        work = Path(tmp)
        wallets, till_key = _prepare(work, concurrency)
        ctx = multiprocessing.get_context("spawn")
        jobs, results = ctx.Queue(), ctx.Queue()
        loader = ctx.Process(target=_load_process, args=(wallets, jobs, results), daemon=True)
        loader.start()
        urls = {c.name: _store_url(c, work) for c in configs}
        with ThreadPoolExecutor(len(configs)) as pool:
            starting = {c.name: pool.submit(_start_server, c, work, url)
                        for c in configs if (url := urls[c.name]) is not None}
            servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
            try:
                for name, future in starting.items():
                    servers[name] = future.result()
                results.get(timeout=120)  # the load generator is ready
                for config in configs:
                    outcome = Outcome(config.name, config.workers, config.store,
                                      concurrency, seconds)
                    outcomes.append(outcome)
                    if config.name not in servers:
                        outcome.skipped = "no Redis answered (set TESSERA_BENCH_REDIS_URL)"
                        continue
                    proc, base = servers[config.name]
                    jobs.put((base, till_key, warmup, seconds))
                    report = results.get(timeout=warmup + seconds + 120)
                    _stop_server(proc)
                    if "fatal" in report:
                        raise RuntimeError(f"load generator failed: {report['fatal']}")
                    outcome.latencies_ms = report["latencies_ms"]
                    outcome.response_step_ms = report["response_step_ms"]
                    outcome.exchanges = len(outcome.latencies_ms)
                    outcome.errors = len(report["errors"])
                    outcome.error_samples = sorted(set(report["errors"]))[:5]
            finally:
                jobs.put(None)
                for future in starting.values():
                    if future.done() and future.exception() is None:
                        _stop_server(future.result()[0])
                loader.join(timeout=30)
    return {
        "meta": {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "topic": "verifier_service", "quick": quick,
            "warmup_seconds": warmup, "measure_seconds": seconds,
            "concurrency": concurrency, "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "results": [o.summary() for o in outcomes],
    }


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=150)
    meta = report["meta"]
    table = Table(title="bench verifier_service (complete checkouts, loopback)",
                  title_justify="left")
    for col in ("configuration", "exchanges/s", "p50", "p99", "mean", "direct_post p50",
                "exchanges", "errors"):
        table.add_column(col, justify="left" if col == "configuration" else "right")
    for row in report["results"]:
        if row["skipped"]:
            table.add_row(row["config"], "skipped: " + row["skipped"], "", "", "", "", "", "")
            continue

        def ms(value: float | None) -> str:
            return "—" if value is None else f"{value:.1f} ms"

        table.add_row(row["config"], f"{row['exchanges_per_second']:.1f}", ms(row["p50_ms"]),
                      ms(row["p99_ms"]), ms(row["mean_ms"]), ms(row["response_step_p50_ms"]),
                      str(row["exchanges"]), str(row["errors"]))
    console.print(table)
    load = meta.get("load_average")
    console.print(
        f"Python {meta['python']} on {meta['cpu_count']} CPU(s)"
        + (f", load {load[0]:.2f}" if load else "")
        + f"; {meta['concurrency']} concurrent wallets, {meta['warmup_seconds']:g} s warm-up, "
        f"{meta['measure_seconds']:g} s measured per configuration. Latency = the four HTTP "
        "round trips of one checkout (wallet signing excluded)."
    )
    for row in report["results"]:
        for sample in row.get("error_samples") or []:
            console.print(f"  {row['config']}: {sample}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.verifier_service",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per configuration")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the report here")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args(argv)
    report = run(quick=args.quick, concurrency=max(1, args.concurrency))
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 1 if any(r["errors"] for r in report["results"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
