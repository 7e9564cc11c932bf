"""Per-client rate limits (issue 9 item 11): the buckets, their configuration, and the
verifier service's public routes answering 429 with Retry-After."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tessera.did import Resolver, did_jwk
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import generate_signer
from tessera.ratelimit import (
    Limit,
    MemoryRateLimiter,
    RateLimitConfig,
    RateRule,
    RedisRateLimiter,
    client_key,
)
from verifier._service import RATE_RULES, ServiceSettings, create_app
from verifier._tills import TillKeys
from verifier.testing import TestIssuer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_one_per_interval() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock=clock)
    limit = Limit(3, 60)  # a burst of 3, then one every 20 s
    assert [limiter.take("a", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", limit) == pytest.approx(20.0)
    assert limiter.take("b", limit) == 0.0  # another client has its own bucket
    clock.now += 10
    assert limiter.take("a", limit) == pytest.approx(10.0)
    clock.now += 10
    assert limiter.take("a", limit) == 0.0
    assert limiter.take("a", limit) > 0
    clock.now += 3600  # refilled, never beyond the burst
    assert [limiter.take("a", limit) for _ in range(4)][-1] > 0


def test_bucket_memory_is_bounded() -> None:
    limiter = MemoryRateLimiter(max_keys=100, clock=Clock())
    for i in range(1000):
        limiter.take(f"client-{i}", Limit(1, 60))
    assert len(limiter._buckets) == 100


@pytest.mark.parametrize(("text", "limit"), [
    ("60/min", Limit(60, 60)), ("5/s", Limit(5, 1)), ("1000/h", Limit(1000, 3600)),
    ("10/5s", Limit(10, 5)), (" 7 / min ", Limit(7, 60)),
])
def test_limit_syntax(text: str, limit: Limit) -> None:
    assert Limit.parse(text) == limit


@pytest.mark.parametrize("text", ["", "60", "60/fortnight", "-1/s", "0/s", "1/0s", "x/min",
                                  "99999999/s"])
def test_limit_syntax_refused(text: str) -> None:
    with pytest.raises(TesseraError) as err:
        Limit.parse(text)
    assert err.value.code == ErrorCode.MALFORMED


def test_config_from_environment() -> None:
    rules = (RateRule("token", "POST", "/t", Limit(120, 60)),
             RateRule("nonce", "POST", "/n", Limit(120, 60)))
    default = RateLimitConfig.from_env({})
    assert [(r.name, lim) for r, lim in default.limits(rules)] == [
        ("token", Limit(120, 60)), ("nonce", Limit(120, 60))]
    tuned = RateLimitConfig.from_env({"TESSERA_RATE_LIMITS": "token=10/s, nonce=off",
                                      "TESSERA_RATE_LIMIT_STORE": "redis://x:6379/3"})
    assert [(r.name, lim) for r, lim in tuned.limits(rules)] == [("token", Limit(10, 1))]
    assert tuned.store_url == "redis://x:6379/3"
    assert RateLimitConfig.from_env({"TESSERA_RATE_LIMITS": "off"}).limits(rules) == []
    with pytest.raises(TesseraError) as err:  # a misspelt rule must not pass silently
        RateLimitConfig.from_env({"TESSERA_RATE_LIMITS": "tokens=10/s"}).limits(rules)
    assert "tokens" in err.value.detail
    with pytest.raises(TesseraError):
        RateLimitConfig.from_env({"TESSERA_RATE_LIMITS": "token"})


def test_client_key() -> None:
    assert client_key({"client": ("203.0.113.9", 5000)}) == "203.0.113.9"
    # One IPv6 host owns a /64: every address in it is one client.
    assert (client_key({"client": ("2001:db8:1:2:aaaa::1", 1)})
            == client_key({"client": ("2001:db8:1:2:ffff::9", 1)}) == "2001:db8:1:2::/64")
    assert client_key({"client": ("2001:db8:1:3::1", 1)}) != "2001:db8:1:2::/64"
    assert client_key({"client": ("::ffff:203.0.113.9", 1)}) == "203.0.113.9"
    assert client_key({}) == "unknown"


# -- the verifier service ------------------------------------------------------------------------


TILLS = TillKeys()
TILL = {"Authorization": f"Bearer {TILLS.create('lane 1')['token']}"}


def _verifier(config: RateLimitConfig) -> Any:
    brand = TestIssuer()
    signer = generate_signer("ES256")
    signer = signer.with_key_id(did_jwk(signer.public_key) + "#0")
    return create_app(ServiceSettings(
        base_url="https://till.test", trust=brand.trust_list(), signer=signer,
        store_url="memory://", resolver=Resolver(documents={brand.did: brand.did_document}),
        tills=TILLS, rate_limits=config))


def _assert_429(r: Any) -> int:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == ErrorCode.RATE_LIMITED.value and r.json()["status"] == 429
    retry_after = int(r.headers["retry-after"])
    assert 1 <= retry_after <= 60
    return retry_after


def test_verifier_requests_over_the_limit_get_429() -> None:
    app = _verifier(RateLimitConfig(overrides={"requests": Limit(3, 60)}))
    shop = TestClient(app, base_url="https://till.test", client=("198.51.100.20", 4000))
    other = TestClient(app, base_url="https://till.test", client=("198.51.100.21", 4000))
    for _ in range(3):
        assert shop.post("/requests", json={"policy": "gold-10"},
                         headers=TILL).status_code == 201
    assert _assert_429(shop.post("/requests", json={"policy": "gold-10"}, headers=TILL)) == 20
    # Unauthenticated floods count too: the limit comes before the till check.
    _assert_429(shop.post("/requests", json={"policy": "gold-10"}))
    # Another client is not affected, nor are the wallet's routes of this one.
    created = other.post("/requests", json={"policy": "gold-10"}, headers=TILL)
    assert created.status_code == 201
    assert shop.get(created.json()["request_uri"]).status_code == 200


def test_verifier_event_streams_over_the_limit_get_429() -> None:
    from tessera.jose import decode_unverified

    app = _verifier(RateLimitConfig(overrides={"events": Limit(2, 60)}))
    with TestClient(app, base_url="https://till.test", client=("198.51.100.30", 1)) as till:
        created = till.post("/requests", json={"policy": "gold-10"}, headers=TILL).json()
        # The member declines: the checkout is done, so each stream ends after one event.
        state = decode_unverified(till.get(created["request_uri"]).text
                                  ).payload["state"]
        assert till.post("/response", data={"error": "access_denied",
                                            "state": state}).status_code == 200
        for _ in range(2):
            r = till.get(created["events"], headers=TILL)
            assert r.status_code == 200 and "consent_denied" in r.text
        _assert_429(till.get(created["events"], headers=TILL))
        # Polling the result is not the event stream's budget.
        assert till.get(created["result"], headers=TILL).status_code == 200


def test_verifier_default_limits_are_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    for rule in RATE_RULES:
        assert f"`{rule.name}`" in doc and f"{rule.default.requests}/min" in doc, rule
    disabled = replace(RateLimitConfig(), enabled=False)
    assert disabled.limits(RATE_RULES) == []


# -- Redis: one bucket per client for every worker and instance ------------------------------------


def test_redis_buckets_are_shared(redis_url: str) -> None:
    prefix = f"tessera:test:ratelimit:{secrets.token_hex(4)}:"
    limit = Limit(3, 60)

    async def run() -> tuple[list[float], float, float]:
        # Two limiters over one Redis: two workers, or two instances.
        a = RedisRateLimiter(redis_url, prefix=prefix)
        b = RedisRateLimiter(redis_url, prefix=prefix)
        waits = [await a.acquire("requests:198.51.100.40", limit),
                 await b.acquire("requests:198.51.100.40", limit),
                 await a.acquire("requests:198.51.100.40", limit),
                 await b.acquire("requests:198.51.100.40", limit)]
        other = await b.acquire("requests:198.51.100.41", limit)
        ttl = await a._client.pttl(prefix + "requests:198.51.100.40")
        await a._client.aclose()
        await b._client.aclose()
        return waits, other, float(ttl)

    waits, other, ttl = asyncio.run(run())
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 19.0 < waits[3] <= 20.0
    assert other == 0.0
    assert 0 < ttl <= 61_000  # the bucket expires once it would be full again


def test_redis_limits_through_the_service(redis_url: str) -> None:
    config = RateLimitConfig(overrides={"requests": Limit(2, 60)}, store_url=redis_url)
    first, second = _verifier(config), _verifier(config)  # two instances, one Redis
    # A client of its own (an IPv6 /64 no other run uses): buckets outlive a run by a minute.
    client = (f"2001:db8:{secrets.token_hex(2)}:{secrets.token_hex(2)}::1", 1)
    with TestClient(first, base_url="https://till.test", client=client) as a, \
            TestClient(second, base_url="https://till.test", client=client) as b:
        assert a.post("/requests", json={"policy": "gold-10"}, headers=TILL).status_code == 201
        assert b.post("/requests", json={"policy": "gold-10"}, headers=TILL).status_code == 201
        _assert_429(a.post("/requests", json={"policy": "gold-10"}, headers=TILL))
        _assert_429(b.post("/requests", json={"policy": "gold-10"}, headers=TILL))


def test_open_slots_bound_per_key_and_in_all_and_release_once() -> None:
    from tessera.ratelimit import OpenSlots, RateLimited

    slots = OpenSlots(per_key=2, total=3, retry_after=5)
    a1, _a2 = slots.acquire("a", "streams"), slots.acquire("a", "streams")
    with pytest.raises(RateLimited) as per_key:
        slots.acquire("a", "streams")
    assert per_key.value.code is ErrorCode.RATE_LIMITED
    assert per_key.value.headers == {"Retry-After": "5"}
    slots.acquire("b", "streams")
    with pytest.raises(RateLimited):
        slots.acquire("c", "streams")  # the process bound
    a1()
    a1()  # a second release of one slot frees nothing more
    assert slots.open("a") == 1 and slots.open() == 2
    slots.acquire("c", "streams")
    with pytest.raises(RateLimited):
        slots.acquire("d", "streams")
