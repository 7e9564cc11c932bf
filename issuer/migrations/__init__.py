"""Alembic migrations of the issuer schema, configured in code (no alembic.ini).

``upgrade(url)`` is what ``tessera issuer migrate`` runs; it works from an
installed package because the script location is this folder.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from issuer._db import describe_database, make_engine
from tessera.errors import ErrorCode, TesseraError

__all__ = ["alembic_config", "current", "downgrade", "heads", "require_current", "upgrade"]

SCRIPT_LOCATION = Path(__file__).resolve().parent


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    # env.py runs on this engine, so SQLite pragmas and PostgreSQL options
    # (search_path in tests) apply to migrations exactly as to the service.
    config.attributes["engine"] = engine
    return config


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> None:
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    command.upgrade(alembic_config(engine), revision)


def downgrade(url_or_engine: str | Engine, revision: str = "base") -> None:
    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    command.downgrade(alembic_config(engine), revision)


def current(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def heads(engine: Engine) -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory.from_config(alembic_config(engine)).get_heads())


def require_current(engine: Engine) -> str:
    """The schema revision, or ``database_unavailable`` saying what to do.

    The admin commands, ``serve`` and ``/readyz`` call this first, so an
    unreachable or unmigrated database is one clear sentence rather than a
    SQLAlchemy traceback ("no such table: brand") at the first query.
    """
    from sqlalchemy.exc import SQLAlchemyError

    where = describe_database(engine.url)
    try:
        revision = current(engine)
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        raise TesseraError(ErrorCode.DATABASE_UNAVAILABLE,
                           f"cannot reach the database {where}: {cause}") from None
    if revision is None:
        raise TesseraError(ErrorCode.DATABASE_UNAVAILABLE,
                           f"the database {where} has no Tessera schema: run `tessera issuer "
                           "migrate` (or `tessera issuer init`) first")
    wanted = heads(engine)
    if revision not in wanted:
        raise TesseraError(ErrorCode.DATABASE_UNAVAILABLE,
                           f"the database {where} is at schema revision {revision}, this "
                           f"version needs {', '.join(wanted)}: run `tessera issuer migrate`")
    return revision
