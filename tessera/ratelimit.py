"""Per-client rate limits on the public endpoints of every Tessera service.

A token bucket per (rule, client): a rule ``N/period`` lets a client send a
burst of ``N`` requests and then one every ``period / N`` seconds. A request
over the limit is answered ``429 Too Many Requests`` with ``Retry-After``
(RFC 6585 §4, RFC 9110 §10.2.3) and a problem document whose code is
``rate_limited``, before the request is parsed or routed.

Each service declares its rules (:class:`RateRule`: a name, a method, a path
pattern, a default limit) and mounts :class:`RateLimits` beside
:class:`tessera.web.StrictBodies`. Operators tune them with two variables:

``TESSERA_RATE_LIMITS``
    ``off`` (no limits at all), or comma-separated ``name=N/period``
    overrides, e.g. ``token=600/min,events=off``; ``period`` is ``s``,
    ``min`` or ``h`` (``60/min`` = ``60/60s``).
``TESSERA_RATE_LIMIT_STORE``
    ``memory://`` (default: each process counts alone, so with ``W`` workers
    a client gets up to ``W`` times the limit) or ``redis://…``, one bucket
    per client shared by every worker and instance.

The client is the connection's peer address (an IPv6 client by its /64, which
one host can fill at will). Behind a reverse proxy that is the proxy: run
uvicorn with ``--proxy-headers --forwarded-allow-ips=<proxy>`` so the peer is
the forwarded client, or every member shares one bucket.

Long-lived responses (the verifier's event streams) are bounded by how many
are open at once, not only by how fast they are opened: :class:`OpenSlots`
counts them per key and per process, and refuses one over either bound with
:class:`RateLimited` (429, ``Retry-After``).

This module imports Starlette through :mod:`tessera.web`; redis is imported
only by :class:`RedisRateLimiter`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

from starlette.requests import Request

from tessera.errors import ErrorCode, TesseraError
from tessera.web import ERROR_CODE_STATE, ProblemCustomizer, problem_response

if TYPE_CHECKING:
    import redis.asyncio

__all__ = [
    "LIMITS_ENV",
    "STORE_ENV",
    "Limit",
    "MemoryRateLimiter",
    "OpenSlots",
    "RateLimitConfig",
    "RateLimited",
    "RateLimiter",
    "RateLimits",
    "RateRule",
    "RedisRateLimiter",
    "client_key",
    "rate_limiter_from_url",
]

LIMITS_ENV: Final = "TESSERA_RATE_LIMITS"
STORE_ENV: Final = "TESSERA_RATE_LIMIT_STORE"
_PERIODS: Final = {"s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class Limit:
    """A burst of ``requests``, refilled at ``requests`` per ``per_seconds``."""

    requests: int
    per_seconds: float

    def __post_init__(self) -> None:
        if not (0 < self.requests <= 1_000_000 and 0 < self.per_seconds <= 86_400):
            raise TesseraError(ErrorCode.MALFORMED, "a rate limit is 1..1000000 requests per "
                                                    "0..86400 seconds")

    @property
    def rate(self) -> float:
        return self.requests / self.per_seconds

    @classmethod
    def parse(cls, text: str) -> Limit:
        found = re.fullmatch(r"\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*", text)
        if found is None or found.group(3) not in _PERIODS:
            raise TesseraError(ErrorCode.MALFORMED,
                               f"rate limit {text!r}: expected N/s, N/min or N/h")
        count = int(found.group(2) or "1")
        return cls(int(found.group(1)), count * _PERIODS[found.group(3)])

    def __str__(self) -> str:
        return f"{self.requests}/{self.per_seconds:g}s"


@dataclass(frozen=True)
class RateRule:
    """A limited route: ``method`` on paths that fully match ``path`` (a regex)."""

    name: str
    method: str
    path: str
    default: Limit

    def matches(self, method: str, path: str) -> bool:
        return method == self.method and re.fullmatch(self.path, path) is not None


@dataclass(frozen=True)
class RateLimitConfig:
    """What the operator set: overrides by rule name (None = off), the store."""

    overrides: Mapping[str, Limit | None] = field(default_factory=dict)
    store_url: str = "memory://"
    enabled: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RateLimitConfig:
        env = os.environ if environ is None else environ
        raw = env.get(LIMITS_ENV, "").strip()
        store = env.get(STORE_ENV, "").strip() or "memory://"
        if raw.lower() in ("off", "0", "false", "no"):
            return cls(store_url=store, enabled=False)
        overrides: dict[str, Limit | None] = {}
        for item in filter(None, (part.strip() for part in raw.split(","))):
            name, sep, value = item.partition("=")
            if not sep or not re.fullmatch(r"[a-z_]+", name.strip()):
                raise TesseraError(ErrorCode.MALFORMED,
                                   f"{LIMITS_ENV}: expected name=N/period, not {item!r}")
            value = value.strip()
            overrides[name.strip()] = None if value.lower() == "off" else Limit.parse(value)
        return cls(overrides=overrides, store_url=store)

    def limits(self, rules: Sequence[RateRule]) -> list[tuple[RateRule, Limit]]:
        """The rules in force, with their limits (a rule set ``off`` is dropped)."""
        unknown = set(self.overrides) - {r.name for r in rules}
        if unknown and self.enabled:
            # A misspelt name would silently leave the default in force.
            raise TesseraError(ErrorCode.MALFORMED,
                               f"{LIMITS_ENV}: no rule named {', '.join(sorted(unknown))} "
                               f"(this service has {', '.join(r.name for r in rules)})")
        if not self.enabled:
            return []
        chosen = [(r, self.overrides.get(r.name, r.default)) for r in rules]
        return [(r, limit) for r, limit in chosen if limit is not None]


class RateLimiter(Protocol):
    async def acquire(self, key: str, limit: Limit) -> float:
        """Take one token: 0.0 if allowed, else the seconds until one is available."""
        ...


class MemoryRateLimiter:
    """Buckets in this process; the least recently used are dropped beyond ``max_keys``."""

    def __init__(self, *, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    async def acquire(self, key: str, limit: Limit) -> float:
        return self.take(key, limit)

    def take(self, key: str, limit: Limit) -> float:
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(limit.requests), now))
            tokens = min(float(limit.requests), tokens + max(0.0, now - last) * limit.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / limit.rate
            self._buckets[key] = (tokens, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self._max:
                # A dropped bucket was idle longest; it comes back full, which is
                # the state it would have refilled to anyway unless under attack
                # from more than max_keys clients at once.
                self._buckets.popitem(last=False)
        return wait


# One round trip, atomic on the server, on the server's clock (so every
# instance agrees): refill by elapsed time, take a token if there is one.
# Numbers are returned as strings: Redis truncates Lua numbers to integers.
_BUCKET_SCRIPT: Final = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1]) or capacity
local ts = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimiter:
    """Buckets in Redis (a hash per client and rule, expiring once full again)."""

    def __init__(self, url_or_client: str | redis.asyncio.Redis,
                 prefix: str = "tessera:ratelimit:") -> None:
        import redis.asyncio as redis_async

        self._client: redis.asyncio.Redis = (
            redis_async.Redis.from_url(url_or_client) if isinstance(url_or_client, str)
            else url_or_client)
        self._prefix = prefix
        self._script = self._client.register_script(_BUCKET_SCRIPT)

    async def acquire(self, key: str, limit: Limit) -> float:
        raw: Any = await self._script(keys=[self._prefix + key],
                                      args=[limit.requests, repr(limit.rate)])
        return float(raw.decode() if isinstance(raw, bytes) else raw)


def rate_limiter_from_url(url: str, *, redis_prefix: str = "tessera:ratelimit:") -> RateLimiter:
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryRateLimiter()
    if scheme in ("redis", "rediss", "unix"):
        return RedisRateLimiter(url, prefix=redis_prefix)
    raise TesseraError(ErrorCode.INVALID_REQUEST,
                       f"{STORE_ENV}: unsupported rate-limit store {scheme!r} "
                       "(memory:// or redis://)")


class RateLimited(TesseraError):
    """``rate_limited``, answered 429 with the ``Retry-After`` in :attr:`headers`."""

    def __init__(self, detail: str, retry_after: float) -> None:
        super().__init__(ErrorCode.RATE_LIMITED, detail)
        self.retry_after = retry_after
        # RFC 9110 §10.2.3: whole seconds; never 0, or a client retries at once.
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_after)))}

    def __reduce__(self) -> Any:
        return (type(self), (self.detail, self.retry_after))


class OpenSlots:
    """At most ``per_key`` things open at once per key and ``total`` in this process.

    For responses that stay open (event streams): a rate limit bounds how
    fast they are opened, this bounds how many are held. :meth:`acquire`
    returns the release function, to call exactly once when the thing closes.
    """

    def __init__(self, *, per_key: int, total: int, retry_after: float = 5.0) -> None:
        if per_key < 1 or total < 1:
            raise TesseraError(ErrorCode.MALFORMED, "open-slot bounds must be at least 1")
        self.per_key = per_key
        self.total = total
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}
        self._count = 0

    def open(self, key: str | None = None) -> int:
        """How many are open (for ``key``, or in all)."""
        with self._lock:
            return self._count if key is None else self._open.get(key, 0)

    def acquire(self, key: str, what: str) -> Callable[[], None]:
        with self._lock:
            held = self._open.get(key, 0)
            if held >= self.per_key:
                raise RateLimited(f"{held} {what} already open for this client "
                                  f"(at most {self.per_key}); close one or retry later",
                                  self.retry_after)
            if self._count >= self.total:
                raise RateLimited(f"this server holds {self._count} {what} (at most "
                                  f"{self.total}); retry later", self.retry_after)
            self._open[key] = held + 1
            self._count += 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                self._count -= 1
                left = self._open[key] - 1
                if left:
                    self._open[key] = left
                else:
                    del self._open[key]

        return release


def client_key(scope: Mapping[str, Any]) -> str:
    """Who is asking: the peer address; an IPv6 peer by its /64 network."""
    client = scope.get("client")
    host = str(client[0]) if client else "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:100]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


_ASGIReceive = Callable[[], Any]
_ASGISend = Callable[[MutableMapping[str, Any]], Any]


class RateLimits:
    """ASGI middleware: refuse a client over a rule's limit with 429 and ``Retry-After``."""

    def __init__(self, app: Any, *, rules: Sequence[RateRule],
                 config: RateLimitConfig | None = None, limiter: RateLimiter | None = None,
                 customize: ProblemCustomizer | None = None) -> None:
        self.app = app
        config = config or RateLimitConfig()
        self.limits = config.limits(rules)
        self.limiter = limiter if limiter is not None else (
            rate_limiter_from_url(config.store_url) if self.limits else MemoryRateLimiter())
        self.customize = customize

    async def __call__(self, scope: MutableMapping[str, Any], receive: _ASGIReceive,
                       send: _ASGISend) -> None:
        if scope["type"] == "http" and self.limits:
            method, path = scope.get("method", ""), scope.get("path", "")
            for rule, limit in self.limits:
                if rule.matches(method, path):
                    wait = await self.limiter.acquire(f"{rule.name}:{client_key(scope)}",
                                                      limit)
                    if wait > 0:
                        await self._refuse(scope, receive, send, rule, limit, wait)
                        return
                    break
        await self.app(scope, receive, send)

    async def _refuse(self, scope: MutableMapping[str, Any], receive: _ASGIReceive,
                      send: _ASGISend, rule: RateRule, limit: Limit, wait: float) -> None:
        error = TesseraError(ErrorCode.RATE_LIMITED,
                             f"more than {limit} requests to {rule.name} from this client; "
                             "retry later")
        request = Request(scope)
        setattr(request.state, ERROR_CODE_STATE, error.code.value)  # for logs and metrics
        custom = self.customize(request, error) if self.customize else None
        _status, extra = custom if custom is not None else (None, {})
        # RFC 9110 §10.2.3: whole seconds; never 0, or a client retries at once.
        retry_after = str(max(1, math.ceil(wait)))
        await problem_response(error, status=429, extra=extra,
                               headers={"Retry-After": retry_after})(scope, receive, send)
