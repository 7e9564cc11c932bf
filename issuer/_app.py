"""The issuer service: FastAPI application factory, dependencies and the one error handler.

Every error leaves as an RFC 9457 problem document
(``application/problem+json``) carrying the stable ``code`` of
:class:`tessera.errors.ErrorCode`. One function renders them all: Tessera's
own errors, FastAPI's request validation (``invalid_request``), Starlette's
routing errors (unknown path, wrong method) and, last, anything unexpected
(``internal_error``, with no detail leaked).
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Annotated, Any, Final

import httpx
from fastapi import Depends, FastAPI, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.engine import Engine
from sqlmodel import Session

from issuer._admin import authenticate
from issuer._db import make_engine, read_scope, session_scope
from issuer._keystore import KeyStore, SqlKeyStore
from issuer._models import Brand
from issuer._settings import Settings
from issuer._status_lists import StatusPublisher
from tessera.did import Resolver
from tessera.errors import ErrorCode, TesseraError
from tessera.ratelimit import Limit, RateLimits, RateRule
from tessera.typing import Clock, NonceStore
from tessera.web import StrictBodies, install_problem_handlers, problem_responses

__all__ = [
    "PROBLEM_RESPONSES",
    "AppState",
    "BrandDep",
    "IdempotencyKey",
    "NowDep",
    "OAuthError",
    "ReadSessionDep",
    "SessionDep",
    "StateDep",
    "create_app",
    "oauth_errors",
    "oauth_responses",
]

_log = logging.getLogger("tessera.issuer")

PROBLEM_RESPONSES: Final = problem_responses({
    401: "missing or invalid API key", 404: "not found", 409: "conflict",
    422: "invalid request", 503: "database unreachable or not migrated"})


class OAuthError(BaseModel):
    """An OAuth error response (RFC 6749 §5.2), ``application/json``; it also keeps the
    problem document's members and Tessera's ``code``."""

    error: str
    error_description: str
    code: ErrorCode


def oauth_responses(described: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries of an OpenID4VCI endpoint: OAuth errors, ``application/json``."""
    return {status: {"model": OAuthError, "description": text}
            for status, text in described.items()}


# OAuth error members for the OpenID4VCI endpoints, per endpoint kind: the
# problem document keeps Tessera's ``code`` and gains the ``error`` a wallet
# expects (RFC 6749 §5.2 for the token endpoint; OpenID4VCI §8.3.1.2 and
# RFC 6750 §3.1 for the credential and nonce endpoints), with its status.
OAUTH_ERRORS: Final[dict[str, tuple[tuple[str, int], dict[ErrorCode, tuple[str, int]]]]] = {
    "token": (("invalid_request", 400), {
        ErrorCode.UNSUPPORTED_FORMAT: ("unsupported_grant_type", 400),
        ErrorCode.NOT_FOUND: ("invalid_grant", 400),
        ErrorCode.REPLAYED: ("invalid_grant", 400),
        ErrorCode.EXPIRED: ("invalid_grant", 400),
        ErrorCode.FORBIDDEN: ("invalid_grant", 400),  # wrong tx_code (§6.3)
        ErrorCode.CREDENTIAL_TYPE_NOT_ALLOWED: ("invalid_scope", 400),  # RFC 6749 §6
        # OAuth has no rate-limit error; RFC 6749 §4.1.2.1's "temporary
        # overloading" is the nearest, and the 429's Retry-After says when.
        ErrorCode.RATE_LIMITED: ("temporarily_unavailable", 429),
        ErrorCode.INTERNAL_ERROR: ("server_error", 500),
    }),
    "credential": (("invalid_credential_request", 400), {
        ErrorCode.UNAUTHORIZED: ("invalid_token", 401),
        ErrorCode.FORBIDDEN: ("insufficient_scope", 403),
        ErrorCode.NOT_FOUND: ("unknown_credential_configuration", 400),
        ErrorCode.KEY_BINDING_INVALID: ("invalid_proof", 400),
        ErrorCode.NONCE_MISMATCH: ("invalid_nonce", 400),
        ErrorCode.CONFLICT: ("credential_request_denied", 400),
        ErrorCode.RATE_LIMITED: ("temporarily_unavailable", 429),
        ErrorCode.INTERNAL_ERROR: ("server_error", 500),
    }),
}


