"""Per-process caches of rows that never change once written.

A brand's slug, name and DID, and a program's tiers, are written once and
never updated nor deleted (no route, CLI command or migration does), so a
worker may keep them for its lifetime instead of reading them on every
request: ``brand_by_slug`` ran on every partner, OpenID4VCI and admin
request, and the ledger read a program's tiers two or three times per write
(bench/README.md, "Redemption profile (session 4)").

What *can* change stays a database read on every request: which brand key is
active (a rotation by another worker is seen on the next request,
:class:`issuer._keystore.SqlKeyStore`), API and partner keys (a revocation
is refused from the next request on), balances, holds, statuses.

Entries are kept per engine (one database), so two databases in one process
(the test suite) never see each other's rows; only rows read from a
committed state are stored: a row read in a transaction enters the cache
when that transaction commits (a brand created and read in one transaction
that then rolls back is never cached). Cached ORM instances are detached and shared between
threads: callers read their attributes and must not add them to a session.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Final, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

__all__ = ["MAX_ENTRIES", "cached", "clear", "peek"]

T = TypeVar("T")
MAX_ENTRIES: Final = 10_000
"""Per engine; past it the oldest entry goes (bounded memory with very many brands)."""

_lock = threading.Lock()
_caches: weakref.WeakKeyDictionary[Engine, dict[Hashable, Any]] = weakref.WeakKeyDictionary()
_PENDING: Final = "tessera.cache.pending"  # Session.info: entries waiting for the commit


def _engine(session: Session) -> Engine | None:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else getattr(bind, "engine", None)


def cached(session: Session, key: Hashable, load: Callable[[], T | None]) -> T | None:
    """The value cached for ``key`` on this session's database, else ``load()``, kept from
    the commit of this session's transaction on when not ``None`` (an absent row may be
    created later, so misses are not cached)."""
    engine = _engine(session)
    if engine is None:  # pragma: no cover - sessions here are always bound to an engine
        return load()
    pending: dict[Hashable, Any] = session.info.setdefault(_PENDING, {})
    if key in pending:
        found: T = pending[key]
        return found
    with _lock:
        entries = _caches.get(engine)
        if entries is not None and key in entries:
            value: T = entries[key]
            return value
    loaded = load()
    if loaded is not None:
        pending[key] = loaded
    return loaded


def peek(engine: Engine, key: Hashable) -> Any | None:
    """The value cached for ``key`` on ``engine``'s database, or ``None``: no session, no
    transaction (a route that needs nothing else from the database opens none)."""
    with _lock:
        entries = _caches.get(engine)
        return None if entries is None else entries.get(key)


@event.listens_for(Session, "after_commit")
def _keep(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    engine = _engine(session) if pending else None
    if not pending or engine is None:
        return
    with _lock:
        entries = _caches.setdefault(engine, {})
        for key, value in pending.items():
            if len(entries) >= MAX_ENTRIES and key not in entries:
                entries.pop(next(iter(entries)))
            entries[key] = value


@event.listens_for(Session, "after_rollback")
def _drop(session: Session) -> None:
    session.info.pop(_PENDING, None)


def clear() -> None:
    """Forget everything (tests)."""
    with _lock:
        _caches.clear()
