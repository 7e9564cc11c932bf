"""``python -m bench.redemption_cpu``: CPU and statements per hold + capture, without HTTP.

The two redemption routes (``POST /brands/{slug}/redemptions`` and its
``/capture``) called as functions in this process, on PostgreSQL (or any
``--url``), so a shared machine's noise weighs less than through servers:
process CPU time per hold + capture (``time.process_time``) and the SQL
statements they send (a ``before_cursor_execute`` listener). ``--profile N``
prints cProfile's top N functions (by own time and by cumulative time).

Setup goes through the API in-process (a brand, a one-tier program, members
with points, a partner, a membership credential each); the presentations are
built before the clock starts. bench/README.md "Redemption profile (session 4)".
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import secrets
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from bench._harness import DEFAULT_POSTGRES, in_process_arguments, issuer_app, schema_url

POINTS = 10


def run(url: str, ops: int, members: int, rounds: int, profile: int,
        show_sql: bool = False, pstats_out: str | None = None) -> dict[str, Any]:
    import psycopg
    from fastapi.security import HTTPAuthorizationCredentials
    from fastapi.testclient import TestClient
    from sqlalchemy import event

    from bench.load import _enrol
    from issuer._admin import brand_by_slug
    from issuer._db import make_engine, session_scope
    from issuer._issuance import issue_for_member
    from issuer._models import Member
    from issuer._routes_redeem import CaptureBody, RedemptionRequest, capture, redeem
    from issuer._settings import Settings
    from tessera.formats import sd_jwt
    from tessera.redemption import build_redeem_transaction_data

    schema = "tessera_bench_" + secrets.token_hex(6)
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    postgres = plain.startswith("postgresql")
    if postgres:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        url = schema_url(plain, schema)
    settings = Settings(database_url=url, master_key=secrets.token_bytes(32),
                        public_url="https://issuer.example", log_sequencer_interval=0)
    engine = make_engine(settings.database_url)
    try:
        app, headers = issuer_app(settings, engine)
        client_id = "redirect_uri:https://cafe.example/checkout"
        total = ops * rounds
        with TestClient(app) as http:
            program = http.post("/admin/v1/programs", headers=headers, json={
                "name": "Miles", "tiers": [{"name": "blue", "rank": 0,
                                            "qualifying_points": 0}]}).json()
            people = _enrol(http, headers, program["id"], members,
                            POINTS * (total // members + 2))
            partner = http.post("/admin/v1/partners", headers=headers,
                                json={"name": "cafe", "client_id": client_id}).json()
            brand_did = http.get("/brands/bench/did.json").json()["id"]
            state = app.state.tessera
            creds = []
            with session_scope(engine) as session:
                brand = brand_by_slug(session, slug="bench")
                for member_id, signer in people:
                    cred, _ = issue_for_member(
                        session, settings=settings, keystore=state.keystore, brand=brand,
                        member=session.get(Member, member_id),
                        configuration_id="LoyaltyMembershipCredential_sd_jwt",
                        holder_key=signer.public_key, now=datetime.now(UTC))
                    creds.append((cred, signer))
            auth = HTTPAuthorizationCredentials(scheme="Bearer",
                                                credentials=partner["token"])
            bodies = []
            for i in range(total):
                cred, signer = creds[i % len(creds)]
                td = build_redeem_transaction_data(
                    brand=brand_did, points=POINTS, partner=partner["id"],
                    order_reference=f"o{i}", credential_ids=["loyalty"])
                nonce = secrets.token_urlsafe(16)
                vp = sd_jwt.present(cred, disclose=["membership_number"], holder=signer,
                                    audience=client_id, nonce=nonce, transaction_data=[td])
                bodies.append(RedemptionRequest(vp_token={"loyalty": [vp]},
                                                transaction_data=td, nonce=nonce))
            statements = [0]
            shown: list[str] = []

            def count(_conn: Any, _cursor: Any, sql: str, *_: Any) -> None:
                statements[0] += 1
                if show_sql:
                    shown.append(" ".join(sql.split())[:160])

            def one(body: RedemptionRequest) -> None:
                now = datetime.now(UTC)
                held = redeem("bench", body, auth, state, now)
                assert held.status_code == 201, held.body
                rid = json.loads(held.body)["redemption"]["id"]
                done = capture("bench", rid, CaptureBody(), auth, state, datetime.now(UTC))
                assert done.status_code == 200, done.body

            one(bodies.pop())  # warm: statement caches, the brand and partner caches
            event.listen(engine, "before_cursor_execute", count)
            per_op: list[float] = []
            calls = 0.0
            for _ in range(rounds):
                batch, bodies = bodies[:ops], bodies[ops:]
                statements[0] = 0
                prof = cProfile.Profile(time.process_time) if profile else None
                start = time.process_time()
                for body in batch:
                    if prof is not None:
                        prof.runcall(one, body)
                    else:
                        one(body)
                per_op.append((time.process_time() - start) * 1000 / len(batch))
                per_stmt = statements[0] / len(batch)
                if prof is not None:
                    calls = pstats.Stats(prof).total_calls / len(batch)  # type: ignore[attr-defined]
                    for key in ("tottime", "cumulative"):
                        pstats.Stats(prof).sort_stats(key).print_stats(profile)
                    if pstats_out:
                        prof.dump_stats(pstats_out)
            event.remove(engine, "before_cursor_execute", count)
            if show_sql:  # the statements of the last hold + capture
                print("\n".join(shown[-int(per_stmt):]))
    finally:
        engine.dispose()
        if postgres:
            with psycopg.connect(plain, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return {"cpu_ms_per_op": per_op, "median_cpu_ms": statistics.median(per_op),
            "statements_per_op": per_stmt, "ops": ops, "rounds": rounds,
            "python_calls_per_op": calls if profile else None,
            "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("TESSERA_TEST_POSTGRES_URL",
                                                        DEFAULT_POSTGRES))
    in_process_arguments(parser, what="hold + capture pairs", ops=50, members=4)
    args = parser.parse_args()
    report = run(args.url, args.ops, args.members, args.rounds, args.profile, args.show_sql,
                 args.pstats)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
