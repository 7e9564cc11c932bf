"""Engine and sessions.

SQLite (:mod:`tessera.sqlite`): WAL (readers do not block the writer), foreign
keys on (off by default in SQLite), a busy timeout, writers queued on a write
gate, and every transaction opened with
``BEGIN IMMEDIATE`` so that a read-then-write (check a balance, then debit it)
holds the write lock from its first read: two writers can never both read
the old balance. pysqlite's own implicit transactions are disabled for that
(the SQLAlchemy "serializable isolation / savepoints" recipe).

Read-only work (:func:`read_scope`: GET routes, the brand and token lookups
before a write) opens a plain deferred ``BEGIN`` instead: in WAL mode it
reads a snapshot and never waits for, nor blocks, the writer. Under the
issuance load a profile showed a third of all samples waiting in ``BEGIN
IMMEDIATE``, half of them on such lookups (bench/README.md). A read scope
refuses to flush, so a write slipped into a read path fails loudly instead
of upgrading a deferred transaction (which SQLite may refuse with
``SQLITE_BUSY`` without waiting).

PostgreSQL: psycopg 3; the ledger serialises writers per member with
``SELECT ... FOR UPDATE`` (see :mod:`issuer._ledger`). Connections are pooled
per worker process, and the pool is sized so that all workers together stay
within ``TESSERA_DB_MAX_CONNECTIONS`` (:func:`pool_size_per_worker`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Final

from sqlalchemy import (
    BindParameter,
    Delete,
    Executable,
    Insert,
    Select,
    Table,
    Update,
    bindparam,
    event,
    func,
    insert,
    inspect,
    literal_column,
    true,
    update,
)
from sqlalchemy import select as sqlalchemy_select
from sqlalchemy.engine import URL, Connection, CursorResult, Dialect, Engine, Row, make_url
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.engine.result import (
    IteratorResult,
    MappingResult,
    ScalarResult,
    SimpleResultMetaData,
)
from sqlalchemy.exc import (
    DisconnectionError,
    InvalidRequestError,
    MultipleResultsFound,
    NoResultFound,
    ResourceClosedError,
)
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.session import SessionTransactionState
from sqlalchemy.pool import SingletonThreadPool, StaticPool
from sqlalchemy.sql.compiler import WARN_LINTING, SQLCompiler
from sqlalchemy.sql.visitors import replacement_traverse
from sqlmodel import Session, SQLModel, create_engine

try:  # psycopg's own placeholder conversion, run once per plan (_pg_query)
    from psycopg import Connection as _PgConnection
    from psycopg import RawCursor as _PgRawCursor
    from psycopg.adapt import PyFormat
except ImportError:  # pragma: no cover - psycopg is a dependency
    _PgRawCursor = _PgConnection = None  # type: ignore[assignment,misc]
try:  # private to psycopg (3.1-3.3): without it plans take psycopg's per-execute path
    from psycopg._queries import _query2pg_nocache
except ImportError:  # pragma: no cover - depends on the installed psycopg
    _query2pg_nocache = None  # type: ignore[assignment]

from issuer._settings import normalise_database_url
from tessera.errors import ErrorCode, TesseraError
from tessera.sqlite import DEFERRED_DURABILITY, READ_ONLY, configure_sqlite

__all__ = [
    "MAIN_KEY",
    "CoreResult",
    "core",
    "core_insert",
    "core_update",
    "core_with_writes",
    "describe_database",
    "is_sqlite",
    "make_engine",
    "pool_size_per_worker",
    "read_scope",
    "session_scope",
    "table_of",
]

# READ_ONLY (tessera.sqlite) is also the Session.info key of a read scope.


def table_of(model: type[SQLModel]) -> Table:
    """A table model's Core table."""
    table: Table = model.__table__  # type: ignore[attr-defined]
    return table


# -- core(): prebuilt statements on the DBAPI cursor ---------------------------------------
#
# ``Connection.execute`` spent about 155 of its 281 us per statement in SQLAlchemy's own
# Python (execution context, parameter dicts, result metadata, a new cursor each time),
# the rest in psycopg (bench/README.md "Core statements on the DBAPI cursor (session 6)").
# The statements the hot paths run are module constants: each is compiled once per
# dialect (and, for INSERT/UPDATE, per set of parameter names, which picks the columns),
# and what SQLAlchemy works out per execution from the compiled form is worked out once
# here: the SQL text, the order of the parameters, their bind processors, the result
# columns' processors and the row keys. An execution is then: the parameters in order,
# one ``cursor.execute`` on a cursor kept per connection, ``fetchall``, ``Row`` objects.
# Anything not handled exactly takes ``Connection.execute`` (_make_plan says what).