def oauth_errors(kind: str) -> Callable[[Request], Awaitable[None]]:
    """A route dependency: errors on this route also carry an OAuth ``error`` member."""
    if kind not in OAUTH_ERRORS:
        raise ValueError(kind)

    # async: FastAPI runs a plain ``def`` dependency on the thread pool, one hop per
    # request for a line of work (see _state).
    async def mark(request: Request) -> None:
        request.state.oauth_errors = kind

    return mark


_OAUTH_PATHS: Final = re.compile(r"^/brands/[^/]+/(token|nonce|credential)$")

# The unauthenticated OpenID4VCI endpoints, per client (docs/configuration.md):
# a wallet calls each once or twice per credential, so 120 a minute leaves room
# for many members behind one address (a shop's Wi-Fi, carrier NAT).
RATE_RULES: Final = (
    RateRule("token", "POST", r"/brands/[^/]+/token", Limit(120, 60)),
    RateRule("nonce", "POST", r"/brands/[^/]+/nonce", Limit(120, 60)),
)


def _oauth_problem(request: Request, error: TesseraError
                   ) -> tuple[int | None, dict[str, Any]] | None:
    """On the OpenID4VCI routes, problems also carry the OAuth ``error`` a wallet expects."""
    kind = getattr(request.state, "oauth_errors", None)
    if kind is None:
        # Refused before routing (a body that is not strict JSON): go by the path.
        match = _OAUTH_PATHS.match(request.scope.get("path", ""))
        kind = ((match.group(1) == "token" and "token") or "credential") if match else None
    if kind is None:
        return None
    default, table = OAUTH_ERRORS[kind]
    oauth_error, status = table.get(error.code, default)
    return status, {"error": oauth_error, "error_description": error.detail}


# -- state and dependencies ------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    keystore: KeyStore
    resolver: Resolver
    nonces: NonceStore
    clock: Clock = field(default=_utc_now)
    status_publisher: StatusPublisher = field(default_factory=StatusPublisher)
    witness_http: httpx.Client | None = None
    """How checkpoints reach the C2SP witnesses (``TESSERA_WITNESSES``); made on first use."""

    def witnesses(self) -> httpx.Client:
        if self.witness_http is None:
            # A witness answers in milliseconds; a slow one must not hold a request long.
            self.witness_http = httpx.Client(timeout=5.0, follow_redirects=False)
        return self.witness_http


# The trivial dependencies are ``async def``: FastAPI runs a plain ``def`` one on its
# thread pool, and under the issuance load those hops (up to four per credential
# request before the route ran) were most of the server's anyio time (bench/README.md).
# Whatever reads the database stays ``def`` (_session, _read_session, _brand).
async def _state(request: Request) -> AppState:
    state: AppState = request.app.state.tessera
    return state


StateDep = Annotated[AppState, Depends(_state)]


def _session(state: StateDep) -> Iterator[Session]:
    with session_scope(state.engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(_session)]


def _read_session(state: StateDep) -> Iterator[Session]:
    with read_scope(state.engine) as session:
        yield session


ReadSessionDep = Annotated[Session, Depends(_read_session)]
"""For routes that only read: no write lock on SQLite (see :func:`issuer._db.read_scope`)."""


async def _now(state: StateDep) -> datetime:
    return state.clock()  # a clock is a cheap call (datetime.now, a test's fake)


NowDep = Annotated[datetime, Depends(_now)]

# Each bearer scheme has its own name: FastAPI keys schemes by name, so two
# unnamed HTTPBearer would merge into one with the last description.
_bearer = HTTPBearer(auto_error=False, scheme_name="ApiKey",
                     description="a brand API key: `tsk_<id>_<secret>`")


