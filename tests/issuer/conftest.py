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


# -- the service under test -----------------------------------------------------------------

import secrets as _secrets  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from datetime import UTC, datetime, timedelta  # noqa: E402
from typing import Any  # noqa: E402

from fastapi.testclient import TestClient  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from issuer._admin import create_brand  # noqa: E402
from issuer._app import create_app  # noqa: E402
from issuer._db import make_engine  # noqa: E402
from issuer._keystore import SqlKeyStore  # noqa: E402
from issuer._ledger import run_write  # noqa: E402
from issuer._models import BrandCreate  # noqa: E402
from issuer._settings import Settings  # noqa: E402
from issuer.migrations import upgrade  # noqa: E402
from tessera.did import did_key  # noqa: E402
from tessera.jose import sign_compact  # noqa: E402
from tessera.keys import LocalSigner, generate_signer  # noqa: E402

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class FakeClock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


@dataclass
class Service:
    client: TestClient
    engine: Engine
    settings: Settings
    clock: FakeClock
    tokens: dict[str, str] = field(default_factory=dict)

    def brand(self, slug: str) -> str:
        """Create a brand; return an auth header value."""
        def run(session: Any) -> str:
            _, key = create_brand(session, keystore=SqlKeyStore(self.settings.master_key),
                                  data=BrandCreate(slug=slug, name=slug.title()),
                                  did=self.settings.brand_did(slug))
            return key.token
        token = run_write(self.engine, run)
        self.tokens[slug] = token
        return token

    def h(self, slug: str, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.tokens[slug]}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    def program(self, slug: str, **overrides: Any) -> dict[str, Any]:
        body = {"name": "Miles", "return_window_days": 0, "points_validity_days": None,
                "tiers": [
                    {"name": "blue", "rank": 0, "qualifying_points": 0},
                    {"name": "silver", "rank": 1, "qualifying_points": 1000,
                     "qualification_period_days": 365, "grace_period_days": 30},
                    {"name": "gold", "rank": 2, "qualifying_points": 5000,
                     "qualification_period_days": 365, "grace_period_days": 30,
                     "downgrade_policy": "one_step"},
                ]}
        body.update(overrides)
        r = self.client.post("/admin/v1/programs", json=body, headers=self.h(slug))
        assert r.status_code == 201, r.text
        return dict(r.json())

    def enrol(self, slug: str, program_id: str, signer: LocalSigner | None = None
              ) -> dict[str, Any]:
        signer = signer or generate_signer("ES256")
        did = did_key(signer.public_key)
        r = self.client.post("/admin/v1/enrolment-challenges", headers=self.h(slug))
        assert r.status_code == 201, r.text
        ch = r.json()
        proof = enrolment_proof(signer, did, ch["audience"], ch["nonce"], self.clock.now)
        r = self.client.post("/admin/v1/members", headers=self.h(slug),
                             json={"program_id": program_id, "did": did, "proof": proof})
        assert r.status_code == 201, r.text
        return dict(r.json())

    def integrate(self) -> int:
        """Run the log's sequencer now (the service under test runs none on a timer)."""
        from issuer._translog import integrate_all

        state = self.client.app.state.tessera  # type: ignore[attr-defined]
        return integrate_all(self.engine, keystore=state.keystore, clock=self.clock)

    def post(self, slug: str, path: str, body: dict[str, Any] | None = None,
             key: str | None = None) -> Any:
        key = key or _secrets.token_hex(8)
        return self.client.post(path, json=body if body is not None else {},
                                headers=self.h(slug, key))


def enrolment_proof(signer: LocalSigner, did: str, aud: str, nonce: str, now: datetime,
                    **extra: Any) -> str:
    kid = f"{did}#{did.removeprefix('did:key:')}"
    payload = {"iss": did, "aud": aud, "nonce": nonce, "iat": int(now.timestamp()), **extra}
    return sign_compact({"typ": "tessera-enrolment+jwt", "kid": kid}, payload, signer)


@pytest.fixture
def settings(database_url: str) -> Settings:
    # No background sequencer: a test integrates pending log leaves when it says
    # so (or a reader does), never on a timer (tests/issuer/test_translog.py runs one).
    return Settings(database_url=database_url, master_key=_secrets.token_bytes(32),
                    public_url="https://issuer.example", log_sequencer_interval=0)


@pytest.fixture
def service(settings: Settings) -> Iterator[Service]:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    clock = FakeClock()
    app = create_app(settings, engine=engine, clock=clock)
    with TestClient(app) as client:
        yield Service(client=client, engine=engine, settings=settings, clock=clock)
    engine.dispose()
