"""``issuer._db.core`` runs prebuilt statements on the DBAPI cursor (issue 10): the rows,
their types, row counts, primary keys and errors are what ``Connection.execute`` gives,
on SQLite and PostgreSQL, and what it cannot plan still runs through SQLAlchemy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Integer,
    MetaData,
    String,
    Table,
    Unicode,
    bindparam,
    event,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Engine, Row
from sqlalchemy.exc import DBAPIError, IntegrityError, StatementError
from sqlalchemy.sql import Select
from sqlmodel.sql.sqltypes import UTCDateTime

from issuer import _db
from issuer._db import core, make_engine, session_scope

from . import test_redemption
from .test_db import _kill
from .test_redemption import World, world  # noqa: F401  (world: the fixture, by name)

_META = MetaData()
_SAMPLE = Table(
    "core_sample", _META,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("label", Unicode(200), nullable=False, unique=True),
    Column("amount", BigInteger, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("doc", JSON, nullable=False),
    Column("flag", Boolean, nullable=False),
    Column("note", String(50), nullable=True),
    Column("made_at", UTCDateTime, nullable=False,
           default=lambda: datetime(2026, 1, 1, tzinfo=UTC)),
)
_INSERT = insert(_SAMPLE)
_BY_ID = select(_SAMPLE).where(_SAMPLE.c.id == bindparam("id"))
_BY_LABEL_FOR_UPDATE = select(_SAMPLE.c.id, _SAMPLE.c.amount).where(
    _SAMPLE.c.label == bindparam("label")).with_for_update()
_SUM = select(func.coalesce(func.sum(_SAMPLE.c.amount), 0)).where(
    _SAMPLE.c.flag == bindparam("flag"))
_BUMP = (update(_SAMPLE).where(_SAMPLE.c.amount >= bindparam("at_least"))
         .values(amount=_SAMPLE.c.amount + 1))
_IN_LIST = select(_SAMPLE.c.label).where(_SAMPLE.c.note.in_(["a", "b"]),
                                         _SAMPLE.c.amount > bindparam("over"))
_IN_GIVEN = select(_SAMPLE.c.label).where(
    _SAMPLE.c.note.in_(bindparam("notes", expanding=True)))


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_engine(database_url)
    _META.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def sqlalchemy_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The statements this test's thread sent through ``Connection.execute`` (not the
    cursor). Only this thread's: a thread an earlier test left running (a sequencer, a
    server's pool) may execute statements of its own meanwhile."""
    calls: list[Any] = []
    real = Connection.execute
    mine = threading.get_ident()

    def counted(self: Connection, statement: Any, *args: Any, **kw: Any) -> Any:
        if threading.get_ident() == mine:
            calls.append(statement)
        return real(self, statement, *args, **kw)

    monkeypatch.setattr(Connection, "execute", counted)
    return calls


def _row(label: str, **over: Any) -> dict[str, Any]:
    values = {"label": label, "amount": 7, "at": datetime(2026, 3, 1, 12, 30, 15, 123456,
                                                           tzinfo=UTC),
              "doc": {"k": [1, "two", None, True]}, "flag": True, "note": "a",
              "made_at": datetime(2026, 1, 2, tzinfo=UTC)}
    values.update(over)
    return values


def _same(fast: list[Row[Any]], slow: list[Row[Any]]) -> None:
    assert [tuple(r) for r in fast] == [tuple(r) for r in slow]
    assert [[type(v) for v in r] for r in fast] == [[type(v) for v in r] for r in slow]
    assert [r._mapping.keys() for r in fast] == [r._mapping.keys() for r in slow]
    assert [dict(r._mapping) for r in fast] == [dict(r._mapping) for r in slow]