def _brand(state: StateDep,
           credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
           ) -> Brand:
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise TesseraError(ErrorCode.UNAUTHORIZED, "missing or invalid API key")
    with read_scope(state.engine) as session:
        return authenticate(session, token=credentials.credentials)


BrandDep = Annotated[Brand, Depends(_brand)]

IdempotencyKey = Annotated[str, Header(
    alias="Idempotency-Key", min_length=1, max_length=255,
    description="the partner's transaction id: the same key applies once and replays "
                "the first response; reused with a different request it is a conflict")]


# -- body size cap ------------------------------------------------------------------------------

_ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[MutableMapping[str, Any]]],
                     Callable[[MutableMapping[str, Any]], Awaitable[None]]], Awaitable[None]]


# -- readiness --------------------------------------------------------------------------------


def _readiness_checks(state: AppState) -> dict[str, Callable[[], str]]:
    """What ``/readyz`` checks (tessera.health): each is what a request would need."""
    from issuer.migrations import require_current
    from tessera.health import unavailable

    def database() -> str:
        return f"schema {require_current(state.engine)}"

    def keys() -> str:
        # The master key must open the brand keys: a wrong TESSERA_MASTER_KEY
        # otherwise shows up only at the first issuance.
        from sqlmodel import col, select

        with session_scope(state.engine) as session:
            brand = session.exec(select(Brand).order_by(col(Brand.created_at)).limit(1)).first()
            if brand is None:
                return "no brands yet"
            state.keystore.signer(session, brand_id=brand.id, did=brand.did)
        return "the master key opens the brand keys"

    def nonce_store() -> str:
        try:  # a round trip: consuming a value nobody issued changes nothing
            state.nonces.consume(f"readyz:{secrets.token_hex(8)}")
        except Exception as exc:
            raise unavailable("the nonce store", exc) from None
        return "ok"

    return {"database": database, "keys": keys, "nonce_store": nonce_store}


# -- metrics computed at scrape time ------------------------------------------------------------


def _log_metrics(state: AppState) -> Iterator[Any]:
    """Each brand's transparency log: size, pending leaves and the age of the oldest,
    leaves not yet under a signed head, head age.

    Ledger writes queue their leaves (``log_pending``); the sequencer integrates
    them within the 1 s maximum merge delay and signs a head per batch, so the
    oldest pending leaf's age is the merge delay to alert on. Read from the
    database, so every worker answers the same.
    """
    from prometheus_client.core import GaugeMetricFamily
    from sqlmodel import col, func, select

    from issuer._log_models import PendingLeaf, TransparencyLog, TreeHead

    size = GaugeMetricFamily("tessera_translog_size", "Leaves in the brand's transparency log",
                             labels=["brand"])
    pending = GaugeMetricFamily(
        "tessera_translog_pending_leaves",
        "Leaves written and promised but not yet integrated into the tree", labels=["brand"])
    delay = GaugeMetricFamily(
        "tessera_translog_pending_age_seconds",
        "Age of the oldest pending leaf (the merge delay; promised at most 1 s)",
        labels=["brand"])
    unsigned = GaugeMetricFamily(
        "tessera_translog_unsigned_leaves",
        "Leaves not yet covered by a signed tree head (the log's lag, in leaves)",
        labels=["brand"])
    age = GaugeMetricFamily("tessera_translog_head_age_seconds",
                            "Seconds since the brand's latest signed tree head was signed",
                            labels=["brand"])
    with read_scope(state.engine) as session:
        logs = session.exec(select(Brand.slug, TransparencyLog.size).join(
            TransparencyLog, col(TransparencyLog.brand_id) == col(Brand.id))).all()
        heads = {slug: (signed, at) for slug, signed, at in session.exec(
            select(Brand.slug, func.max(TreeHead.tree_size), func.max(TreeHead.signed_at))
            .join(TreeHead, col(TreeHead.brand_id) == col(Brand.id))
            .group_by(col(Brand.slug))).all()}
        queued = {slug: (int(n), at) for slug, n, at in session.exec(
            select(Brand.slug, func.count(), func.min(PendingLeaf.created_at))
            .join(PendingLeaf, col(PendingLeaf.brand_id) == col(Brand.id))
            .group_by(col(Brand.slug))).all()}
    now = state.clock()

    def aware(at: datetime) -> datetime:
        return at if at.tzinfo else at.replace(tzinfo=UTC)

    for slug, leaves in logs:
        size.add_metric([slug], float(leaves))
        waiting, oldest = queued.get(slug, (0, None))
        pending.add_metric([slug], float(waiting))
        delay.add_metric([slug], max((now - aware(oldest)).total_seconds(), 0.0)
                         if oldest is not None else 0.0)
        signed, at = heads.get(slug, (0, None))
        unsigned.add_metric([slug], float(leaves - (signed or 0)))
        if at is not None:
            age.add_metric([slug], max((now - aware(at)).total_seconds(), 0.0))
    yield from (size, pending, delay, unsigned, age)


