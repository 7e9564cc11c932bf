"""The PostgreSQL checkout session store's statements read O(1) rows without statistics.

As tests/issuer/test_query_plans.py for the issuer: a put and a get run on a fresh
schema, their statements are captured at the cursor and their generic plans (the ones
psycopg's prepared statements keep) must not scan the table, which holds every live
session of every till.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import event

from tests.issuer.conftest import _schema_url
from tests.issuer.test_query_plans import Captured, nodes, pg_plans
from verifier._sessions import SqlSessionStore


@pytest.fixture
def store(postgres_url: str) -> Iterator[SqlSessionStore]:
    import psycopg

    schema = "tessera_test_" + secrets.token_hex(6)
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    made = SqlSessionStore(_schema_url(postgres_url, schema))
    try:
        yield made
    finally:
        made._engine.dispose()
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_a_put_and_a_get_do_not_scan_the_sessions(store: SqlSessionStore) -> None:
    store._next_purge_ms = int(time.time() * 1000) + 3_600_000  # the purge: not per put
    captured: Captured = {}

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.setdefault(statement, ("checkout", parameters))

    event.listen(store._engine, "before_cursor_execute", seen)
    try:
        for i in range(3):
            store.put(f"s{i}", {"status": "pending"}, ttl_seconds=300)
            assert store.get(f"s{i}") == {"status": "pending"}
    finally:
        event.remove(store._engine, "before_cursor_execute", seen)
    reads = {s: v for s, v in captured.items()
             if s.split(None, 1)[0].upper() in ("SELECT", "DELETE", "UPDATE")}
    assert len(reads) == 2, list(captured)  # the put's DELETE of its key, the get
    scans = [f"{node['Node Type']} ({node.get('Filter')}): {statement}"
             for statement, plan in pg_plans(store._engine, reads).items()
             for node in nodes(plan) if node["Node Type"] == "Seq Scan"]
    assert not scans, "\n".join(scans)