_NO_PARAMS: Final[Mapping[str, Any]] = {}
_REQUIRED: Final = object()
_EXPANDED: Final = "\x00tessera expanded"  # the key of no parameter: its constant is used
_CURSOR: Final = "tessera_core_cursor"
_MAX_PLANS: Final = 1000

# Execution options with which SQLAlchemy runs a statement differently (server-side
# cursors, schema translation, name matching, ...): such a statement takes its path.
_OWN_PATH_OPTIONS: Final = frozenset({
    "stream_results", "yield_per", "max_row_buffer", "schema_translate_map",
    "driver_column_names", "preserve_rowcount", "no_parameters", "sqlite_raw_colnames",
    "insertmanyvalues_page_size", "logging_token"})

_Bind = tuple[str, "str | None", Any, "Callable[[Any], Any] | None"]


class _Plan:
    """One statement compiled for one dialect, and what its executions need from that."""

    __slots__ = ("binds", "compiled", "dialect", "expanded", "make_row", "named", "names",
                 "pg_order", "pg_sql", "pk_from_lastrowid", "pk_from_returning",
                 "result_extra", "result_keys", "result_types", "sql", "statement")

    def __init__(self, statement: Executable, dialect: Dialect, compiled: SQLCompiler,
                 sql: str, binds: tuple[_Bind, ...], names: tuple[str, ...] | None,
                 expanded: frozenset[str]) -> None:
        self.statement = statement  # held: the plan cache is keyed by its id()
        self.dialect = dialect
        self.compiled = compiled
        self.sql = sql
        self.expanded = expanded
        self.binds = binds
        self.named = names is not None
        self.names = names or ()
        columns = compiled._result_columns
        self.result_keys = [c[0] for c in columns]
        self.result_extra = [c[2] for c in columns]
        self.result_types = [c[3] for c in columns]
        self.make_row: Callable[[Any], Row[Any]] | None = None  # at the first execution
        self.pk_from_returning = bool(compiled.isinsert and compiled.implicit_returning)
        self.pk_from_lastrowid = bool(compiled.isinsert and compiled.postfetch_lastrowid)
        self.pg_sql: bytes | None = None
        self.pg_order: tuple[int, ...] | None = None
        if dialect.driver == "psycopg" and names is not None:
            self._pg_query()

    def _pg_query(self) -> None:
        # psycopg converts ``%(name)s`` to ``$n`` (and ``%%`` to ``%``) on every execute
        # (encode, a cached parse looked up by the whole text, the dict reordered into a
        # list): done here once, with psycopg's own conversion, for its RawCursor
        # (``$n`` SQL, parameters as a sequence). Same SQL text to the server, so the
        # same prepared statements.
        if _query2pg_nocache is None:
            return
        try:
            pg_sql, formats, order, _parts = _query2pg_nocache(
                self.sql.encode("utf-8"), "utf-8")
        except (TypeError, ValueError):  # pragma: no cover - another psycopg's internals
            return
        position = {name: i for i, name in enumerate(self.names)}
        if (order is None) != (not self.names) or any(
                f is not PyFormat.AUTO for f in formats) or any(
                name not in position for name in order or ()):
            return
        pg_order = tuple(position[name] for name in order or ())
        self.pg_sql = pg_sql
        self.pg_order = None if pg_order == tuple(range(len(self.names))) else pg_order

    def row_maker(self, description: Any) -> Callable[[Any], Row[Any]]:
        # Result processors as SQLAlchemy picks them for a compiled statement whose
        # columns match the cursor's one to one (engine/cursor.py
        # _merge_cursor_description): by the column's type and the driver's type code
        # (psycopg's numeric processors depend on the latter).
        if len(description) != len(self.result_keys):
            raise TesseraError(ErrorCode.INTERNAL_ERROR,
                               "a core statement answered other columns than compiled")
        processors = [type_._cached_result_processor(self.dialect, column[1])
                      for type_, column in zip(self.result_types, description, strict=True)]
        parent = SimpleResultMetaData(self.result_keys, self.result_extra)
        make = partial(Row, parent, processors if any(processors) else None,
                       parent._key_to_index)
        self.make_row = make
        return make


class _Unplanned:
    """The cache entry of a statement left to SQLAlchemy; it holds the statement and
    dialect so that their ids stay theirs while the entry lives."""

    __slots__ = ("dialect", "statement")

    def __init__(self, statement: Executable, dialect: Dialect) -> None:
        self.statement = statement
        self.dialect = dialect


_PLANS: dict[tuple[int, int, frozenset[str] | None], _Plan | _Unplanned] = {}