def _witness_batch(state: AppState, brand_id: str) -> None:
    """Each new batch head goes to the brand's witnesses (``TESSERA_WITNESSES``)."""
    if state.settings.witnesses:
        from issuer._witnessing import witness_brand

        witness_brand(state.engine, settings=state.settings, keystore=state.keystore,
                      http=state.witnesses(), brand_id=brand_id)


# -- factory ------------------------------------------------------------------------------------


def create_app(settings: Settings, *, engine: Engine | None = None,
               keystore: KeyStore | None = None, resolver: Resolver | None = None,
               clock: Clock | None = None, nonces: NonceStore | None = None,
               witness_http: httpx.Client | None = None) -> FastAPI:
    """Build the service. The schema must already be migrated (``tessera issuer migrate``).

    ``nonces`` holds OpenID4VCI c_nonces; by default the ``tessera_nonce``
    table of the service database (so every worker shares it); a
    :class:`tessera.nonces.RedisNonceStore` fits as well.
    """
    from issuer._routes_admin import router as admin_router
    from issuer._routes_log import router as log_router
    from issuer._routes_oid4vci import router as oid4vci_router
    from issuer._routes_public import router as public_router
    from issuer._routes_redeem import router as redeem_router
    from tessera.health import health_router
    from tessera.nonces import SqlNonceStore
    from tessera.observability import install_observability, instrument_pool

    engine = engine or make_engine(settings.database_url)
    clock = clock or _utc_now

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One sequencer per worker process (issuer._translog: they never integrate
        # the same brand at once); stopped before the engine goes away.
        from issuer._translog import Sequencer

        sequencer = None
        # An in-memory SQLite database is one shared connection (StaticPool): a
        # background thread must not open transactions on it beside the requests.
        memory = engine.dialect.name == "sqlite" and engine.url.database in (None, "",
                                                                            ":memory:")
        if settings.log_sequencer_interval > 0 and not memory:
            state: AppState = app.state.tessera
            sequencer = Sequencer(engine, keystore=state.keystore, clock=clock,
                                  interval=settings.log_sequencer_interval,
                                  after_batch=partial(_witness_batch, state))
            sequencer.start()
        # A SQLite file's WAL checkpoints on a thread of this worker, not inside
        # whichever request's commit crosses SQLite's threshold while holding the
        # write gate (tessera.sqlite.Checkpointer, bench/README.md session 7).
        checkpointer = None
        if engine.dialect.name == "sqlite" and not memory:
            from tessera.sqlite import start_checkpointer

            checkpointer = start_checkpointer(str(engine.url.database))
        try:
            yield
        finally:
            if sequencer is not None:
                sequencer.stop()
            if checkpointer is not None:
                from tessera.sqlite import stop_checkpointer

                stop_checkpointer(checkpointer)

    app = FastAPI(
        lifespan=lifespan,
        title="Tessera issuer",
        version="0.1.0",
        description="Brands, programs, tiers, members and the points ledger; OpenID4VCI "
                    "issuance and status lists. Every error is RFC 9457 "
                    "`application/problem+json` with a stable `code`, except on the "
                    "OpenID4VCI token, nonce and credential endpoints: there errors are "
                    "`application/json` with the OAuth `error` and `error_description` "
                    "(RFC 6749 §5.2, OpenID4VCI 1.0 §8.3.1.2).",
    )
    app.state.tessera = AppState(
        settings=settings,
        engine=engine,
        keystore=keystore or SqlKeyStore(settings.master_key),
        # Member DIDs are did:key / did:jwk (resolved locally); a did:web
        # member needs an operator-configured fetcher.
        resolver=resolver or Resolver(),
        # c_nonce writes need not wait for the disk: the credential commit that
        # consumes one is durable and makes the consumption durable with it.
        nonces=nonces if nonces is not None else SqlNonceStore(
            engine, clock=clock, create_table=False, durable_commits=False),
        clock=clock,
        witness_http=witness_http,
    )
    install_problem_handlers(app, customize=_oauth_problem)
    app.add_middleware(StrictBodies, max_bytes=settings.max_body_bytes,
                       customize=_oauth_problem)
    app.include_router(health_router(_readiness_checks(app.state.tessera)))
    # Added last, so it runs first: a client over its limit costs no body parsing.
    app.add_middleware(RateLimits, rules=RATE_RULES, config=settings.rate_limits,
                       customize=_oauth_problem)
    instrument_pool(engine, "issuer")
    install_observability(app, service="issuer",
                          collectors=[partial(_log_metrics, app.state.tessera)])
    # Hot paths first: routing tries routes in order until one matches, and with
    # the OpenID4VCI router last every token, nonce and credential request was
    # matched against the 50 routes before it first (~12 % of the issuer's samples
    # under the issuance load, bench/README.md). No two routers share a method
    # and path (tests/issuer/test_db.py), so the order changes nothing else.
    routers = (oid4vci_router, redeem_router, public_router, log_router, admin_router)
    for router in routers:
        # Sorted in place: the routers are module-level, and a second app finds them
        # sorted already (a stable sort on the same key changes nothing).
        router.routes.sort(key=lambda route: not _is_hot(route))
        app.include_router(router)
    _service_routes_first(app, routers)
    return app


HOT_ROUTES: Final = frozenset({
    ("POST", "/brands/{slug}/token"), ("POST", "/brands/{slug}/nonce"),
    ("POST", "/brands/{slug}/credential"), ("POST", "/brands/{slug}/redemptions"),
    ("POST", "/brands/{slug}/redemptions/{redemption_id}/capture"),
})
"""The requests of the hot paths (an issuance's three, a redemption's hold and capture),
tried first by the router. Each route tried before the matching one costs a request
~40 Python calls on the event loop (FastAPI 0.165's matching): a hold was tried against
26 routes and a capture against 28 (FastAPI's docs, health, ``/metrics``, the
OpenID4VCI router, the partner admin routes), ~1,270 of the 4,150 calls per hold +
capture outside the routes (bench/README.md "Two instances vs two workers (session 6)")."""


def _is_hot(route: Any) -> bool:
    methods = getattr(route, "methods", None) or ()
    return any((method, getattr(route, "path", "")) in HOT_ROUTES for method in methods)


def _service_routes_first(app: FastAPI, routers: tuple[Any, ...]) -> None:
    """The service's routers before FastAPI's docs, the health routes and ``/metrics``
    (added first, asked least). Before the app serves anything: FastAPI builds its
    matching tables from this list on the first request."""
    def rank(route: Any) -> int:
        inner = getattr(route, "original_router", None)  # FastAPI's included router
        return routers.index(inner) if inner in routers else len(routers)

    app.router.routes.sort(key=rank)
