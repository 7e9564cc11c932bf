"""Issuance throughput over HTTP, and status-list costs at 1M entries.

``python -m bench.issuance http [--db sqlite|postgres] [--n 300] [--concurrency 8]``
starts the issuer with uvicorn and 2 workers on loopback, prepares members
and pre-authorized offers, then a load generator in a second process runs
the full OpenID4VCI exchange per credential (token, nonce, key proof,
credential) with a bounded number of concurrent clients and reports
credentials per second and p50/p99 latency of one whole exchange.

``python -m bench.issuance status`` (and :func:`cases` for the harness):
encode, decode and one lookup on a 1,048,576-entry Token Status List
(2 bits) and Bitstring Status List, with 1 % of entries set at random.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._harness import Case

MILLION = 1_048_576


# -- status lists ---------------------------------------------------------------------------


def _filled_token_list() -> Any:
    from tessera.status import StatusList

    lst = StatusList(2, MILLION)
    for _ in range(MILLION // 100):
        lst.set(secrets.randbelow(MILLION), 1)
    return lst


def _filled_bitstring() -> Any:
    from tessera.status import BitstringStatusList

    lst = BitstringStatusList(MILLION)
    for _ in range(MILLION // 100):
        lst.set(secrets.randbelow(MILLION), 1)
    return lst


def cases() -> list[Case]:
    from tessera.status import BitstringStatusList, StatusList

    token = _filled_token_list()
    token_json = token.encode()
    bits = _filled_bitstring()
    bits_encoded = bits.encode()
    decoded_token = StatusList.decode(token_json)
    decoded_bits = BitstringStatusList.decode(bits_encoded)
    return [
        Case("token list encode (1M x 2 bit)", lambda n: token, lambda s: s.encode(),
             group="status", label="zlib + base64url"),
        Case("token list decode (1M x 2 bit)", lambda n: token_json,
             lambda s: StatusList.decode(s), group="status", label="bounded inflate",
             check=lambda r: None if r.size >= MILLION else (_ for _ in ()).throw(
                 AssertionError("short list"))),
        Case("token list lookup", lambda n: decoded_token,
             lambda s: s.get(secrets.randbelow(MILLION)), group="status"),
        Case("bitstring encode (1M)", lambda n: bits, lambda s: s.encode(), group="status",
             label="gzip + multibase"),
        Case("bitstring decode (1M)", lambda n: bits_encoded,
             lambda s: BitstringStatusList.decode(s), group="status"),
        Case("bitstring lookup", lambda n: decoded_bits,
             lambda s: s.get(secrets.randbelow(MILLION)), group="status"),
    ]


def status_figures(repeat: int = 5) -> dict[str, float]:
    out: dict[str, float] = {}
    for case in cases():
        state = case.setup(repeat)
        samples = []
        for _ in range(repeat if "lookup" not in case.name else 10_000):
            t = time.perf_counter_ns()
            case.fn(state)
            samples.append(time.perf_counter_ns() - t)
        out[case.name] = statistics.median(samples) / 1e6
    return out


# -- HTTP issuance -----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _prepare(base: str, db_url: str, master_key: str, members: int, offers: int
             ) -> list[tuple[str, str, dict[str, Any]]]:
    """Brand, program, members (ES256 keys) and one offer per exchange: (offer, key, jwk)."""
    import httpx

    from issuer._admin import create_brand
    from issuer._db import make_engine
    from issuer._keystore import SqlKeyStore
    from issuer._ledger import run_write
    from issuer._models import BrandCreate
    from issuer._settings import Settings
    from tessera.did import did_key
    from tessera.encoding import b64url_decode
    from tessera.jose import sign_compact
    from tessera.keys import generate_signer

    settings = Settings(database_url=db_url, master_key=b64url_decode(master_key),
                        public_url=base)
    engine = make_engine(db_url)
    _, key = run_write(engine, lambda s: create_brand(
        s, keystore=SqlKeyStore(settings.master_key),
        data=BrandCreate(slug="bench", name="Bench"), did=settings.brand_did("bench")))
    engine.dispose()
    h = {"Authorization": f"Bearer {key.token}"}
    work = []
    with httpx.Client(base_url=base, timeout=30) as http:
        program = http.post("/admin/v1/programs", headers=h, json={
            "name": "P", "tiers": [{"name": "blue", "rank": 0, "qualifying_points": 0}]}).json()
        people = []
        for _ in range(members):
            signer = generate_signer("ES256")
            did = did_key(signer.public_key)
            signer = signer.with_key_id(f"{did}#{did.removeprefix('did:key:')}")
            ch = http.post("/admin/v1/enrolment-challenges", headers=h).json()
            proof = sign_compact({"typ": ch["typ"]}, {"iss": did, "aud": ch["audience"],
                                                      "nonce": ch["nonce"],
                                                      "iat": int(time.time())}, signer)
            m = http.post("/admin/v1/members", headers=h, json={
                "program_id": program["id"], "did": did, "proof": proof}).json()
            http.post(f"/admin/v1/members/{m['id']}/points/earn", json={"points": 1250},
                      headers={**h, "Idempotency-Key": secrets.token_hex(8)})
            people.append((m["id"], signer))
        for i in range(offers):
            member_id, signer = people[i % members]
            offer = http.post(f"/admin/v1/members/{member_id}/offers", headers=h, json={
                "credential_configuration_ids": ["LoyaltyPointsCredential_sd_jwt"],
                "ttl_seconds": 3600}).json()
            work.append((json.dumps(offer["credential_offer"]),
                         json.dumps(signer.export_private_jwk()), {"kid": signer.key_id}))
    return work


def _exchange(http: Any, offer_json: str, jwk_json: str, kid: str) -> float:
    from tessera.jose import sign_compact
    from tessera.keys import signer_from_jwk

    t0 = time.perf_counter()
    offer = json.loads(offer_json)
    issuer = offer["credential_issuer"]
    grant = offer["grants"]["urn:ietf:params:oauth:grant-type:pre-authorized_code"]
    token = http.post(f"{issuer}/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:pre-authorized_code",
        "pre-authorized_code": grant["pre-authorized_code"]})
    token.raise_for_status()
    nonce = http.post(f"{issuer}/nonce").json()["c_nonce"]
    signer = signer_from_jwk(json.loads(jwk_json), key_id=kid)
    proof = sign_compact({"typ": "openid4vci-proof+jwt"},
                         {"aud": issuer, "iat": int(time.time()), "nonce": nonce}, signer)
    r = http.post(f"{issuer}/credential", json={
        "credential_configuration_id": offer["credential_configuration_ids"][0],
        "proofs": {"jwt": [proof]}},
        headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    if r.status_code != 200 or "~" not in r.json()["credentials"][0]["credential"]:
        raise RuntimeError(f"credential endpoint: {r.status_code} {r.text[:200]}")
    return time.perf_counter() - t0


def _load(work: list[tuple[str, str, dict[str, Any]]], concurrency: int,
          queue: Any) -> None:
    """The load generator (its own process): a bounded pool of clients over loopback."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(timeout=60, limits=limits) as http:
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            latencies = list(pool.map(lambda w: _exchange(http, w[0], w[1], w[2]["kid"]),
                                      work))
        queue.put((time.perf_counter() - start, latencies))


