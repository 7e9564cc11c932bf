"""``python -m bench.issuance_cpu``: CPU, statements and Python calls per OpenID4VCI exchange.

The issuer app driven in this process over raw ASGI (no HTTP client, no
sockets): per exchange ``POST /token`` (pre-authorized code), ``POST
/nonce``, ``POST /credential``, for one credential on the member's DID key
(``--batch 1``) or a batch the way our wallet asks (``--batch 10``: the
member's key attestation of 10 fresh keys over the ``c_nonce``, one ``jwt``
proof per key carrying it). Reported per exchange: process CPU time
(``time.process_time``: the event loop and the worker threads the routes run
on) less the wallet's signing, which is timed apart and subtracted; SQL
statements and transactions on the app's engine (the c_nonce store shares it);
with ``--profile N`` cProfile's Python calls and its top N functions (the
thread-pool work then runs inline on the loop's thread, which cProfile sees). These
counts do not move with the shared machine's load as rates do.

SQLite (a file in a temporary directory: WAL, the write gate, as served) or
PostgreSQL (``--url``, a fresh schema). Setup goes through the admin API in
process; offers and fresh keys are made before the clock starts.
bench/README.md "Issuance, third pass (session 5)".
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import secrets
import statistics
import tempfile
import time
from datetime import UTC, datetime
from typing import Any

from bench._harness import DEFAULT_POSTGRES, in_process_arguments, issuer_app, schema_url

PUBLIC = "https://issuer.example"


async def asgi(app: Any, method: str, path: str, body: bytes = b"",
               headers: tuple[tuple[str, str], ...] = ()) -> tuple[int, bytes]:
    """One request straight into the ASGI app: the least a server could add."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": method, "scheme": "https", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
             "server": ("issuer.example", 443),
             "headers": [(b"host", b"issuer.example"),
                         (b"content-length", str(len(body)).encode()),
                         *((k.lower().encode(), v.encode()) for k, v in headers)]}
    sent = False
    status = 0
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # no disconnect while the app still runs
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


def _time_write_lock(database: str, held: list[float]) -> None:
    """Add to ``held[0]`` the seconds each write transaction holds the file's write gate
    (:class:`tessera.sqlite.WriteGate`: from before ``BEGIN IMMEDIATE`` to the end of the
    commit, its fsync included), and to ``held[1]`` the CPU time of the holding thread in
    that span (what the shared machine's load does not stretch)."""
    from tessera.sqlite import write_gate

    gate = write_gate(database)
    acquire, release = gate.acquire, gate.release
    since: dict[int, tuple[float, float]] = {}

    def timed_acquire(holder: Any) -> None:
        acquire(holder)
        since[id(holder)] = (time.perf_counter(), time.thread_time())

    def timed_release(holder: Any) -> None:
        start = since.pop(id(holder), None)
        if start is not None:
            held[0] += time.perf_counter() - start[0]
            held[1] += time.thread_time() - start[1]
        release(holder)

    gate.acquire = timed_acquire  # type: ignore[method-assign]
    gate.release = timed_release  # type: ignore[method-assign]