def test_rows_keys_and_counts_are_sqlalchemys(engine: Engine,
                                               sqlalchemy_calls: list[Any]) -> None:
    with session_scope(engine) as session:
        key = core(session, _INSERT, _row("first")).inserted_primary_key
        core(session, _INSERT, _row("second", amount=9, flag=False, note=None))
        conn = session.connection()
        assert key is not None and key == conn.execute(
            select(_SAMPLE.c.id).where(_SAMPLE.c.label == "first")).one()
        assert sqlalchemy_calls[1:] == sqlalchemy_calls[1:2]  # only the check above
        sqlalchemy_calls.clear()
        for stmt, params in ((_BY_ID, {"id": key[0]}),
                             (_BY_LABEL_FOR_UPDATE, {"label": "second"}),
                             (_SUM, {"flag": True})):
            fast = core(session, stmt, params).all()
            assert not sqlalchemy_calls, stmt
            _same(fast, list(conn.execute(stmt, params)))
            sqlalchemy_calls.clear()
        row = core(session, _BY_ID, {"id": key[0]}).one()
        assert row.label == "first" and row.at.tzinfo is not None and row.doc["k"][1] == "two"
        assert row._mapping[_SAMPLE.c.amount] == row._mapping["amount"] == 7
        assert core(session, _SUM, {"flag": False}).scalar() == 9
        assert core(session, _BUMP, {"at_least": 8}).rowcount == 1
        assert core(session, _BUMP, {"at_least": 100}).rowcount == 0
        assert not sqlalchemy_calls
        assert core(session, _SUM, {"flag": False}).scalar_one() == 10


def test_a_result_is_consumed_as_a_cursor_result_is(engine: Engine) -> None:
    from sqlalchemy.exc import ResourceClosedError

    with session_scope(engine) as session:
        for label in ("a", "b", "c"):
            core(session, _INSERT, _row(label))
        every = select(_SAMPLE.c.label).order_by(_SAMPLE.c.label)
        result = core(session, every)
        assert result.fetchone() == ("a",)
        assert [r.label for r in result] == ["b", "c"]
        assert list(result) == []
        first = core(session, every)
        assert first.first() == ("a",)
        with pytest.raises(ResourceClosedError):
            first.all()
        assert core(session, every).mappings().all() == [{"label": x} for x in "abc"]
        assert core(session, every).scalars().first() == "a"
        with pytest.raises(ResourceClosedError):  # an INSERT answers no rows
            core(session, _INSERT, _row("d")).first()


class _Undo(Exception):
    """Rolls an example's transaction back (its labels may come again)."""


_TEXT = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(label=st.text(_TEXT, min_size=1, max_size=60),
       amount=st.integers(-(2**63), 2**63 - 1),
       at=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(9999, 1, 1),
                       timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                                  timezone(timedelta(hours=-8))])),
       doc=st.dictionaries(st.text(_TEXT, max_size=8), st.recursive(
           st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(_TEXT, max_size=10),
           lambda inner: st.lists(inner, max_size=3), max_leaves=6), max_size=4),
       flag=st.booleans(), note=st.none() | st.text(_TEXT, max_size=50))
def test_written_and_read_values_match_sqlalchemys(
        engine: Engine, label: str, amount: int, at: datetime, doc: dict[str, Any],
        flag: bool, note: str | None) -> None:
    values = _row(label, amount=amount, at=at, doc=doc, flag=flag, note=note)
    with pytest.raises(_Undo), session_scope(engine) as session:
        conn = session.connection()
        # Written by the cursor and by SQLAlchemy; each read back both ways.
        mine = core(session, _INSERT, values).inserted_primary_key
        theirs = conn.execute(_INSERT, {**values, "label": label + "!"}).inserted_primary_key
        assert mine is not None and theirs is not None
        assert type(mine[0]) is type(theirs[0]) is int
        read = [core(session, _BY_ID, {"id": key[0]}).one() for key in (mine, theirs)]
        _same(read, [conn.execute(_BY_ID, {"id": key[0]}).one() for key in (mine, theirs)])
        assert read[0][2:] == read[1][2:]
        # Stored alike, not only read back alike (SQLite keeps datetimes as text).
        stored = text("SELECT CAST(amount AS TEXT), CAST(at AS TEXT), CAST(doc AS TEXT), "
                      "CAST(flag AS TEXT), note, CAST(made_at AS TEXT) "
                      "FROM core_sample WHERE id = :id")
        assert (conn.execute(stored, {"id": mine[0]}).one()
                == conn.execute(stored, {"id": theirs[0]}).one())
        assert (read[0].label, read[0].amount, read[0].at, read[0].doc, read[0].flag,
                read[0].note) == (label, amount, at, doc, flag, note)
        raise _Undo


