"""``python -m bench translog [--quick] [--sizes 1000000,10000000] [--postgres URL]``.

The points transparency log in SQL (:mod:`issuer._translog`):

* **append rate**: single-leaf appends, one transaction each (a ledger write
  appends one or two leaves), and bulk appends (10,000 leaves a transaction,
  how the large trees below are built);
* **ledger write with and without the log**: ``earn`` through the ledger's
  write path (pending leaf + signed promise, the background sequencer
  integrating meanwhile) against the same write with no leaf, interleaved in
  one run, as a ratio (:func:`bench_ledger`);
* **proof time at size N** (1M and 10M leaves by default): inclusion proof for
  a random leaf, consistency proof between a random earlier size and N, the
  root at a random size: each a single batched query of O(log N) nodes;
* **redemption end to end**: a partner's ``POST /redemptions`` (presentation
  and KB-JWT verification, hold) plus ``/capture`` (redeem entry, log append,
  receipt, fresh-credential offer) through the FastAPI app in process.

The trees at 1M/10M are built with hash-only rows (``leaf_rows=False``):
proofs read nodes only, and 10M ledger entries would measure the ledger, not
the log. SQLite file by default; ``--postgres`` runs the same on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

__all__ = ["CONFIGS", "print_table", "run"]


@dataclass(frozen=True)
class Config:
    name: str


CONFIGS = [Config("append"), Config("proofs"), Config("redemption")]
BRAND = "bench-brand"
MEMBERS = 50


def _engine(url: str | None, tmp: Path) -> Engine:
    from issuer._db import make_engine
    from issuer.migrations import upgrade

    engine = make_engine(url or f"sqlite:///{tmp / 'bench.db'}")
    upgrade(engine)
    return engine


def _brand(engine: Engine, slug: str, master_key: bytes = b"\0" * 32) -> str:
    from issuer._admin import create_brand
    from issuer._keystore import SqlKeyStore
    from issuer._ledger import run_write
    from issuer._models import BrandCreate

    def make(session: Session) -> str:
        brand, _ = create_brand(session, keystore=SqlKeyStore(master_key),
                                data=BrandCreate(slug=slug, name=slug),
                                did=f"did:web:bench.example:brands:{slug}")
        return brand.id

    return run_write(engine, make)


def _records(start: int, count: int) -> list[Any]:
    from issuer._translog import LeafRecord
    from tessera.pointslog import LogLeaf

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    return [LeafRecord(LogLeaf.of(entry=i, member="m" * 43, delta=10, kind="earn",
                                  reason=None, time=t0 + timedelta(seconds=i),
                                  idempotency_key=f"k{i}"), i)
            for i in range(start, start + count)]


def _append(engine: Engine, brand_id: str, start: int, count: int) -> None:
    from issuer._db import session_scope
    from issuer._translog import append_leaves, log_state

    with session_scope(engine) as session:
        append_leaves(session, log_state(session, brand_id, lock=True), _records(start, count),
                      leaf_rows=False)


def _timings(fn: Callable[[], Any], n: int) -> dict[str, float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    samples.sort()
    return {"n": n, "median_ms": statistics.median(samples) * 1e3,
            "p90_ms": samples[int(0.9 * (n - 1))] * 1e3}


def bench_append(engine: Engine, quick: bool) -> dict[str, Any]:
    brand_id = _brand(engine, "append")
    single = 300 if quick else 3000
    t = time.perf_counter()
    for i in range(single):
        _append(engine, brand_id, i, 1)
    single_rate = single / (time.perf_counter() - t)
    bulk = 50_000 if quick else 200_000
    t = time.perf_counter()
    for start in range(single, single + bulk, 10_000):
        _append(engine, brand_id, start, 10_000)
    bulk_rate = bulk / (time.perf_counter() - t)
    return {"single_leaf_tx_per_s": single_rate, "bulk_leaves_per_s": bulk_rate}


def bench_ledger(engine: Engine, quick: bool) -> dict[str, Any]:
    """Ledger ``earn`` with the log on and off, interleaved in one run.

    *On* is the service's write path: the leaf queued as pending in the write's
    transaction, the inclusion promise signed with the brand key, and the
    background :class:`issuer._translog.Sequencer` integrating batches and
    signing heads meanwhile (its share of the CPU counts against *on*).
    *Off* skips the leaf and the promise. Blocks of ``block`` earns alternate
    on/off so machine load drifts hit both; each mode has its own member so
    both histories grow alike; earns go round-robin over ``MEMBERS`` members
    per mode (a member's write cost grows with its own lots, which is the
    ledger's cost, not the log's). ``ratio`` = on rate / off rate (1.0 = free);
    ``cpu_ratio`` the same of the process's CPU over all blocks, and
    ``cpu_ratio_median_of_pairs`` / ``cpu_ratio_quartiles_of_pairs`` of each round's
    off and on block (its median resists a burst of other tenants' load, as the
    wall-clock median of pairs does).
    """
    from issuer import _ledger, _translog
    from issuer._admin import create_program
    from issuer._keystore import SqlKeyStore
    from issuer._models import Member, ProgramCreate

    master_key = secrets.token_bytes(32)
    keystore = SqlKeyStore(master_key)
    brand_id = _brand(engine, f"ledger-{secrets.token_hex(3)}", master_key)

    def setup(session: Session) -> list[str]:
        program = create_program(session, brand_id=brand_id,
                                 data=ProgramCreate(name="Miles"))
        members = [Member(brand_id=brand_id, program_id=program.id, did=f"did:example:b{i}",
                          membership_number=f"{i:010d}") for i in range(2 * MEMBERS)]
        session.add_all(members)
        session.flush()
        return [m.id for m in members]

    member_ids = _ledger.run_write(engine, setup)
    pools = {"on": member_ids[:MEMBERS], "off": member_ids[MEMBERS:]}
    rounds, block = (10, 20) if quick else (40, 25)
    now = datetime.now(UTC)
    real = _translog.append_for_member
    elapsed = {"on": 0.0, "off": 0.0}
    cpu = {"on": 0.0, "off": 0.0}
    pairs: list[float] = []
    # Each round's two blocks as a CPU pair too: a burst of other tenants' load (cache,
    # frequency) inflates one round's pair, not the totals of every round after it.
    cpu_pairs: list[float] = []
    cpu_deltas: list[float] = []
    # One untimed earn per member first: a member's first write in a process looks
    # for older entries without a leaf once, in both modes alike.
    for mode in ("on", "off"):
        _translog.append_for_member = real if mode == "on" else (lambda *a, **k: [])
        for member in pools[mode]:
            _ledger.run_write(engine, lambda s, m=member: _ledger.earn(
                s, brand_id=brand_id, member_id=m, points=1, now=now,
                idempotency_key=f"{m}-warm"), keystore=keystore)
    _translog.append_for_member = real
    _translog.integrate_all(engine, keystore=keystore, clock=lambda: datetime.now(UTC))
    sequencer = _translog.Sequencer(engine, keystore=keystore, clock=lambda: datetime.now(UTC))
    sequencer.start()
    try:
        for r in range(rounds):
            took: dict[str, float] = {}
            spent: dict[str, float] = {}
            for mode in (("on", "off") if r % 2 == 0 else ("off", "on")):
                _translog.append_for_member = real if mode == "on" else (lambda *a, **k: [])
                t, c = time.perf_counter(), time.process_time()
                for i in range(block):
                    member = pools[mode][(r * block + i) % MEMBERS]
                    key = f"{member}-{r}-{i}"
                    _ledger.run_write(engine, lambda s, k=key, m=member: _ledger.earn(
                        s, brand_id=brand_id, member_id=m, points=1, now=now,
                        idempotency_key=k), keystore=keystore)
                took[mode] = time.perf_counter() - t
                spent[mode] = time.process_time() - c
                elapsed[mode] += took[mode]
                cpu[mode] += spent[mode]
            pairs.append(took["off"] / took["on"])
            cpu_pairs.append(spent["off"] / spent["on"])
            cpu_deltas.append((spent["on"] - spent["off"]) / block)
    finally:
        _translog.append_for_member = real
        sequencer.stop()
    leftover = _translog.integrate_all(engine, keystore=keystore,
                                       clock=lambda: datetime.now(UTC))
    n = rounds * block
    with_log, without_log = n / elapsed["on"], n / elapsed["off"]
    # The median of the back-to-back pairs resists a burst of load better than the
    # totals; the process's CPU time (every thread, the sequencer's too) resists the
    # other tenants of a shared machine (on SQLite it is nearly all the work).
    return {"earn_with_log_per_s": with_log, "earn_without_log_per_s": without_log,
            "ratio": with_log / without_log, "ratio_median_of_pairs": statistics.median(pairs),
            "cpu_ms_per_earn_on": cpu["on"] / n * 1e3, "cpu_ms_per_earn_off": cpu["off"] / n * 1e3,
            "cpu_ratio": cpu["off"] / cpu["on"],
            "cpu_ratio_median_of_pairs": statistics.median(cpu_pairs),
            "cpu_ratio_quartiles_of_pairs": _quartiles(cpu_pairs),
            "cpu_ms_on_minus_off_median_of_pairs": statistics.median(cpu_deltas) * 1e3,
            "n_each": n, "block": block, "left_for_the_last_batch": leftover}


def _quartiles(values: Sequence[float]) -> list[float]:
    """Lowest, first quartile, median, third quartile, highest."""
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return [min(values), q1, q2, q3, max(values)]


def bench_proofs(engine: Engine, size: int, quick: bool) -> dict[str, Any]:
    from issuer._db import session_scope
    from issuer._translog import consistency_proof, current_head, inclusion_proof, root_at
    from tessera import merkle

    brand_id = _brand(engine, f"proofs-{size}")
    t = time.perf_counter()
    batch = 20_000
    for start in range(0, size, batch):
        _append(engine, brand_id, start, min(batch, size - start))
    build_s = time.perf_counter() - t
    rng = random.Random(7)
    n = 50 if quick else 300
    with session_scope(engine) as session:
        tree_size, root = current_head(session, brand_id)
        assert tree_size == size

        def inclusion() -> None:
            index = rng.randrange(size)
            proof = inclusion_proof(session, brand_id, index, size)
            leaf = merkle.leaf_hash(_records(index, 1)[0].leaf.to_bytes())
            merkle.verify_inclusion(leaf, index, size, proof, root)

        def consistency() -> None:
            first = rng.randrange(1, size)
            proof = consistency_proof(session, brand_id, first, size)
            assert len(proof) <= 2 * size.bit_length()

        def root_of() -> None:
            root_at(session, brand_id, rng.randrange(1, size))

        out = {"size": size, "build_s": build_s, "inclusion": _timings(inclusion, n),
               "consistency": _timings(consistency, n), "root_at": _timings(root_of, n)}
    return out


def bench_redemption(quick: bool, tmp: Path) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from issuer._app import create_app
    from issuer._settings import Settings
    from tessera.formats import sd_jwt
    from tessera.keys import generate_signer
    from tessera.redemption import build_redeem_transaction_data

    settings = Settings(database_url=f"sqlite:///{tmp / 'redeem.db'}",
                        master_key=secrets.token_bytes(32), public_url="https://bench.example")
    engine = _engine(settings.database_url, tmp)
    brand_id = _brand(engine, "air", settings.master_key)
    from issuer._admin import create_api_key
    from issuer._ledger import run_write

    token = run_write(engine, lambda s: create_api_key(s, brand_id=brand_id)).token
    admin = {"Authorization": f"Bearer {token}"}
    client_id = "redirect_uri:https://cafe.example/cb"
    with TestClient(create_app(settings, engine=engine)) as client:
        program = client.post("/admin/v1/programs", headers=admin, json={
            "name": "Miles", "tiers": [{"name": "blue", "rank": 0, "qualifying_points": 0}]}
        ).json()
        holder = generate_signer("ES256")
        from tessera.did import did_key
        from tessera.jose import sign_compact

        did = did_key(holder.public_key)
        ch = client.post("/admin/v1/enrolment-challenges", headers=admin).json()
        proof = sign_compact({"typ": "tessera-enrolment+jwt",
                              "kid": f"{did}#{did.removeprefix('did:key:')}"},
                             {"iss": did, "aud": ch["audience"], "nonce": ch["nonce"],
                              "iat": int(time.time())}, holder)
        member = client.post("/admin/v1/members", headers=admin, json={
            "program_id": program["id"], "did": did, "proof": proof}).json()
        n = 30 if quick else 200
        client.post(f"/admin/v1/members/{member['id']}/points/earn", json={"points": 10 * n},
                    headers=admin | {"Idempotency-Key": "seed"})
        partner = client.post("/admin/v1/partners", headers=admin,
                              json={"name": "cafe", "client_id": client_id}).json()
        ph = {"Authorization": f"Bearer {partner['token']}"}
        from issuer._admin import brand_by_slug
        from issuer._db import session_scope
        from issuer._issuance import issue_for_member
        from issuer._keystore import SqlKeyStore
        from issuer._models import Member

        with session_scope(engine) as session:
            row = session.get(Member, member["id"])
            assert row is not None
            cred, _ = issue_for_member(
                session, settings=settings, keystore=SqlKeyStore(settings.master_key),
                brand=brand_by_slug(session, slug="air"), member=row,
                configuration_id="LoyaltyMembershipCredential_sd_jwt",
                holder_key=holder.public_key, now=datetime.now(UTC))
        brand_did = client.get("/brands/air/did.json").json()["id"]
        bodies = []
        for i in range(n):
            td = build_redeem_transaction_data(brand=brand_did, points=10,
                                               partner=partner["id"], order_reference=f"o{i}",
                                               credential_ids=["loyalty"])
            nonce = secrets.token_urlsafe(16)
            vp = sd_jwt.present(cred, disclose=["membership_number"], holder=holder,
                                audience=client_id, nonce=nonce, transaction_data=[td])
            bodies.append({"vp_token": {"loyalty": [vp]}, "transaction_data": td,
                           "nonce": nonce})
        hold_s, capture_s = [], []
        for body in bodies:
            t = time.perf_counter()
            r = client.post("/brands/air/redemptions", json=body, headers=ph)
            hold_s.append(time.perf_counter() - t)
            assert r.status_code == 201, r.text
            rid = r.json()["redemption"]["id"]
            t = time.perf_counter()
            r = client.post(f"/brands/air/redemptions/{rid}/capture", json={}, headers=ph)
            capture_s.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
    total = sum(hold_s) + sum(capture_s)
    return {"n": n, "redemptions_per_s": n / total,
            "hold_median_ms": statistics.median(hold_s) * 1e3,
            "capture_median_ms": statistics.median(capture_s) * 1e3}


def run(*, quick: bool = False, sizes: Sequence[int] | None = None,
        postgres: str | None = None) -> dict[str, Any]:
    sizes = list(sizes) if sizes else ([100_000] if quick else [1_000_000])
    report: dict[str, Any] = {"topic": "translog", "quick": quick,
                              "database": "postgresql" if postgres else "sqlite"}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        engine = _engine(postgres, tmp)
        report["append"] = bench_append(engine, quick)
        report["ledger"] = bench_ledger(engine, quick)
        report["proofs"] = [bench_proofs(engine, size, quick) for size in sizes]
        engine.dispose()
        report["redemption"] = bench_redemption(quick, tmp)
    return report


def print_table(report: dict[str, Any]) -> None:
    a, ledger, r = report["append"], report["ledger"], report["redemption"]
    print(f"transparency log ({report['database']})")
    print(f"  append, one leaf per transaction   {a['single_leaf_tx_per_s']:10.0f} /s")
    print(f"  append, 10k leaves per transaction {a['bulk_leaves_per_s']:10.0f} leaves/s")
    print(f"  ledger earn with log / without     {ledger['earn_with_log_per_s']:10.0f} /s "
          f"/ {ledger['earn_without_log_per_s']:.0f} /s = {ledger['ratio']:.2f}, median of "
          f"pairs {ledger['ratio_median_of_pairs']:.2f} (interleaved blocks of "
          f"{ledger['block']}, n={ledger['n_each']} each)")
    print(f"  ledger earn process CPU on / off    {ledger['cpu_ms_per_earn_on']:10.2f} ms "
          f"/ {ledger['cpu_ms_per_earn_off']:.2f} ms = {ledger['cpu_ratio']:.2f}")
    low, q1, mid, q3, high = ledger["cpu_ratio_quartiles_of_pairs"]
    print(f"  ledger earn CPU off / on per pair   median {mid:.3f} (quartiles {q1:.3f}-"
          f"{q3:.3f}, range {low:.3f}-{high:.3f}); on - off median "
          f"{ledger['cpu_ms_on_minus_off_median_of_pairs']:.3f} ms per earn")
    for p in report["proofs"]:
        print(f"  tree of {p['size']:>10,} leaves (built in {p['build_s']:.0f} s):")
        for name in ("inclusion", "consistency", "root_at"):
            t = p[name]
            print(f"    {name:<12} median {t['median_ms']:.3f} ms  p90 {t['p90_ms']:.3f} ms "
                  f"(n={t['n']})")
    print(f"  redemption end to end (hold + capture, in-process HTTP): "
          f"{r['redemptions_per_s']:.1f} /s; hold median {r['hold_median_ms']:.1f} ms, "
          f"capture median {r['capture_median_ms']:.1f} ms (n={r['n']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default="", help="comma-separated tree sizes")
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL instead of SQLite")
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()] or None
    report = run(quick=args.quick, sizes=sizes, postgres=args.postgres)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