def run(url: str | None, batch: int, ops: int, rounds: int, members: int, profile: int,
        show_sql: bool = False, pstats_out: str | None = None) -> dict[str, Any]:
    import psycopg
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from bench.load import ATTESTATION_TYP, PROOF_TYP, _enrol, form
    from issuer import _openid4vci
    from issuer._admin import brand_by_slug
    from issuer._db import make_engine
    from issuer._ledger import run_write
    from issuer._settings import Settings
    from tessera.jose import sign_compact
    from tessera.keys import generate_signer
    from tessera.ratelimit import RateLimitConfig

    schema = "tessera_bench_" + secrets.token_hex(6)
    postgres = url is not None
    temp = None
    if url is not None:
        plain = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        db_url = schema_url(plain, schema)
    else:
        temp = tempfile.TemporaryDirectory(prefix="tessera-issuance-cpu-")
        db_url = f"sqlite:///{temp.name}/issuer.db"
    settings = Settings(database_url=db_url, master_key=secrets.token_bytes(32),
                        public_url=PUBLIC, log_sequencer_interval=0,
                        rate_limits=RateLimitConfig(enabled=False))
    engine = make_engine(settings.database_url)
    total = ops * rounds + 1
    try:
        app, headers = issuer_app(settings, engine)
        with TestClient(app) as http:
            program = http.post("/admin/v1/programs", headers=headers, json={
                "name": "P", "tiers": [{"name": "blue", "rank": 0,
                                        "qualifying_points": 0}]}).json()
            people = _enrol(http, headers, program["id"], members, 1250)
        request = _openid4vci.OfferRequest(
            credential_configuration_ids=["LoyaltyPointsCredential_sd_jwt"], ttl_seconds=3600)

        def make(session: Any) -> list[tuple[str, Any, list[tuple[Any, dict[str, Any]]]]]:
            brand = brand_by_slug(session, slug="bench")
            out = []
            for i in range(total):
                member_id, signer = people[i % len(people)]
                offer = _openid4vci.create_offer(session, settings=settings, brand=brand,
                                                 member_id=member_id, request=request,
                                                 now=datetime.now(UTC))
                code = offer.credential_offer["grants"][_openid4vci.GRANT_PRE_AUTHORIZED][
                    "pre-authorized_code"]
                fresh = [] if batch == 1 else [
                    (s, s.public_key.to_jwk())
                    for s in (generate_signer("ES256") for _ in range(batch))]
                out.append((code, signer, fresh))
            return out

        items = run_write(engine, make)
        held = [0.0, 0.0]
        if not postgres:
            _time_write_lock(str(engine.url.database), held)
        base = "/brands/bench"
        audience = f"{PUBLIC}{base}"
        wallet = [0.0]

        def proofs(signer: Any, fresh: list[tuple[Any, dict[str, Any]]], nonce: str) -> bytes:
            start = time.process_time()
            iat = int(time.time())
            if not fresh:
                jwts = [sign_compact({"typ": PROOF_TYP},
                                     {"aud": audience, "iat": iat, "nonce": nonce}, signer)]
            else:
                attestation = sign_compact({"typ": ATTESTATION_TYP}, {
                    "iat": iat, "exp": iat + 300, "nonce": nonce,
                    "attested_keys": [jwk for _, jwk in fresh]}, signer)
                jwts = [sign_compact({"typ": PROOF_TYP, "jwk": jwk,
                                      "key_attestation": attestation},
                                     {"aud": audience, "iat": iat, "nonce": nonce}, key)
                        for key, jwk in fresh]
            body = json.dumps({"credential_configuration_id": "LoyaltyPointsCredential_sd_jwt",
                               "proofs": {"jwt": jwts}}).encode()
            wallet[0] += time.process_time() - start
            return body

        async def exchange(item: tuple[str, Any, list[Any]]) -> None:
            code, signer, fresh = item
            status, body = await asgi(
                app, "POST", f"{base}/token",
                form({"grant_type": _openid4vci.GRANT_PRE_AUTHORIZED,
                      "pre-authorized_code": code}),
                (("content-type", "application/x-www-form-urlencoded"),))
            assert status == 200, body
            access = json.loads(body)["access_token"]
            status, body = await asgi(app, "POST", f"{base}/nonce")
            assert status == 200, body
            request = proofs(signer, fresh, json.loads(body)["c_nonce"])
            status, body = await asgi(app, "POST", f"{base}/credential", request,
                                      (("content-type", "application/json"),
                                       ("authorization", f"Bearer {access}")))
            issued = json.loads(body).get("credentials") if status == 200 else None
            assert isinstance(issued, list) and len(issued) == max(1, len(fresh)), body

        async def exchanges(batch_items: list[Any], prof: cProfile.Profile | None) -> None:
            for item in batch_items:
                if prof is not None:
                    prof.enable()
                await exchange(item)
                if prof is not None:
                    prof.disable()

        counts = {"statements": 0, "commits": 0}
        shown: list[str] = []

        def count(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
            counts["statements"] += 1
            if show_sql:
                shown.append(" ".join(sql.split())[:160])

        def committed(_conn: Any) -> None:
            counts["commits"] += 1

        loop = asyncio.new_event_loop()
        if profile:
            # cProfile sees one thread: the routes' thread-pool work runs inline on the
            # loop's thread instead (the thread hops' own cost is left out of the count).
            import anyio.to_thread

            async def inline(func: Any, *args: Any, **_: Any) -> Any:
                return func(*args)

            anyio.to_thread.run_sync = inline  # type: ignore[assignment]
        try:
            loop.run_until_complete(exchanges(items[:1], None))  # warm: caches, statements
            items = items[1:]
            event.listen(engine, "before_cursor_execute", count)
            event.listen(engine, "commit", committed)
            per_op: list[float] = []
            lock_ms: list[float] = []
            lock_cpu_ms: list[float] = []
            calls = 0.0
            for _ in range(rounds):
                chunk, items = items[:ops], items[ops:]
                counts.update(statements=0, commits=0)
                wallet[0] = held[0] = held[1] = 0.0
                prof = cProfile.Profile(time.process_time) if profile else None
                start = time.process_time()
                loop.run_until_complete(exchanges(chunk, prof))
                spent = time.process_time() - start - wallet[0]
                per_op.append(spent * 1000 / len(chunk))
                per_stmt = counts["statements"] / len(chunk)
                per_commit = counts["commits"] / len(chunk)
                lock_ms.append(held[0] * 1000 / len(chunk))
                lock_cpu_ms.append(held[1] * 1000 / len(chunk))
                if prof is not None:
                    calls = pstats.Stats(prof).total_calls / len(chunk)  # type: ignore[attr-defined]
            event.remove(engine, "before_cursor_execute", count)
            event.remove(engine, "commit", committed)
        finally:
            loop.close()
        if show_sql:  # the statements of the last exchange
            print("\n".join(shown[-int(per_stmt):]))
        if profile and prof is not None:
            if pstats_out:
                prof.dump_stats(pstats_out)
            for key in ("tottime", "cumulative"):
                pstats.Stats(prof).sort_stats(key).print_stats(profile)
    finally:
        engine.dispose()
        if postgres:
            with psycopg.connect(plain, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        if temp is not None:
            temp.cleanup()
    return {"database": "postgresql" if postgres else "sqlite", "batch": batch,
            "cpu_ms_per_exchange": [round(x, 2) for x in per_op],
            "median_cpu_ms": round(statistics.median(per_op), 2),
            "statements_per_exchange": per_stmt, "commits_per_exchange": per_commit,
            # SQLite: wall time the file's write lock was held per exchange (one writer at a
            # time across the workers: what concurrent exchanges queue for).
            "write_lock_ms_per_exchange": None if postgres else [round(x, 2) for x in lock_ms],
            "write_lock_cpu_ms_per_exchange":
                None if postgres else [round(x, 2) for x in lock_cpu_ms],
            "python_calls_per_exchange": calls if profile else None,
            "ops": ops, "rounds": rounds, "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--url", default=os.environ.get("TESSERA_TEST_POSTGRES_URL",
                                                        DEFAULT_POSTGRES),
                        help="PostgreSQL server (with --db postgresql)")
    parser.add_argument("--batch", type=int, default=1, help="credentials per exchange")
    in_process_arguments(parser, what="exchanges", ops=40, members=8)
    args = parser.parse_args()
    report = run(args.url if args.db == "postgresql" else None, args.batch, args.ops,
                 args.rounds, args.members, args.profile, args.show_sql, args.pstats)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