def test_without_psycopgs_private_conversion_plans_take_the_per_execute_path(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    # issuer._db borrows psycopg's private placeholder conversion (3.1-3.3); another
    # psycopg without it must still work, through psycopg's own per-execute path.
    monkeypatch.setattr(_db, "_query2pg_nocache", None)
    fresh = select(_SAMPLE).where(_SAMPLE.c.label == bindparam("label"))  # a new plan
    with pytest.raises(_Undo), session_scope(engine) as session:
        core(session, _INSERT, _row("plain"))
        read = core(session, fresh, {"label": "plain"}).all()
        _same(list(read), list(session.connection().execute(fresh, {"label": "plain"}).all()))
        assert read[0].label == "plain"
        raise _Undo


def test_a_duplicate_insert_is_an_integrity_error_and_the_next_transaction_works(
        engine: Engine, sqlalchemy_calls: list[Any]) -> None:
    with session_scope(engine) as session:
        core(session, _INSERT, _row("taken"))
    with pytest.raises(IntegrityError) as caught, session_scope(engine) as session:
        core(session, _INSERT, _row("taken"))
    assert not sqlalchemy_calls  # raised from the cursor path, not SQLAlchemy's
    if engine.dialect.name == "postgresql":
        assert caught.value.orig.sqlstate == "23505"  # type: ignore[union-attr]
    with session_scope(engine) as session:  # a new cursor on the same connection
        assert core(session, _SUM, {"flag": True}).scalar() == 7
        core(session, _INSERT, _row("free"))


def test_statement_listeners_see_cursor_statements(engine: Engine) -> None:
    seen: list[tuple[str, Any]] = []

    def listener(_conn: Any, _cursor: Any, statement: str, parameters: Any,
                 *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        with session_scope(engine) as session:
            session.connection()
            seen.clear()  # BEGIN (IMMEDIATE) on SQLite
            core(session, _SUM, {"flag": True})
    finally:
        event.remove(engine, "before_cursor_execute", listener)
    ((statement, parameters),) = seen
    assert statement.startswith("SELECT coalesce(sum(core_sample.amount)")
    assert True in (parameters.values() if isinstance(parameters, dict) else parameters)


def test_a_listener_that_rewrites_a_statement_is_obeyed(engine: Engine) -> None:
    # On PostgreSQL core keeps psycopg's RawCursor (the plan's $n SQL, values in order);
    # a statement or parameters a retval listener hands back run as given, as
    # SQLAlchemy would run them (on a plain cursor there), and after_cursor_execute
    # sees them.
    after: list[tuple[str, Any]] = []

    def rewrite(_conn: Any, _cursor: Any, statement: str, parameters: Any,
                *_: Any) -> tuple[str, Any]:
        if "core_sample.amount" in statement:
            parameters = (dict(parameters, flag=False) if isinstance(parameters, dict)
                          else tuple(0 for _ in parameters))  # SQLite: flag 1 -> 0
        return statement, parameters

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        after.append((statement, parameters))

    with session_scope(engine) as session:
        core(session, _INSERT, _row("kept", amount=3, flag=True))
        core(session, _INSERT, _row("other", amount=4, flag=False))
        assert core(session, _SUM, {"flag": True}).scalar() == 3
        if engine.dialect.name == "postgresql":
            info = session.connection()._dbapi_connection.info  # type: ignore[union-attr]
            assert type(info[_db._CURSOR][1]).__name__ == "RawCursor"
    event.listen(engine, "before_cursor_execute", rewrite, retval=True)
    event.listen(engine, "after_cursor_execute", seen)
    try:
        with session_scope(engine) as session:
            assert core(session, _SUM, {"flag": True}).scalar() == 4
            assert core(session, _SUM, {"flag": True}).scalar() == 4  # and again
    finally:
        event.remove(engine, "before_cursor_execute", rewrite)
        event.remove(engine, "after_cursor_execute", seen)
    sums = [p for s, p in after if "core_sample.amount" in s]
    assert len(sums) == 2
    assert all(False in (p.values() if isinstance(p, dict) else p) for p in sums)
    with session_scope(engine) as session:  # the kept cursor still answers
        assert core(session, _SUM, {"flag": True}).scalar() == 3


def test_what_the_cursor_path_does_not_plan_goes_through_sqlalchemy(
        engine: Engine, sqlalchemy_calls: list[Any]) -> None:
    with session_scope(engine) as session:
        # made_at left out: its Python-side default is SQLAlchemy's to compute.
        partial = {k: v for k, v in _row("defaulted").items() if k != "made_at"}
        core(session, _INSERT, partial)
        core(session, _INSERT, _row("listed", note="b", amount=50))
        assert [s for s in sqlalchemy_calls if s is _INSERT] == [_INSERT]
        row = core(session, select(_SAMPLE.c.made_at).where(
            _SAMPLE.c.label == "defaulted")).one()
        assert row.made_at == datetime(2026, 1, 1, tzinfo=UTC)
        # An IN list given per execution is rendered per execution by SQLAlchemy;
        # one written into the statement is expanded once.
        assert core(session, _IN_GIVEN, {"notes": ["b", "c"]}).scalars().all() == ["listed"]
        assert _IN_GIVEN in sqlalchemy_calls
        assert list(core(session, _IN_LIST, {"over": 10}).scalars()) == ["listed"]
        assert _IN_LIST not in sqlalchemy_calls
        assert core(session, _IN_LIST, {"over": 50}).all() == []
        _same(core(session, _IN_LIST, {"over": 1}).all(),
              list(session.connection().execute(_IN_LIST, {"over": 1})))
        # A missing parameter: SQLAlchemy's own error.
        with pytest.raises(StatementError, match="A value is required for bind parameter"):
            core(session, _BY_ID, {})


def test_the_redemption_flows_reads_are_sqlalchemys_rows(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Every SELECT the hold, capture and refund send through the cursor path, read
    again through ``Connection.execute`` in the same transaction: the same rows (but
    the SELECTs that also write, ``core_with_writes``: running one again writes again)."""
    compared: list[str] = []
    real_run = _db._run

    def shadowed(plan: Any, conn: Connection, params: Any) -> Any:
        fast = real_run(plan, conn, params)
        writes = {id(made) for made, _ in _db._WITH_WRITES.values()}
        if fast is not None and fast.returns_rows and isinstance(plan.statement, Select) \
                and id(plan.statement) not in writes:
            rows = list(fast)
            _same(rows, list(conn.execute(plan.statement, dict(params) or None)))
            compared.append(plan.sql)
            return _db.CoreResult(rows, fast.rowcount, None)
        return fast

    monkeypatch.setattr(_db, "_run", shadowed)
    test_redemption.test_hold_capture_refund_with_signed_receipts_and_settlement(world)
    assert len(set(compared)) >= 5, compared


def test_a_connection_that_dies_under_a_statement_is_invalidated_and_replaced(
        postgres_url: str, sqlalchemy_calls: list[Any]) -> None:
    """A backend killed between two transactions (reused within the second, so not
    pinged): the statement fails as SQLAlchemy's disconnect error, the pool drops
    the connection, and the next transaction runs on a new one (and a new cursor)."""
    pid = select(func.pg_backend_pid())
    engine = make_engine(postgres_url)
    try:
        with session_scope(engine) as session:
            first = core(session, pid).scalar()
        _kill(postgres_url, first)
        with pytest.raises(DBAPIError) as caught, session_scope(engine) as session:
            core(session, pid).scalar()
        assert caught.value.connection_invalidated
        with session_scope(engine) as session:
            assert core(session, pid).scalar() not in (None, first)
        assert pid not in sqlalchemy_calls
    finally:
        engine.dispose()


_RELABEL = (update(_SAMPLE).where(_SAMPLE.c.note == bindparam("note"))
            .values(note=bindparam("to")).returning(_SAMPLE.c.id, _SAMPLE.c.label))
_SET_AMOUNT = (update(_SAMPLE).where(_SAMPLE.c.label == bindparam("which"))
               .values(amount=bindparam("amount")))


def test_writes_sent_with_an_update_do_what_they_do_one_by_one(
        engine: Engine, sqlalchemy_calls: list[Any]) -> None:
    """``core_with_writes``: an UPDATE ... RETURNING and single-row writes sent with it
    (one statement on PostgreSQL) return its rows and each write's count, and write what
    the statements one by one write (no two of them touching one row); parameters of the
    same name stay each statement's."""
    sent: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda *a: sent.append(a[2]))  # type: ignore[arg-type]
    with session_scope(engine) as session:
        core(session, _INSERT, _row("one", note="x"))
        core(session, _INSERT, _row("two", note="x"))
        core(session, _INSERT, _row("four", note="q"))
        del sent[:]
        rows, counts = _db.core_with_writes(session, _RELABEL, {"note": "x", "to": "y"}, [
            (_INSERT, _row("three", note="z", amount=3)),
            (_SET_AMOUNT, {"which": "four", "amount": 11}),
            (_SET_AMOUNT, {"which": "nobody", "amount": 12})])
        assert sorted(r.label for r in rows) == ["one", "two"]
        assert counts == [1, 1, 0]
        assert len(sent) == (1 if engine.dialect.name == "postgresql" else 4)
        rows, counts = _db.core_with_writes(session, _RELABEL, {"note": "nothing", "to": "y"},
                                            [(_SET_AMOUNT, {"which": "two", "amount": 22})])
        assert rows == [] and counts == [1]
    with session_scope(engine) as session:
        got = {r.label: (r.amount, r.note) for r in core(session, select(_SAMPLE))}
    assert got == {"one": (7, "y"), "two": (22, "y"), "three": (3, "z"), "four": (11, "q")}
    assert not sqlalchemy_calls  # all on the cursor path
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        _db.core_with_writes(session, _RELABEL, {"note": "y", "to": "w"},
                             [(_INSERT, _row("three"))])
    with session_scope(engine) as session:  # the failed statement wrote nothing
        assert {r.note for r in core(session, select(_SAMPLE))} == {"y", "z", "q"}


def test_writes_sent_with_an_insert_may_take_its_key(engine: Engine) -> None:
    """``core_with_writes`` with an INSERT: its primary key, and a write's column given
    ``MAIN_KEY`` takes it (on SQLite that write runs after the INSERT, the others before)."""
    with session_scope(engine) as session:
        core(session, _INSERT, _row("old", note="o"))
        keys, counts = _db.core_with_writes(session, _INSERT, _row("main"), [
            (_SET_AMOUNT, {"which": "old", "amount": 5}),
            (_INSERT, _row("follower", amount=_db.MAIN_KEY))])
        assert counts == [1, 1] and len(keys) == 1
        got = {r.label: r for r in core(session, select(_SAMPLE))}
    assert got["main"].id == keys[0][0] == got["follower"].amount
    assert got["old"].amount == 5
