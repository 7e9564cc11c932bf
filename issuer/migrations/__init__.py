"""Alembic migrations of the issuer schema, configured in code (no alembic.ini).

``upgrade(url)`` is what ``tessera issuer migrate`` runs; it works from an
installed package because the script location is this folder.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from issuer._db import make_engine

__all__ = ["alembic_config", "current", "downgrade", "upgrade"]

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
