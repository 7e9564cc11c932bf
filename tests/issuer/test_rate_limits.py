"""The issuer's public OpenID4VCI token and nonce endpoints are limited per client
(issue 9 item 11): over the limit, 429 with Retry-After, as an OAuth JSON error."""

from __future__ import annotations

from dataclasses import replace

from fastapi.testclient import TestClient

from issuer._app import create_app
from issuer._db import make_engine
from issuer._settings import Settings
from issuer.migrations import upgrade
from tessera.ratelimit import Limit, RateLimitConfig

TOKEN_FORM = {"grant_type": "urn:ietf:params:oauth:grant-type:pre-authorized_code",
              "pre-authorized_code": "not-a-code"}


def test_token_and_nonce_over_the_limit_get_429(settings: Settings) -> None:
    limited = replace(settings, rate_limits=RateLimitConfig(
        overrides={"token": Limit(2, 60), "nonce": Limit(3, 60)}))
    engine = make_engine(limited.database_url)
    upgrade(engine)
    app = create_app(limited, engine=engine)
    member = TestClient(app, client=("203.0.113.10", 5000))
    neighbour = TestClient(app, client=("203.0.113.11", 5000))
    try:
        for _ in range(2):
            assert member.post("/brands/acme/token", data=TOKEN_FORM).status_code == 400
        refused = member.post("/brands/acme/token", data=TOKEN_FORM)
        assert refused.status_code == 429, refused.text
        # An OAuth endpoint: application/json with the OAuth error, and Tessera's code.
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["error"] == "temporarily_unavailable"
        assert refused.json()["code"] == "rate_limited"
        assert refused.headers["retry-after"] == "30"
        assert refused.headers["cache-control"] == "no-store"
        # Nonces have their own budget, and the neighbour has its own buckets.
        for _ in range(3):
            assert member.post("/brands/acme/nonce").status_code == 400  # no such brand
        assert member.post("/brands/acme/nonce").status_code == 429
        assert neighbour.post("/brands/acme/token", data=TOKEN_FORM).status_code == 400
        assert neighbour.post("/brands/acme/nonce").status_code == 400
        # Routes without a rule are not limited.
        assert member.get("/healthz").status_code == 200
    finally:
        engine.dispose()


def test_limits_are_read_from_the_environment() -> None:
    env = {"TESSERA_DEV": "1", "TESSERA_RATE_LIMITS": "token=5/s"}
    settings = Settings.from_env(env)
    assert settings.rate_limits.overrides == {"token": Limit(5, 1)}
    assert not Settings.from_env({**env, "TESSERA_RATE_LIMITS": "off"}).rate_limits.enabled


def test_default_limits_leave_room_for_a_busy_address(settings: Settings) -> None:
    engine = make_engine(settings.database_url)
    upgrade(engine)
    client = TestClient(create_app(settings, engine=engine))
    try:
        codes = {client.post("/brands/acme/nonce").status_code for _ in range(100)}
        assert codes == {400}
    finally:
        engine.dispose()