def _plan_of(conn: Connection, stmt: Executable,
             params: Mapping[str, Any]) -> _Plan | _Unplanned:
    dialect = conn.dialect
    # INSERT and UPDATE compile to different SQL for different parameter names.
    names = frozenset(params) if isinstance(stmt, (Insert, Update)) else None
    key = (id(stmt), id(dialect), names)
    try:
        return _PLANS[key]
    except KeyError:
        pass
    plan = _make_plan(stmt, dialect, params) or _Unplanned(stmt, dialect)
    if len(_PLANS) >= _MAX_PLANS:  # statements built per call: do not keep them all
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _make_plan(stmt: Executable, dialect: Dialect, params: Mapping[str, Any]) -> _Plan | None:
    """The plan of ``stmt``, or None when SQLAlchemy's path must run it: statements
    other than SELECT/INSERT/UPDATE/DELETE constructs, ``IN`` lists (expanding
    parameters) whose values are given per execution, Python-side defaults SQLAlchemy
    computes per execution, implicit RETURNING other than an INSERT's primary key,
    execution options that change how SQLAlchemy runs it, columns it matches by name,
    duplicate row keys, callable parameter values, drivers that take
    ``setinputsizes``."""
    if not isinstance(stmt, (Select, Insert, Update, Delete)):
        return None
    if not _OWN_PATH_OPTIONS.isdisjoint(stmt._execution_options):
        return None
    if dialect.bind_typing is BindTyping.SETINPUTSIZES:
        return None
    compiled = stmt.compile(dialect=dialect, column_keys=sorted(params), for_executemany=False,
                            linting=dialect.compiler_linting | WARN_LINTING)
    assert isinstance(compiled, SQLCompiler)
    if (getattr(compiled, "_collected_params", None)
            or compiled.insert_prefetch or compiled.update_prefetch
            or compiled.has_out_parameters or compiled.schema_translate_map
            or (compiled.implicit_returning and not compiled.isinsert)):
        return None
    statement = compiled.compile_state.statement if compiled.compile_state else stmt
    if getattr(statement, "_supplemental_returning", None):
        return None
    columns = compiled._result_columns
    if columns and (not compiled._ordered_columns or compiled._textual_ordered_columns
                    or compiled._ad_hoc_textual or compiled._loose_column_name_matching):
        return None
    if len({c[0] for c in columns}) != len(columns):
        return None
    processors: dict[str, Any] = dict(compiled._bind_processors)
    by_name = {name: bind for bind, name in compiled.bind_names.items()}
    sql = compiled.string
    positiontup: Sequence[str] | None = compiled.positiontup
    constants: dict[str, Any] = {}
    expanded: set[str] = set()
    special = set(compiled.post_compile_params) | set(compiled.literal_execute_params)
    if special:
        # An IN list written into the statement (``col.in_([...])``, not a bindparam
        # given per execution) expands the same way every time: once, here, with
        # SQLAlchemy's own expansion; an execution that passes its key goes to SQLAlchemy.
        if any(b.required or b.callable is not None for b in special):
            return None
        expanding = compiled._process_parameters_for_postcompile(
            compiled.construct_params(escape_names=False, _check=False))
        sql = expanding.statement
        positiontup = expanding.positiontup
        processors.update(expanding.processors)
        expanded = {b.key for b in special} | {compiled.bind_names[b] for b in special}
        constants = {name: value for name, value in expanding.parameters.items()
                     if name not in by_name}
    order: Sequence[str]
    if compiled.positional:
        if positiontup is None:
            return None
        order, names = positiontup, None
    else:
        order = list(expanding.parameters if special else compiled.bind_names.values())
        escaped = compiled.escaped_bind_names
        names = tuple(escaped.get(name, name) for name in order)
    binds: list[_Bind] = []
    for name in order:
        processor = processors.get(name)
        if processor is not None and not callable(processor):  # a tuple type's
            return None
        if name in constants:  # an element of an expanded IN list
            binds.append((_EXPANDED, None, constants[name], processor))
            continue
        bind = by_name[name]
        if bind.callable is not None or bind.expanding or bind.isoutparam:
            return None
        # The lookup of SQLCompiler.construct_params: the bind's key, then its
        # compiled name, then its own value unless it is required.
        binds.append((bind.key, name if name != bind.key else None,
                      _REQUIRED if bind.required else bind.value, processor))
    return _Plan(stmt, dialect, compiled, sql, tuple(binds), names, frozenset(expanded))


class _NoContext:
    """Stands for SQLAlchemy's execution context in its error handling (there is none)."""

    executemany: Final = False

    def handle_dbapi_exception(self, _e: BaseException) -> None:
        return None


_NO_CONTEXT: Final = _NoContext()