def http_figures(db: str, n: int, concurrency: int, workers: int = 2) -> dict[str, Any]:
    from issuer._settings import generate_master_key
    from issuer.migrations import upgrade

    tmp = tempfile.mkdtemp(prefix="tessera-bench-")
    if db == "sqlite":
        db_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
    else:
        import psycopg

        schema = "bench_" + secrets.token_hex(4)
        base_pg = os.environ.get("TESSERA_TEST_POSTGRES_URL",
                                 "postgresql://postgres@127.0.0.1:5432/test")
        with psycopg.connect(base_pg, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')
        db_url = f"{base_pg}?options=-csearch_path%3D{schema}"
    upgrade(db_url)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    master = generate_master_key()
    # The load generator is one client on loopback, over the per-client rate
    # limits by design (docs/configuration.md): off for the benchmark.
    env = {**os.environ, "TESSERA_DATABASE_URL": db_url, "TESSERA_MASTER_KEY": master,
           "TESSERA_PUBLIC_URL": base, "TESSERA_RATE_LIMITS": "off"}
    server = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "uvicorn", "issuer._cli:app_from_env", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
         "--log-level", "warning", "--no-access-log"], env=env)
    try:
        import httpx

        for _ in range(200):
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        work = _prepare(base, db_url, master, members=min(50, n), offers=n)
        queue: Any = multiprocessing.get_context("spawn").Queue()
        proc = multiprocessing.get_context("spawn").Process(
            target=_load, args=(work, concurrency, queue))
        proc.start()
        elapsed, latencies = queue.get(timeout=600)
        proc.join()
    finally:
        server.terminate()
        server.wait(10)
    latencies.sort()
    return {"db": db, "workers": workers, "concurrency": concurrency, "credentials": n,
            "credentials_per_second": round(n / elapsed, 1),
            "p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "p99_ms": round(1000 * latencies[min(len(latencies) - 1,
                                                 int(len(latencies) * 0.99))], 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.issuance")
    sub = parser.add_subparsers(dest="what", required=True)
    h = sub.add_parser("http")
    h.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    h.add_argument("--n", type=int, default=300)
    h.add_argument("--concurrency", type=int, default=8)
    h.add_argument("--workers", type=int, default=2)
    sub.add_parser("status")
    args = parser.parse_args(argv)
    if args.what == "http":
        print(json.dumps(http_figures(args.db, args.n, args.concurrency, args.workers)))
    else:
        print(json.dumps({k: round(v, 3) for k, v in status_figures().items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
