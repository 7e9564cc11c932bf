"""Fixtures of the issuer suite: every API test runs on SQLite and on PostgreSQL.

PostgreSQL runs get a schema of their own (``search_path`` through the
connection options), so parallel runs and other suites never collide; it is
dropped afterwards.
"""

from __future__ import annotations

import secrets
import urllib.parse
from collections.abc import Iterator

import pytest

from issuer._settings import normalise_database_url


def _schema_url(base: str, schema: str) -> str:
    parts = urllib.parse.urlsplit(normalise_database_url(base))
    query = urllib.parse.parse_qsl(parts.query)
    query.append(("options", f"-csearch_path={schema}"))
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'tessera.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    import psycopg

    schema = "tessera_test_" + secrets.token_hex(6)
    plain = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield _schema_url(base, schema)
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