def _run(plan: _Plan, conn: Connection, params: Mapping[str, Any]) -> CoreResult | None:
    """Execute ``plan`` on the connection's DBAPI cursor; None: leave it to SQLAlchemy
    (a required parameter missing, listeners or options it alone serves)."""
    if not _OWN_PATH_OPTIONS.isdisjoint(conn._execution_options) or conn._echo:
        return None
    # What Connection._execute_context checks before it executes: a transaction
    # that can take the statement (else SQLAlchemy raises or begins).
    trans = conn._transaction
    if (trans is None or not trans.is_active
            or (conn._nested_transaction is not None
                and not conn._nested_transaction.is_active)):
        return None
    before = after = None
    if conn._has_events or conn.engine._has_events:
        events = conn.dispatch
        if events.before_execute or events.after_execute:
            return None
        before = events.before_cursor_execute or None
        after = events.after_cursor_execute or None
    dialect = plan.dialect
    if dialect._has_events and dialect.dispatch.do_execute:
        return None
    fairy = conn._dbapi_connection
    if fairy is None:
        return None
    if plan.expanded and not plan.expanded.isdisjoint(params):
        return None  # an IN list given with the execution
    sql = plan.sql
    args: Any
    try:
        values = []
        for key, name, value, processor in plan.binds:
            if key in params:
                value = params[key]
            elif name is not None and name in params:
                value = params[name]
            elif value is _REQUIRED:
                return None  # SQLAlchemy raises its own error for it
            values.append(value if processor is None else processor(value))
    except Exception as e:  # a bind processor's: wrapped as SQLAlchemy wraps it
        conn._handle_dbapi_exception(e, sql, dict(params), None, None)
    info = fairy.info
    raw = fairy.dbapi_connection
    held = info.get(_CURSOR)
    if held is not None and held[0] is raw:
        cursor, keep = held[1], True
    else:
        cursor = _new_cursor(raw, plan)
        # One cursor per connection, used again by the next statement (psycopg
        # builds a cursor and its adapters in Python), except on a connection the
        # pool shares between threads (SQLite in memory): each statement its own.
        keep = not isinstance(conn.engine.pool, (StaticPool, SingletonThreadPool))
        if keep:
            info[_CURSOR] = (raw, cursor)
    # psycopg's RawCursor takes the plan's ``$n`` SQL and the values in order; the
    # parameters as SQLAlchemy passes them (a dict by name) are built only for
    # listeners, another cursor, or an error.
    on_raw = type(cursor) is _PgRawCursor and plan.pg_sql is not None
    args = None if on_raw and before is None else _args_of(plan, values)
    try:
        if before is not None:
            given = args
            for fn in before:
                sql, args = fn(conn, cursor, sql, args, None, False)
            on_raw = on_raw and sql is plan.sql and args is given
        if on_raw:
            # The SQL converted once (_Plan._pg_query), the parameters in the
            # placeholders' order: what psycopg's own cursor works out per call.
            pg_order = plan.pg_order
            cursor.execute(plan.pg_sql, values if pg_order is None
                           else [values[i] for i in pg_order])
        elif type(cursor) is _PgRawCursor:
            # A listener changed the statement or its parameters (or psycopg's
            # conversion did not apply): as SQLAlchemy would send it, on a plain cursor.
            with raw.cursor() as plain:  # type: ignore[union-attr]
                plain.execute(sql, args)
                if after is not None:
                    after(conn, plain, sql, args, None, False)
                rows = _rows_of(plan, plain)
                return _answer(plan, params, rows, plain.rowcount, None)
        else:
            cursor.execute(sql, args)
        rowcount = cursor.rowcount
        lastrowid = cursor.lastrowid if plan.pk_from_lastrowid else None
        if after is not None:
            if args is None:
                args = _args_of(plan, values)
            after(conn, cursor, sql, args, None, False)
        rows = _rows_of(plan, cursor)
    except BaseException as e:
        # SQLAlchemy closes the cursor of a failed statement: a new one next time.
        info.pop(_CURSOR, None)
        if args is None:
            args = _args_of(plan, values)
        conn._handle_dbapi_exception(e, sql, args, cursor, _NO_CONTEXT)  # type: ignore[arg-type]
    if not keep:
        cursor.close()
    return _answer(plan, params, rows, rowcount, lastrowid)


def _answer(plan: _Plan, params: Mapping[str, Any], rows: list[Row[Any]] | None,
            rowcount: int, lastrowid: Any) -> CoreResult:
    if plan.pk_from_returning:
        return CoreResult(None, rowcount, (plan, dict(params), rows[0] if rows else None))
    if plan.pk_from_lastrowid or plan.compiled.isinsert:
        return CoreResult(rows, rowcount, (plan, dict(params), lastrowid))
    return CoreResult(rows, rowcount, None)


def _args_of(plan: _Plan, values: list[Any]) -> Any:
    """The parameters as SQLAlchemy hands them to the driver: by name or in order."""
    return dict(zip(plan.names, values, strict=True)) if plan.named else tuple(values)


