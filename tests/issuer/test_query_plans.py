"""Every statement the hot paths send reads O(1) rows, whatever the planner's statistics.

The hot paths (a ledger earn, a redemption's hold and capture, an OpenID4VCI
issuance, the log sequencer's batch) run once warm on a fresh schema; every
statement they send is captured at the DBAPI cursor (as :func:`issuer._db.core`
and the ORM send it) and its plan is checked:

* PostgreSQL: the *generic* plan (``plan_cache_mode = force_generic_plan``, the
  plan psycopg's prepared statements keep after their fifth execution) on tables
  never analyzed (CI runs with autovacuum off; an empty table is where a
  sequential scan looks cheapest). No sequential scan of a table that grows with
  the history, and no index scan that filters rows its index condition fetched,
  unless the condition pins a unique key (at most one row);
* SQLite, without ``ANALYZE``: ``EXPLAIN QUERY PLAN`` searches an index (no
  ``SCAN``) of every table that grows, and no index used is a strict prefix of
  another index of its table (the pick that made PostgreSQL read every row of a
  brand, bench/README.md "Hot statements in O(1) without planner statistics
  (session 7)").
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from jwcrypto import jwk
from sqlalchemy import event, inspect
from sqlalchemy.engine import Engine

from issuer._db import is_sqlite
from tessera.did import did_key
from tessera.keys import signer_from_jwk
from tests.issuer.conftest import Service
from tests.issuer.oid4vci_wallet import SpecWallet, fresh_keys
from tests.issuer.test_redemption import make_world

# Tables whose size does not grow with the traffic (a brand's configuration): a scan of
# one of them costs the same at any history.
CONFIGURATION = frozenset({"brand", "brand_key", "api_key", "program", "tier", "partner",
                           "partner_key", "transparency_log", "alembic_version"})
# The log sequencer's queue: what arrived since its last batch (half a second), deleted as
# it is integrated; read by brand, with no index by member on purpose (issuer._log_models).
QUEUES = frozenset({"log_pending"})

Captured = dict[str, tuple[str, Any]]  # SQL text -> (hot path, its parameters)


@pytest.fixture
def hot(service: Service) -> Captured:
    """Each hot path once to warm up, then once more with every statement captured."""
    sent: list[tuple[str, Any]] = []
    world = make_world(service)
    member_id = world.member["id"]
    cred = world.credential()
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    issued = _member(service, key)
    did = did_key(signer_from_jwk(json.loads(key.export_private())).public_key)
    kid = f"{did}#{did.removeprefix('did:key:')}"

    def earn() -> None:
        r = service.post("air", f"/admin/v1/members/{member_id}/points/earn", {"points": 10})
        assert r.status_code == 201, r.text

    def redemption() -> None:
        order = secrets.token_hex(4)
        r = world.redeem(world.body(cred, world.td(10, order=order)))
        assert r.status_code == 201, r.text
        rid = r.json()["redemption"]["id"]
        r = service.client.post(f"/brands/air/redemptions/{rid}/capture", json={},
                                headers=world.ph())
        assert r.status_code == 200, r.text

    def issuance() -> None:
        r = service.client.post(f"/admin/v1/members/{issued}/offers", headers=service.h("air"),
                                json={"credential_configuration_ids":
                                      ["LoyaltyPointsCredential_sd_jwt"]})
        assert r.status_code == 201, r.text
        wallet = SpecWallet(service.client, key, kid=kid)
        session = wallet.start(r.json()["offer_uri"])
        sent.clear()
        assert wallet.token(session).status_code == 200
        # A batch, as wallets ask: its status slots are probed together.
        r = wallet.request_batch(session, "LoyaltyPointsCredential_sd_jwt", fresh_keys(3),
                                 now=service.clock.now)
        assert r.status_code == 200, r.text
        assert len(r.json()["credentials"]) == 3

    def sequencer() -> None:
        service.integrate()

    paths: dict[str, Callable[[], None]] = {"earn": earn, "redemption": redemption,
                                           "issuance": issuance, "sequencer": sequencer}
    for run in paths.values():
        run()
    captured: Captured = {}

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any,
             executemany: bool) -> None:
        sent.append((statement, parameters[0] if executemany else parameters))

    event.listen(service.engine, "before_cursor_execute", seen)
    try:
        for name, run in paths.items():
            sent.clear()
            run()
            for statement, parameters in sent:
                captured.setdefault(statement, (name, parameters))
    finally:
        event.remove(service.engine, "before_cursor_execute", seen)
    return captured


def _member(service: Service, key: jwk.JWK) -> str:
    program = service.program("air", name=f"Miles {secrets.token_hex(4)}")
    member = service.enrol("air", program["id"], signer_from_jwk(json.loads(key.export_private())))
    r = service.post("air", f"/admin/v1/members/{member['id']}/points/earn", {"points": 1250})
    assert r.status_code == 201, r.text
    return str(member["id"])


_PARAM = re.compile(r"%\((\w+)\)s|%s|%%")


def _numbered(statement: str, parameters: Any) -> tuple[str, list[Any]]:
    """A psycopg (pyformat) statement with ``$n`` placeholders, and its values in order."""
    names: list[Any] = []
    values: list[Any] = []

    def number(match: re.Match[str]) -> str:
        if match.group(0) == "%%":
            return "%"
        key = match.group(1) if match.group(1) is not None else len(values)
        if match.group(1) is not None and key in names:
            return f"${names.index(key) + 1}"
        names.append(key)
        values.append(parameters[key])
        return f"${len(values)}"

    return _PARAM.sub(number, statement), values


def _reads(statement: str) -> bool:
    """Whether a statement reads a table (an INSERT of VALUES reads none: its foreign keys
    and unique constraints are checked through their indexes)."""
    verb = statement.split(None, 1)[0].upper()
    return verb in ("SELECT", "UPDATE", "DELETE", "WITH") or (
        verb == "INSERT" and re.search(r"\bSELECT\b", statement, re.IGNORECASE) is not None)


def pg_plans(engine: Engine, captured: Captured) -> dict[str, Any]:
    """The generic plan of each captured statement, as EXPLAIN (FORMAT JSON) gives it."""
    import psycopg

    plans: dict[str, Any] = {}
    raw = engine.raw_connection()
    try:
        conn = raw.dbapi_connection
        assert isinstance(conn, psycopg.Connection)
        conn.rollback()
        conn.autocommit = True
        conn.execute("SET plan_cache_mode = force_generic_plan")
        for statement, (_path, parameters) in captured.items():
            if not _reads(statement):
                continue
            sql, values = _numbered(statement, parameters)
            # A parameter whose type nothing in the statement says (a constant column):
            # text, as the driver sends it.
            types = ["unknown"] * len(values)
            while True:
                try:
                    conn.execute(f"PREPARE tessera_plan ({', '.join(types)}) AS {sql}"
                                 if types else f"PREPARE tessera_plan AS {sql}")
                    break
                except psycopg.errors.IndeterminateDatatype as exc:
                    found = re.search(r"parameter \$(\d+)", str(exc))
                    assert found is not None, exc
                    types[int(found.group(1)) - 1] = "text"
            args = ", ".join(["%s"] * len(values))
            # The values as literals (a client-side cursor): EXECUTE coerces each to its
            # parameter's type.
            row = psycopg.ClientCursor(conn).execute(
                f"EXPLAIN (FORMAT JSON) EXECUTE tessera_plan{f'({args})' if values else ''}",
                values).fetchone()
            assert row is not None
            plans[statement] = row[0][0]["Plan"]
            conn.execute("DEALLOCATE tessera_plan")
        conn.autocommit = False
    finally:
        raw.close()
    return plans


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", ()):
        yield from nodes(child)


def _pg_indexes(service: Service) -> dict[str, list[str]]:
    """Index name -> its columns, in the schema under test."""
    with service.engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT i.relname, array_agg(a.attname::text ORDER BY k.n) FROM pg_index x "
            "JOIN pg_class i ON i.oid = x.indexrelid "
            "JOIN pg_namespace s ON s.oid = i.relnamespace AND s.nspname = current_schema() "
            "CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum "
            "GROUP BY i.relname").all()
    return {str(name): list(columns) for name, columns in rows}


def _pins(condition: str, columns: list[str]) -> bool:
    """Whether an Index Cond pins every one of ``columns`` (an equality or IS NULL)."""
    return all(re.search(rf"\(?\b{re.escape(c)}\b\)?(::[\w ]+)? (= |IS NULL)", condition)
               for c in columns)


def _growing(table: str) -> bool:
    return table not in CONFIGURATION and table not in QUEUES


def test_postgresql_generic_plans_read_o1_rows(hot: Captured, service: Service) -> None:
    if is_sqlite(service.engine):
        pytest.skip("PostgreSQL's generic plans (the SQLite case is the test below)")
    indexes = _pg_indexes(service)
    found: list[str] = []
    for statement, plan in pg_plans(service.engine, hot).items():
        for node in nodes(plan):
            table = node.get("Relation Name")
            kind = node["Node Type"]
            if table is None or kind == "ModifyTable" or not _growing(table):
                continue
            where = f"{hot[statement][0]}: {kind} on {table}"
            if kind == "Seq Scan":
                found.append(f"{where} ({node.get('Filter')})\n    {statement}")
            elif "Filter" in node:
                # Rows the index fetched and the filter dropped: fine when the condition
                # pins every column of the index (a unique key: one row at most; another
                # index: the rows its whole key names, which its design bounds, e.g. a
                # member's credentials nothing superseded), else the filter reads the
                # history behind a prefix.
                index, condition = node.get("Index Name"), node.get("Index Cond", "")
                if index not in indexes or not _pins(condition, indexes[index]):
                    found.append(f"{where} by {index} ({condition}) filtering "
                                 f"{node['Filter']}\n    {statement}")
    assert not found, "\n".join(found)


def test_sqlite_plans_search_an_index(hot: Captured, service: Service) -> None:
    if not is_sqlite(service.engine):
        pytest.skip("SQLite's query plans (the PostgreSQL case is the test above)")
    found: list[str] = []
    with service.engine.connect() as conn:
        for statement, (path, parameters) in hot.items():
            if not _reads(statement):
                continue
            for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}",
                                            parameters).all():
                detail = str(row[-1])
                scanned = re.match(r"SCAN (\w+)", detail)
                if scanned and scanned.group(1) in inspect(conn).get_table_names() \
                        and _growing(scanned.group(1)):
                    found.append(f"{path}: {detail}\n    {statement}")
    assert not found, "\n".join(found)


def test_no_index_of_a_growing_table_is_a_prefix_of_another(service: Service) -> None:
    """An index that is a left prefix of another of its table (or of a unique key) is one
    a planner without statistics may pick for a lookup the longer one answers exactly,
    and then filter every row of the prefix (bench/README.md "Hot statements in O(1)
    without planner statistics (session 7)")."""
    schema = inspect(service.engine)
    found = []
    for table in schema.get_table_names():
        if not _growing(table):
            continue
        keys = [(f"index {ix['name']}", list(ix["column_names"]))
                for ix in schema.get_indexes(table)]
        keys += [(f"unique {uq['name']}", list(uq["column_names"]))
                 for uq in schema.get_unique_constraints(table)]
        pk = schema.get_pk_constraint(table)["constrained_columns"]
        keys.append(("primary key", list(pk)))
        for name, columns in keys:
            if not name.startswith("index "):
                continue
            longer = [other for other, more in keys
                      if len(more) > len(columns) and more[:len(columns)] == columns]
            if longer:
                found.append(f"{table}: {name} {columns} is a prefix of {', '.join(longer)}")
    assert not found, "\n".join(found)
