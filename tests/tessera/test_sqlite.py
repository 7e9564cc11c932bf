"""tessera.sqlite: the policy of SQLite files shared by threads and workers (issue 10).

Reads take no lock; writers of every store on one file queue on one gate, held
from BEGIN IMMEDIATE to the end of the transaction; another process's writer
waits for the gate instead of SQLite's sleeping busy handler.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from tessera.nonces import SqlNonceStore
from tessera.sqlite import READ_ONLY, configure_sqlite, write_gate, write_transaction
from verifier._sessions import SqlSessionStore


def _gate_taken(db: Path) -> bool:
    fd = os.open(str(db) + ".writers", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_session_reads_answer_while_another_program_holds_the_write_lock(
        tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    sessions = SqlSessionStore(f"sqlite:///{db}")
    sessions.put("session:a", {"status": "pending"}, ttl_seconds=60)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE held_by_test (x INTEGER)")
    try:
        # A till's poll must not wait for a writer: the reads stay deferred now
        # that every other transaction on the file opens with BEGIN IMMEDIATE.
        assert sessions.get("session:a") == {"status": "pending"}
    finally:
        other.execute("ROLLBACK")
        other.close()


def test_nonce_and_session_writers_on_one_file_share_one_gate(tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    url = f"sqlite:///{db}"
    nonces, sessions = SqlNonceStore(url), SqlSessionStore(url)
    assert write_gate(str(db)) is write_gate(str(tmp_path / "." / "v.db"))
    assert not _gate_taken(db)
    with nonces.engine.begin() as conn:
        conn.exec_driver_sql("SELECT 1")
        assert _gate_taken(db)  # the nonce store's write transaction holds it
    assert not _gate_taken(db)
    nonces.issue("n1", ttl_seconds=60, data={"x": 1})
    sessions.put("k", {"v": 1}, ttl_seconds=60)
    assert not _gate_taken(db)  # both released at commit
    assert nonces.consume("n1") == {"x": 1}
    assert nonces.consume("n1") is None
    assert sessions.get("k") == {"v": 1}


_HOLD = """
import sys, time
from tessera.nonces import SqlNonceStore
store = SqlNonceStore(sys.argv[1])
with store.engine.begin() as conn:
    conn.exec_driver_sql("SELECT 1")
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_a_writer_in_another_process_holds_the_gate_until_it_commits(tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    url = f"sqlite:///{db}"
    store = SqlNonceStore(url)
    worker = subprocess.Popen([sys.executable, "-c", _HOLD, url],  # noqa: S603 - our own code
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None and worker.stdin is not None
        assert worker.stdout.readline().strip() == "holding"
        assert _gate_taken(db)
        worker.stdin.write("\n")
        worker.stdin.flush()
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
    assert not _gate_taken(db)
    store.issue("after", ttl_seconds=60)
    assert store.consume("after") == {}


def test_in_memory_sqlite_has_no_gate(tmp_path: Path) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    from tessera.sqlite import configure_sqlite

    engine = create_engine("sqlite://", poolclass=StaticPool)
    configure_sqlite(engine)
    with engine.begin() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
    assert not list(tmp_path.glob("*.writers"))


def _full_engine(db: Path) -> sa.Engine:
    engine = sa.create_engine(f"sqlite:///{db}")
    configure_sqlite(engine)
    return engine


def _synchronous(conn: Any) -> int:
    return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())


def test_deferred_durability_is_for_that_transaction_only(tmp_path: Path) -> None:
    """A write_transaction(durable=False) runs with synchronous=NORMAL; every other
    transaction on the same pooled connection is back at FULL (issue 10)."""
    engine = _full_engine(tmp_path / "n.db")
    with write_transaction(engine) as conn:
        assert _synchronous(conn) == 2
    with write_transaction(engine, durable=False) as conn:
        assert _synchronous(conn) == 1
        assert _gate_taken(tmp_path / "n.db")  # still one writer at a time
    with engine.begin() as conn:
        assert _synchronous(conn) == 2
    with write_transaction(engine, durable=False) as conn:
        assert _synchronous(conn) == 1
    with engine.connect() as conn, conn.execution_options(**{READ_ONLY: True}).begin():
        conn.exec_driver_sql("SELECT 1")  # a reader commits nothing: no PRAGMA for it
    with engine.begin() as conn:
        assert _synchronous(conn) == 2


def test_nonce_store_commits_durably_unless_told(tmp_path: Path) -> None:
    seen: list[int] = []
    for durable in (True, False):
        # A store on a service's own engine (the issuer's: FULL, the SQLite default).
        store = SqlNonceStore(_full_engine(tmp_path / f"{durable}.db"), durable_commits=durable)
        event.listen(store.engine, "commit",
                     lambda conn: seen.append(_synchronous(conn)))
        store.issue("n-" + "x" * 20, ttl_seconds=60, data={})
        assert store.consume("n-" + "x" * 20) == {}
        assert store.consume("n-" + "x" * 20) is None  # consumed once, either way
    assert seen[:2] == [2, 2] and seen[-2:] == [1, 1]


def test_deferred_durability_on_postgres(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    try:
        with write_transaction(engine, durable=False) as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar_one() == "off"
        with write_transaction(engine) as conn:
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar_one() == "on"
    finally:
        engine.dispose()


# -- WAL checkpoints on a thread of their own (session 7) ------------------------------------


def _autocheckpoint(conn: Any) -> int:
    return int(conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one())


def test_checkpointer_copies_the_wal_beside_the_writers_and_stops(tmp_path: Path) -> None:
    """While a Checkpointer runs, this process's write transactions leave checkpoints to it
    (SQLite's automatic threshold raised to the backstop); once stopped, its thread is gone
    and the transactions are back at SQLite's own threshold."""
    from tessera.sqlite import (
        AUTOCHECKPOINT_PAGES,
        BACKSTOP_PAGES,
        start_checkpointer,
        stop_checkpointer,
    )

    db = tmp_path / "c.db"
    engine = _full_engine(db)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x INTEGER PRIMARY KEY, pad TEXT)")
        assert _autocheckpoint(conn) == AUTOCHECKPOINT_PAGES
    # Other tests' services may still run checkpointers of their own files: this one's
    # thread is the one that was not there before.
    others = {t for t in threading.enumerate() if t.name == "tessera-sqlite-checkpoint"}
    checkpointer = start_checkpointer(str(tmp_path / "." / "c.db"), interval=0.01)
    mine = {t for t in threading.enumerate() if t.name == "tessera-sqlite-checkpoint"} - others
    assert len(mine) == 1
    try:
        assert checkpointer.running
        for i in range(50):
            with engine.begin() as conn:
                assert _autocheckpoint(conn) == BACKSTOP_PAGES
                conn.exec_driver_sql("INSERT INTO t (x, pad) VALUES (?, ?)", (i, "p" * 3000))
        # Polled, no duration asserted: the thread's own tick copies the frames.
        for _ in range(2000):
            if checkpointer.checkpoints:
                break
            threading.Event().wait(0.01)
        assert checkpointer.checkpoints >= 1 and checkpointer.errors == 0
    finally:
        stop_checkpointer(checkpointer)
    assert not checkpointer.running
    assert not any(t.is_alive() for t in mine)
    stop_checkpointer(checkpointer)  # twice: nothing left to stop
    with engine.begin() as conn:
        assert _autocheckpoint(conn) == AUTOCHECKPOINT_PAGES
        assert conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one() == 50
    engine.dispose()


_WORKER = """
import sys
import threading
import sqlalchemy as sa
from tessera.sqlite import configure_sqlite, start_checkpointer, stop_checkpointer
db, tag = sys.argv[1], sys.argv[2]
engine = sa.create_engine("sqlite:///" + db)
configure_sqlite(engine)
checkpointer = start_checkpointer(db, interval=0.005)
for i in range(300):
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t (tag, i, pad) VALUES (?, ?, ?)", (tag, i, "p" * 2000))
stop_checkpointer(checkpointer)
assert not checkpointer.running and checkpointer.errors == 0, checkpointer.errors
engine.dispose()
"""


def test_checkpointers_of_two_workers_on_one_file(tmp_path: Path) -> None:
    """Two worker processes, each with its checkpointer, writing one file at once: every
    row of both is there, the file is intact, and both threads stopped without an error."""
    db = tmp_path / "w.db"
    engine = _full_engine(db)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (tag TEXT, i INTEGER, pad TEXT, "
                             "PRIMARY KEY (tag, i))")
    engine.dispose()
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, str(db), tag])  # noqa: S603
               for tag in ("a", "b")]
    try:
        assert [w.wait(timeout=120) for w in workers] == [0, 0]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    check = sqlite3.connect(db)
    try:
        assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert check.execute("SELECT tag, count(*) FROM t GROUP BY tag").fetchall() == [
            ("a", 300), ("b", 300)]
    finally:
        check.close()