def _rows_of(plan: _Plan, cursor: Any) -> list[Row[Any]] | None:
    if not plan.result_keys:  # no cursor.description: psycopg builds it per access
        return None
    make = plan.make_row or plan.row_maker(cursor.description)
    return list(map(make, cursor.fetchall()))


def _new_cursor(raw: Any, plan: _Plan) -> Any:
    """The cursor kept on a connection: psycopg's RawCursor when the plans are psycopg's
    and the connection speaks UTF-8 (what _Plan._pg_query converted for), else the
    driver's own cursor."""
    if (plan.pg_sql is not None and _PgRawCursor is not None
            and isinstance(raw, _PgConnection) and raw.info.encoding == "utf-8"):
        return _PgRawCursor(raw)
    return raw.cursor()


class CoreResult:
    """What :func:`core` answers: the statement's rows, all fetched, as SQLAlchemy
    ``Row`` objects, its ``rowcount`` and an INSERT's ``inserted_primary_key``.

    Consumed as a ``CursorResult`` is: iteration and ``all()`` take the rows that are
    left, ``first()``, ``one()``, ``scalar()`` and the like close the result.
    """

    __slots__ = ("_insert", "_next", "_rows", "rowcount")

    def __init__(self, rows: list[Row[Any]] | None, rowcount: int,
                 insert: tuple[_Plan, dict[str, Any], Any] | CursorResult[Any] | None) -> None:
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self._insert = insert

    @classmethod
    def _of(cls, result: CursorResult[Any]) -> CoreResult:
        rows = list(result.all()) if result.returns_rows else None
        return cls(rows, result.rowcount, result if result.context.isinsert else None)

    @property
    def returns_rows(self) -> bool:
        return self._rows is not None

    def _left(self) -> list[Row[Any]]:
        rows = self._rows
        if rows is None:
            raise ResourceClosedError("This result object does not return rows. "
                                      "It has been closed automatically.")
        if self._next < 0:
            raise ResourceClosedError("This result object is closed.")
        left = rows[self._next:] if self._next else rows
        self._next = len(rows)
        return left

    def _close(self) -> list[Row[Any]]:
        left = self._left()
        self._next = -1
        return left

    def __iter__(self) -> Iterator[Row[Any]]:
        return iter(self._left())

    def all(self) -> list[Row[Any]]:
        return self._left()

    fetchall = all

    def fetchone(self) -> Row[Any] | None:
        rows = self._left()  # marks all taken; put the rest back
        if not rows:
            return None
        self._next = len(self._rows or ()) - len(rows) + 1
        return rows[0]

    def first(self) -> Row[Any] | None:
        rows = self._close()
        return rows[0] if rows else None

    def one_or_none(self) -> Row[Any] | None:
        rows = self._close()
        if len(rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when one or none was required")
        return rows[0] if rows else None

    def one(self) -> Row[Any]:
        rows = self._close()
        if not rows:
            raise NoResultFound("No row was found when one was required")
        if len(rows) > 1:
            raise MultipleResultsFound("Multiple rows were found when exactly one was required")
        return rows[0]

    def scalar(self) -> Any:
        row = self.first()
        return None if row is None else row[0]

    def scalar_one(self) -> Any:
        return self.one()[0]

    def scalar_one_or_none(self) -> Any:
        row = self.one_or_none()
        return None if row is None else row[0]

    def _as_result(self) -> IteratorResult[Any]:
        rows = self._left()
        keys = rows[0]._fields if rows else ("_",)
        return IteratorResult(SimpleResultMetaData(keys), iter([tuple(row) for row in rows]))

    def scalars(self) -> ScalarResult[Any]:
        """The first column of the rows left, as SQLAlchemy's ``ScalarResult``."""
        return self._as_result().scalars()

    def mappings(self) -> MappingResult:
        """The rows left as mappings, as SQLAlchemy's ``MappingResult``."""
        return self._as_result().mappings()

    def close(self) -> None:
        self._next = -1

    @property
    def inserted_primary_key(self) -> Row[Any] | None:
        """As ``CursorResult.inserted_primary_key``: worked out when asked (from the
        RETURNING row or ``lastrowid``, and the parameters), by SQLAlchemy's getters."""
        insert = self._insert
        if insert is None:
            raise InvalidRequestError("Statement is not an insert() expression construct.")
        if isinstance(insert, CursorResult):
            return insert.inserted_primary_key
        plan, params, got = insert
        compiled = plan.compiled
        if compiled.compile_state is not None and bool(getattr(
                compiled.compile_state.statement, "_returning", None)):
            raise InvalidRequestError("Can't call inserted_primary_key when returning() "
                                      "is used.")
        parameters = compiled.construct_params(params, escape_names=False)
        if plan.pk_from_returning:
            if got is None:
                return None
            key: Row[Any] = compiled._inserted_primary_key_from_returning_getter(
                got, parameters)
        else:
            key = compiled._inserted_primary_key_from_lastrowid_getter(got, parameters)
        return key


_ACTIVE: Final = SessionTransactionState.ACTIVE
_GET_BIND: Final = Session.get_bind


def _connection(session: Session) -> Connection:
    """``session.connection()``: the connection the session's transaction holds for its
    engine. Once the transaction has it (the first statement), what SQLAlchemy's path
    checks and answers (no context-manager transaction closed, the transaction active,
    the session bound to one engine, its connection for that engine) is looked up here
    directly; anything else, and the first statement, take ``session.connection()``."""
    trans = session._transaction
    if trans is not None and trans._state is _ACTIVE:
        context = session._trans_context_manager
        bind = session.bind
        if ((context is None or context is trans) and bind is not None and not session.binds
                and type(session).get_bind is _GET_BIND):
            held = trans._connections.get(bind)
            if held is not None:
                return held[0]
    return session.connection()


def core(session: Session, stmt: Executable,
         params: Mapping[str, Any] | None = None) -> CoreResult:
    """A prebuilt Core statement on the session's connection, answering plain rows.

    No ORM step: no object is built or put in the identity map, and nothing is
    autoflushed first, so it reads what the database holds, not changes the
    session has pending (the hot paths that use it write through Core, or flush
    first). About half the Python of ``session.exec`` per statement
    (bench/README.md "Redemption, third pass (session 5)").

    The statement runs on the DBAPI cursor directly when :func:`_plan_of` can
    plan it (compiled once, see there); anything else goes through
    ``Connection.execute``. Either way the rows are SQLAlchemy ``Row`` objects,
    fetched at once, and errors are SQLAlchemy's (``IntegrityError``, ...).
    """
    conn = _connection(session)
    params = _NO_PARAMS if params is None else params
    plan = _plan_of(conn, stmt, params)
    if isinstance(plan, _Plan):
        done = _run(plan, conn, params)
        if done is not None:
            return done
    return CoreResult._of(conn.execute(stmt, params or None))


def core_insert(model: type[SQLModel]) -> Insert:
    """An ``INSERT`` into ``model``'s table as a Core statement: executed through a
    session it skips the unit of work (no object, no flush; the session does not know
    the row). For append-only rows the transaction does not read back as objects."""
    return insert(table_of(model))


_UPDATES: dict[tuple[str, tuple[str, ...]], Update] = {}


def core_update(session: Session, row: SQLModel, **values: Any) -> None:
    """``UPDATE`` one loaded row's ``values`` as a Core statement and make them the
    object's committed state: the row is written now and the object is not dirty, so
    no flush has to find and write it (the transaction's later reads see both)."""
    table = row.__table__  # type: ignore[attr-defined]
    (pk,) = table.primary_key.columns
    key = (table.name, tuple(values))
    stmt = _UPDATES.get(key)
    if stmt is None:
        stmt = _UPDATES[key] = (update(table).where(pk == bindparam("_pk"))
                                .values({name: bindparam(name) for name in values}))
    done = core(session, stmt, {"_pk": inspect(row).identity[0], **values})
    if done.rowcount != 1:
        raise TesseraError(ErrorCode.INTERNAL_ERROR, f"{table.name} row to update is gone")
    for name, value in values.items():
        set_committed_value(row, name, value)

_Write = tuple[Insert | Update, Mapping[str, Any]]
_WITH_WRITES: dict[tuple[Any, ...], tuple[Select[Any], tuple[Any, ...]]] = {}


class _MainKey:
    """The value of an INSERT's column that is the primary key the main statement of
    :func:`core_with_writes` inserts (:data:`MAIN_KEY`)."""

    __slots__ = ()


MAIN_KEY: Final = _MainKey()


def _renamed(stmt: Insert | Update, names: frozenset[str], prefix: str,
             main_key: Any = None, keyed: frozenset[str] = frozenset()) -> Insert | Update:
    """``stmt`` with its parameters ``names`` bound as ``prefix + name`` (an INSERT
    without values gets one bound value per name: what ``core`` compiles it to, and
    the columns ``keyed`` the value ``main_key``)."""
    if isinstance(stmt, Insert) and not stmt._values and not stmt._multi_values:
        table = stmt.table
        return insert(table).values({
            name: main_key if name in keyed
            else bindparam(prefix + name, type_=table.c[name].type)
            for name in sorted(names)})

    def rename(element: Any, **_kw: Any) -> Any:
        if isinstance(element, BindParameter) and element.key in names:
            return bindparam(prefix + element.key, type_=element.type)
        return None

    renamed = replacement_traverse(stmt, {}, rename)
    assert isinstance(renamed, (Insert, Update))
    return renamed


def _with_writes(main: Insert | Update, main_names: frozenset[str],
                 writes: Sequence[_Write]) -> tuple[Select[Any], tuple[Any, ...]]:
    """One SELECT running ``main`` (an UPDATE ... RETURNING, or an INSERT returning its
    primary key) and ``writes`` as data-modifying CTEs (PostgreSQL): a row per row
    ``main`` returned, or one row of NULLs, each with the writes' row counts (``n0``,
    ``n1``, ...). Built once per combination of statements and parameter names."""
    keyed = [frozenset(k for k, v in p.items() if v is MAIN_KEY) for _s, p in writes]
    key = (id(main), main_names, *((id(s), frozenset(p), k)
                                    for (s, p), k in zip(writes, keyed, strict=True)))
    done = _WITH_WRITES.get(key)
    if done is None:
        renamed = _renamed(main, main_names, "m_")
        if isinstance(renamed, Insert) and not renamed._returning:
            renamed = renamed.returning(*renamed.table.primary_key)
        first = renamed.cte("m")
        main_key = sqlalchemy_select(*first.c).scalar_subquery()
        counts = sqlalchemy_select(*(
            sqlalchemy_select(func.count()).select_from(
                _renamed(stmt, frozenset(params), f"w{i}_", main_key, keyed[i]).returning(
                    literal_column("1")).cte(f"w{i}")).scalar_subquery().label(f"n{i}")
            for i, (stmt, params) in enumerate(writes))).subquery("n")
        combined = sqlalchemy_select(*first.c, *counts.c).select_from(
            counts.outerjoin(first, true()))
        done = _WITH_WRITES[key] = (combined, (main, *(s for s, _ in writes)))
    return done


def core_with_writes(session: Session, main: Insert | Update, params: Mapping[str, Any],
                     writes: Sequence[_Write]) -> tuple[list[Row[Any]], list[int]]:
    """``main`` (an UPDATE ... RETURNING, or an INSERT) and ``writes`` (INSERTs and
    UPDATEs whose rows nothing reads back in this statement): the rows ``main``
    returned (an INSERT: its primary key) and each write's row count. A write's
    column given :data:`MAIN_KEY` takes the primary key ``main`` inserts.

    On PostgreSQL one statement, the writes as data-modifying CTEs: one round trip
    where there were ``1 + len(writes)`` (bench/README.md "Redemption, sixth pass
    (session 8)"). They run on one snapshot and see none of each other's rows, so
    none may read or write a row another of them writes; foreign keys are checked at
    the statement's end (``main`` may name a row a write inserts, a write the row
    ``main`` inserts), and errors are raised as ``core`` raises them. Elsewhere
    (SQLite, in process: no round trip to save) the writes run in turn, those naming
    ``main``'s key after it, the others before.
    """
    conn = _connection(session)
    if not writes or conn.dialect.name != "postgresql":
        later = [any(v is MAIN_KEY for v in values.values()) for _stmt, values in writes]
        counts = [core(session, stmt, values).rowcount if not after else 0
                  for (stmt, values), after in zip(writes, later, strict=True)]
        result = core(session, main, params)
        if isinstance(main, Insert):
            key = result.inserted_primary_key
            rows = [] if key is None else [key]
        else:
            rows = result.all()
        for i, ((stmt, values), after) in enumerate(zip(writes, later, strict=True)):
            if after:
                counts[i] = core(session, stmt, {
                    name: rows[0][0] if value is MAIN_KEY else value
                    for name, value in values.items()}).rowcount
        return rows, counts
    combined, _held = _with_writes(main, frozenset(params), writes)
    values = {f"m_{name}": value for name, value in params.items()}
    for i, (_stmt, given) in enumerate(writes):
        values.update({f"w{i}_{name}": value for name, value in given.items()
                       if value is not MAIN_KEY})
    got = core(session, combined, values).all()
    width = len(got[0]) - len(writes)
    counts = [int(n) for n in got[0][width:]]
    return [row for row in got if row[0] is not None], counts


DEFAULT_MAX_CONNECTIONS: Final = 40
"""Connections all workers of one service may hold together (PostgreSQL's default
``max_connections`` is 100; several services and the operator share it)."""
MAX_CONNECTIONS_ENV: Final = "TESSERA_DB_MAX_CONNECTIONS"
WORKERS_ENV: Final = "TESSERA_WORKERS"


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def describe_database(url: str | URL) -> str:
    """The URL without its password; a relative SQLite path made absolute, because
    ``sqlite:///./tessera.db`` is a different file in every directory."""
    parsed = make_url(url) if isinstance(url, str) else url
    if (parsed.get_backend_name() == "sqlite" and parsed.database
            and parsed.database != ":memory:" and not Path(parsed.database).is_absolute()):
        parsed = parsed.set(database=str(Path(parsed.database).resolve()))
    return parsed.render_as_string(hide_password=True)


def make_engine(url: str, *, echo: bool = False) -> Engine:
    url = normalise_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        memory = parsed.database in (None, "", ":memory:")
        kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        if memory:
            # One shared connection, or every pooled connection sees its own empty DB.
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, echo=echo, **kwargs)
        configure_sqlite(engine, foreign_keys=True)
        return engine
    size = pool_size_per_worker()
    # No overflow: the budget divided among workers is a ceiling, not a hint.
    # A request beyond it waits for a connection (pool_timeout) instead of
    # pushing the server past max_connections, where every worker fails.
    # Last in, first out: the connection just returned is handed out next, so a lightly
    # loaded process keeps using a few warm connections (their backends' caches, prepared
    # statements, no idle ping) instead of cycling every transaction through the whole
    # pool; measured with two instances on one database, bench/README.md "Two instances
    # vs two workers (session 6)".
    engine = create_engine(url, echo=echo, pool_size=size, max_overflow=0, pool_timeout=30,
                           pool_use_lifo=True)
    _ping_when_idle(engine)
    return engine


PING_AFTER_IDLE_SECONDS: Final = 1.0
"""A pooled connection idle longer than this is pinged before use (see _ping_when_idle)."""
_IDLE_SINCE: Final = "tessera_idle_since"


def _ping_when_idle(engine: Engine) -> None:
    """Check a pooled connection before use only when it has sat idle.

    ``pool_pre_ping`` pings on every checkout: a round trip per transaction
    (two per redemption, ten a second per worker for the log's sequencer),
    bench/README.md "Redemption profile (session 4)". What it guards against
    is a connection that died while it sat in the pool (a database restart, an
    idle timeout): one used again within a second has just answered its last
    transaction, so it is handed out as is; one idle longer is pinged, and a
    dead one is replaced (``DisconnectionError``: the pool discards it and
    takes another, SQLAlchemy's pessimistic-disconnect recipe). A connection
    that dies while in use fails its transaction either way, with or without
    a ping before it.
    """
    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is not None and time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:  # any failure: this connection is not to be trusted
            raise DisconnectionError("pooled connection failed its ping") from exc


def pool_size_per_worker(environ: Mapping[str, str] | None = None) -> int:
    """Pooled PostgreSQL connections per worker process.

    ``TESSERA_DB_MAX_CONNECTIONS`` (default 40) is the budget of the whole
    service; it is divided among the workers, whose number uvicorn's
    ``--workers`` does not tell the app: ``tessera issuer serve`` exports it
    as ``TESSERA_WORKERS``, and a bare ``uvicorn --workers N`` is told by
    ``WEB_CONCURRENCY`` (uvicorn's own variable for the same). Each worker
    gets at least 2 and at most 40 (uvicorn runs sync routes on a 40-thread
    pool: more connections than threads would never be used).
    """
    env = os.environ if environ is None else environ
    try:
        budget = int(env.get(MAX_CONNECTIONS_ENV, "") or DEFAULT_MAX_CONNECTIONS)
        workers = int(env.get(WORKERS_ENV, "") or env.get("WEB_CONCURRENCY", "") or 1)
    except ValueError:
        raise TesseraError(ErrorCode.MALFORMED, f"{MAX_CONNECTIONS_ENV}, {WORKERS_ENV} and "
                           "WEB_CONCURRENCY must be whole numbers") from None
    if budget < 1 or workers < 1:
        raise TesseraError(ErrorCode.MALFORMED,
                           f"{MAX_CONNECTIONS_ENV} and the worker count must be positive")
    return max(2, min(40, budget // workers))


@contextmanager
def session_scope(engine: Engine, *, durable: bool = True) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error.

    ``durable=False``: the commit does not wait for the disk, for a write that a
    later durable commit makes durable before anything depends on it (see
    :func:`tessera.sqlite.write_transaction`; the token endpoint).
    """
    with Session(engine, expire_on_commit=False) as session, session.begin():
        if not durable:
            if is_sqlite(engine):
                session.connection(execution_options={DEFERRED_DURABILITY: True})
            elif engine.dialect.name == "postgresql":
                session.connection().exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
        yield session


@contextmanager
def read_scope(engine: Engine) -> Iterator[Session]:
    """A session in one read-only transaction: on SQLite a deferred ``BEGIN`` (no write
    lock); a flush in it is a bug and raises ``internal_error``."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        session.info[READ_ONLY] = True
        session.connection(execution_options={READ_ONLY: True})
        yield session


@event.listens_for(Session, "before_flush")
def _refuse_flush_in_read_scope(session: Session, _context: Any, _instances: Any) -> None:
    if session.info.get(READ_ONLY) and (session.new or session.dirty or session.deleted):
        raise TesseraError(ErrorCode.INTERNAL_ERROR, "a write in a read-only session")
