"""The verifier service: OpenID4VP requests, direct_post responses, results for the till.

Imported only by ``tessera verifier serve`` and tests: ``import verifier``
never loads FastAPI. Routes:

* ``GET /``: the checkout page (``/checkout.js``, ``/checkout.css``);
* ``GET /policies``: what the cashier can ask (till key);
* ``POST /requests`` (till key): a policy (or a DCQL query) -> request id,
  request URI, deep link, QR code (``/requests/{id}/qr.png``, till key);
* ``GET /r/{id}``: the ``request_uri`` endpoint (short: it is in the QR
  code). It answers once: a second fetch means a second device read the QR
  code, so the checkout is cancelled rather than raced;
* ``GET /.well-known/did.json`` (``/did.json`` when the base URL has a path):
  the verifier's did:web document, the key wallets check request objects with;
* ``POST /response``: the response endpoint, ``direct_post`` (§8.2) or
  ``direct_post.jwt`` (§8.3, a JWE found by its ``kid``, decrypted with the
  request's own key);
* ``GET /requests/{id}/result`` (polling) and ``/requests/{id}/events`` (SSE),
  with the key of the till that created the request.

Only the request object and the response endpoint are public: the request id
travels in the QR code, so anyone who photographs the till's screen knows it.
Creating a request (which the partner's key signs, with a purpose the wallet
shows as the partner's) and reading what a member disclosed need a till key
(:mod:`verifier._tills`), and a request's QR code, result and events are
answered only to the till that created it.

State lives in a session store and in the nonce store (single-use steps),
both selected by one URL: SQLite by default, PostgreSQL, or Redis for many
instances. Every error is an RFC 9457 problem document from one handler.

Several worker processes (``tessera verifier serve --workers N``) build the
app with :func:`app_from_env`, an import-string factory that reads
``TESSERA_VERIFIER_*`` variables; they share one verifier key, read from a key
file (:func:`load_or_create_key`), and one SQL or Redis store.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import Field

from tessera import jsonld
from tessera.credentials import MEMBERSHIP, POINTS
from tessera.dcql import claims_query
from tessera.devmode import dev_fetcher, dev_origins
from tessera.did import (
    DEFAULT_FETCH_BUDGET,
    ENV_FETCH_BUDGET,
    Resolver,
    did_document,
    did_jwk,
    did_key,
    did_web,
    fetch_budget_seconds,
)
from tessera.encoding import b64url_decode, b64url_encode, parse_json, parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.files import write_private
from tessera.health import Check, health_router, unavailable
from tessera.keys import LocalSigner, generate_signer, seal, signer_from_jwk, unseal
from tessera.nonces import RedisNonceStore, nonce_store_from_url
from tessera.observability import (
    configure_logging,
    count_outcome,
    install_observability,
    instrument_pool,
    set_outcome,
)
from tessera.ratelimit import Limit, OpenSlots, RateLimitConfig, RateLimits, RateRule
from tessera.typing import DIDResolver, Signer
from tessera.web import (
    PNG_CONTENT,
    PngResponse,
    StrictBodies,
    StrictBody,
    install_problem_handlers,
    problem_response,
    problem_responses,
)
from verifier._checkout_page import (
    CHECKOUT_CSS,
    CHECKOUT_HTML,
    CHECKOUT_JS,
    PAGE_HEADERS,
)
from verifier._openid4vp import (
    PREFIX_DID,
    PREFIX_REDIRECT_URI,
    RESPONSE_MODES,
    AuthorizationRequest,
    EncryptedResponse,
    OpenID4VPVerifier,
    decrypt_response,
    parse_authorization_response,
)
from verifier._sdk import VerificationResult, Verifier
from verifier._sessions import RedisSessionStore, SessionStore, session_store_from_url
from verifier._status import StatusCheck, default_status_check
from verifier._tills import TillKeys
from verifier._trust import TrustList
from verifier._vcapi import vcapi_verifier_router
from verifier.errors import DESCRIPTIONS

if TYPE_CHECKING:
    import redis
    import segno

__all__ = [
    "DEFAULT_POLICIES",
    "Policy",
    "ServiceSettings",
    "app_from_env",
    "create_app",
    "load_or_create_key",
    "settings_from_env",
    "verifier_did",
]

_log = logging.getLogger("tessera.verifier")

REASONS: Final[dict[str, str]] = {
    **{code.value: text for code, text in DESCRIPTIONS.items()},
    ErrorCode.CONSENT_DENIED.value: "The member declined to share.",
    ErrorCode.INVALID_REQUEST.value: "The wallet's answer does not fit the request.",
    ErrorCode.REPLAYED.value: "This answer was already used, or the request was opened on a "
    "second device. Start a new checkout.",
    ErrorCode.DISCLOSURE_MISMATCH.value: "The answer does not match what was asked: a required "
    "claim is missing, or claims that were not asked for were sent.",
    ErrorCode.EXPIRED.value: "The request or the credential has expired.",
}


@dataclass(frozen=True)
class Policy:
    """Something a cashier can ask for: a DCQL query and why."""

    id: str
    label: str
    purpose: str
    dcql: dict[str, Any]


DEFAULT_POLICIES: Final[tuple[Policy, ...]] = (
    Policy("gold-10", "Gold or better gets 10% off",
           "Apply the 10% discount for Gold members or better",
           {"credentials": [claims_query("membership", MEMBERSHIP.vct, ["tier_at_least_gold"],
                                         require_true=True)]}),
    Policy("points-1000", "Points: at least 1000",
           "Check that at least 1000 points can be redeemed",
           {"credentials": [claims_query("points", POINTS.vct, ["points_at_least_1000"],
                                         require_true=True)]}),
)


def verifier_did(signer: Signer, method: str = "jwk", *, base_url: str = "") -> str:
    """The verifier's DID: ``web`` names ``base_url`` (the service then serves its
    document), ``jwk`` and ``key`` embed the key (no document, but a long client_id)."""
    if method == "web":
        return did_web(base_url)
    return did_jwk(signer.public_key) if method == "jwk" else did_key(signer.public_key)


@dataclass
class ServiceSettings:
    """``signer`` is the verifier's key; its ``key_id`` must be a DID URL of its DID
    (see :func:`verifier_did`). ``store_url`` serves both the nonce and session stores."""

    base_url: str
    trust: TrustList
    signer: Signer | None = None
    client_id_prefix: str = PREFIX_DID
    client_name: str = "Partner checkout"
    contacts: tuple[str, ...] = ()
    store_url: str = "sqlite:///tessera-verifier.db"
    request_ttl_seconds: int = 300
    result_ttl_seconds: int = 900
    policies: tuple[Policy, ...] = DEFAULT_POLICIES
    resolver: DIDResolver | None = None
    status_check: StatusCheck | None = None
    sse_interval_seconds: float = 0.25
    # Where shared state lives inside the store (SQL tables, Redis key prefix).
    nonce_table: str = "tessera_verifier_nonce"
    session_table: str = "tessera_verifier_session"
    redis_prefix: str = "tessera:verifier:"
    # What a request asks for unless POST /requests says otherwise.
    response_mode: str = "direct_post"
    # The tills allowed to create requests and read results; None: no till is.
    tills: TillKeys | None = None
    # JSON-LD contexts for Data Integrity (bundled ones when None) and whether
    # a credential's proof key must belong to its issuer (docs/data-integrity.md).
    loader: jsonld.DocumentLoader | None = None
    issuer_must_control_key: bool = True
    # Per-client limits on request creation and event streams (TESSERA_RATE_LIMITS).
    rate_limits: RateLimitConfig = field(default_factory=RateLimitConfig)
    # Event streams open at once, per till key and in this process (docs/verifier-service.md).
    max_streams_per_till: int = 8
    max_streams: int = 256
    # Seconds one verification may spend fetching DID documents and status
    # lists, all fetches together (TESSERA_FETCH_BUDGET; tessera.did.fetch_budget).
    fetch_budget_seconds: float = DEFAULT_FETCH_BUDGET


class CreateRequest(StrictBody):
    policy: str | None = Field(default=None, max_length=64)
    dcql: dict[str, Any] | None = None
    purpose: str = Field(default="", max_length=500)
    transaction_data: list[str] | None = Field(default=None, max_length=8)
    response_mode: Literal["direct_post", "direct_post.jwt"] | None = None


def request_id_of(state: str) -> str:
    """A checkout's request id: 96 bits of SHA-256 over its ``state``, base64url.

    The request id is public (it is in the QR code's request URI); the state
    is not (it is in the signed request object, which only the first fetch
    gets, and a response must carry it). A one-way function of the state
    gives an id as unguessable as a random one (the state has 128 random
    bits; guessing an id only lets its checkout be cancelled), 16 characters
    in the QR code, that reveals nothing of the state, and lets the response
    endpoint find the checkout from the state without a stored pointer: one
    write and one read fewer per checkout (bench/README.md).
    """
    digest = hashlib.sha256(b"tessera checkout request id\x00" + state.encode("utf-8",
                                                                             "surrogatepass"))
    return b64url_encode(digest.digest()[:12])


class CheckoutService:
    """The state machine behind the routes; usable without HTTP in tests."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        base = settings.base_url.rstrip("/")
        self.base_url = base
        self.nonces = nonce_store_from_url(
            settings.store_url, table_name=settings.nonce_table,
            redis_prefix=settings.redis_prefix + "nonce:",
        )
        self.sessions: SessionStore
        # On Redis both stores share one client, and a step's independent commands
        # go in one pipeline: one round trip instead of two or three (bench/README.md,
        # "Checkout, per-request cost (session 5)").
        self._redis: tuple[RedisNonceStore, RedisSessionStore] | None = None
        if isinstance(self.nonces, RedisNonceStore):
            sessions = RedisSessionStore(self.nonces.client,
                                         prefix=settings.redis_prefix + "session:")
            self.sessions, self._redis = sessions, (self.nonces, sessions)
        else:
            self.sessions = session_store_from_url(
                settings.store_url, table_name=settings.session_table,
                redis_prefix=settings.redis_prefix + "session:",
            )
        self.streams = OpenSlots(per_key=settings.max_streams_per_till,
                                 total=settings.max_streams)
        self.verifier = Verifier(
            trust=settings.trust, resolver=settings.resolver, status_check=settings.status_check,
            nonces=self.nonces, request_ttl=timedelta(seconds=settings.request_ttl_seconds),
            loader=settings.loader, issuer_must_control_key=settings.issuer_must_control_key,
            fetch_budget=timedelta(seconds=settings.fetch_budget_seconds),
        )
        response_uri = f"{base}/response"
        if settings.client_id_prefix == PREFIX_DID:
            if settings.signer is None or not settings.signer.key_id:
                raise TesseraError(ErrorCode.INVALID_REQUEST,
                                   "a decentralized_identifier verifier needs a signer with a kid")
            client_id = f"{PREFIX_DID}:{settings.signer.key_id.split('#', 1)[0]}"
        elif settings.client_id_prefix == PREFIX_REDIRECT_URI:
            client_id = f"{PREFIX_REDIRECT_URI}:{response_uri}"
        else:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "unsupported client_id prefix")
        self.oid4vp = OpenID4VPVerifier(
            self.verifier, client_id=client_id, response_uri=response_uri,
            signer=settings.signer, client_name=settings.client_name,
            contacts=settings.contacts,
        )
        self.policies = {p.id: p for p in settings.policies}
        self.tills = settings.tills if settings.tills is not None else TillKeys()
        # A did:web naming this service's own base URL is published here; any
        # other DID is resolved by wallets from wherever it lives.
        self.did_document: dict[str, Any] | None = None
        signer = settings.signer
        if (self.oid4vp.prefix == PREFIX_DID and signer is not None and signer.key_id
                and signer.key_id.split("#", 1)[0] == did_web(base)):
            self.did_document = did_document(did_web(base), [(signer.key_id, signer.public_key)])
        self.did_document_path = (
            "/did.json" if urllib.parse.urlsplit(base).path.strip("/") else "/.well-known/did.json"
        )

    def request_uri(self, request_id: str) -> str:
        # Short, because it is in the QR code: every character costs modules.
        return f"{self.base_url}/r/{request_id}"

    # -- sessions ---------------------------------------------------------------
    def _save(self, session: dict[str, Any],
              pipeline: redis.client.Pipeline | None = None) -> None:
        session["version"] = int(session.get("version", 0)) + 1
        ttl = max(self.settings.request_ttl_seconds, self.settings.result_ttl_seconds)
        if pipeline is not None and self._redis is not None:
            self._redis[1].queue_put(pipeline, f"session:{session['id']}", session,
                                     ttl_seconds=ttl)
        else:
            self.sessions.put(f"session:{session['id']}", session, ttl_seconds=ttl)

    def _start(self, pointers: Mapping[str, dict[str, Any]],
               issues: Mapping[str, dict[str, Any] | None], session: dict[str, Any]) -> None:
        """A new checkout's writes: session pointers, single-use steps, then the session.

        On Redis in one pipeline: a step whose nonce was live already (its
        ``SET NX`` refused) is ``conflict`` as :meth:`NonceStore.issue` makes it,
        after the session was written under its new id (a checkout the till is
        never shown, which expires).
        """
        ttl = self.settings.request_ttl_seconds
        if self._redis is None:
            for key, pointer in pointers.items():
                self.sessions.put(key, pointer, ttl_seconds=ttl)
            for value, data in issues.items():
                self.nonces.issue(value, ttl_seconds=ttl, data=data)
            self._save(session)
            return
        nonces, sessions = self._redis
        pipeline = nonces.client.pipeline(transaction=False)
        for key, pointer in pointers.items():
            sessions.queue_put(pipeline, key, pointer, ttl_seconds=ttl)
        for value, data in issues.items():
            nonces.queue_issue(pipeline, value, ttl_seconds=ttl, data=data)
        self._save(session, pipeline)
        replies = pipeline.execute()
        if not all(replies[len(pointers):len(pointers) + len(issues)]):
            raise TesseraError(ErrorCode.CONFLICT, "nonce already issued")

    def _session_and_take(self, request_id: str, step: str) -> tuple[dict[str, Any], bool]:
        """A request's session (``not_found`` if none) and whether its single-use ``step``
        was taken now; on Redis, both in one round trip."""
        if self._redis is None or len(request_id) > 64:
            return self.session(request_id), self.nonces.consume(step) is not None
        nonces, sessions = self._redis
        pipeline = nonces.client.pipeline(transaction=False)
        sessions.queue_get(pipeline, f"session:{request_id}")
        queued = nonces.queue_take(pipeline, step)
        replies = pipeline.execute()
        found = sessions.loaded(replies[0])
        if found is None:
            raise TesseraError(ErrorCode.NOT_FOUND, "no such checkout request (or it expired)")
        return found, queued and bool(replies[1])

    def session(self, request_id: str, *, till: str | None = None) -> dict[str, Any]:
        """The session of a request; with ``till``, only if that till created it.

        Another till's request is ``not_found``, as an unknown one: a till
        learns nothing about requests it did not make.
        """
        found = self.sessions.get(f"session:{request_id}") if len(request_id) <= 64 else None
        if found is None or (till is not None and found.get("till") != till):
            raise TesseraError(ErrorCode.NOT_FOUND, "no such checkout request (or it expired)")
        return found

    @staticmethod
    def public_view(session: Mapping[str, Any]) -> dict[str, Any]:
        return {k: session.get(k) for k in ("id", "status", "policy", "label", "purpose",
                                            "result", "version", "expires_at")}

    # -- steps --------------------------------------------------------------------
    def create(self, body: CreateRequest, *, till: str) -> dict[str, Any]:
        if (body.policy is None) == (body.dcql is None):
            raise TesseraError(ErrorCode.INVALID_REQUEST, "give exactly one of policy or dcql")
        if body.policy is not None:
            policy = self.policies.get(body.policy)
            if policy is None:
                raise TesseraError(ErrorCode.NOT_FOUND, f"no policy {body.policy!r}")
            dcql, purpose, label = policy.dcql, body.purpose or policy.purpose, policy.label
        else:
            assert body.dcql is not None
            dcql, purpose, label = body.dcql, body.purpose, "Custom request"
        request = self.oid4vp.create_request(
            dcql, transaction_data=body.transaction_data, purpose=purpose,
            response_mode=body.response_mode or self.settings.response_mode,
        )
        request_id = request_id_of(request.state)
        pointers: dict[str, dict[str, Any]] = {}
        if request.response_key is not None:
            # The encrypted answer names its key, not its state (§8.3).
            pointers[f"enc:{request.response_key['kid']}"] = {"id": request_id}
        issues: dict[str, dict[str, Any] | None] = {}
        if self.oid4vp.prefix == PREFIX_DID:
            deep_link = request.uri_by_reference(self.request_uri(request_id))
            issues[f"reqobj:{request_id}"] = None
        else:
            deep_link = request.uri_by_value()
        issues[f"resp:{request.state}"] = {"id": request_id}
        session = {
            "id": request_id, "till": till, "status": "pending", "policy": body.policy,
            "label": label,
            "purpose": purpose, "request": request.to_dict(), "deep_link": deep_link,
            "result": None, "expires_at": request.presentation.expires_at.isoformat(),
        }
        self._start(pointers, issues, session)
        return {
            "id": request_id,
            "deep_link": deep_link,
            "request_uri": self.request_uri(request_id)
            if self.oid4vp.prefix == PREFIX_DID else None,
            "qr": f"/requests/{request_id}/qr.png",
            "result": f"/requests/{request_id}/result",
            "events": f"/requests/{request_id}/events",
            "client_id": self.oid4vp.client_id,
            "response_mode": request.response_mode,
            "label": label,
            "purpose": purpose,
            "expires_at": session["expires_at"],
        }

    def _finish(self, session: dict[str, Any], result: VerificationResult) -> None:
        errors = list(result.errors)
        session["status"] = "done"
        session["result"] = {
            **result.to_dict(),
            "reason": " ".join(dict.fromkeys(REASONS.get(e, e) for e in errors)) or None,
        }
        self._save(session)

    def request_object(self, request_id: str) -> str:
        session, taken = self._session_and_take(request_id, f"reqobj:{request_id}")
        if not taken:
            if session.get("status") != "done":
                # A second device read the QR code: cancel rather than race it.
                self.nonces.consume(f"resp:{session['request']['presentation']['state']}")
                self._finish(session, VerificationResult.failure(ErrorCode.REPLAYED))
            raise TesseraError(ErrorCode.REPLAYED,
                               "the request object was already fetched; start a new checkout")
        request = AuthorizationRequest.from_dict(session["request"])
        token = self.oid4vp.request_object(request)
        session["status"] = "fetched"
        self._save(session)
        return token

    def response(self, body: bytes) -> VerificationResult:
        parsed = parse_authorization_response(body)
        if isinstance(parsed, EncryptedResponse):
            pointer = self.sessions.get(f"enc:{parsed.kid}")
            if pointer is None:
                raise TesseraError(ErrorCode.NOT_FOUND,
                                   "no pending request has this encryption key")
            session = self.session(str(pointer["id"]))
            request = AuthorizationRequest.from_dict(session["request"])
            # A JWE that does not open (another key, a flipped byte) is refused
            # without touching the checkout: anyone holding the public key can
            # send one, and the member's real answer must still get through.
            parsed = decrypt_response(parsed, request)
            if parsed.state != request.state:
                raise TesseraError(ErrorCode.INVALID_REQUEST,
                                   "the encrypted response is for another state")
            taken = self.nonces.consume(f"resp:{parsed.state}") is not None
        else:
            if not 0 < len(parsed.state) <= 128:
                raise TesseraError(ErrorCode.NOT_FOUND, "no pending request has this state")
            # The request id follows from the state: no lookup of a pointer.
            session, taken = self._session_and_take(request_id_of(parsed.state),
                                                    f"resp:{parsed.state}")
            request = AuthorizationRequest.from_dict(session["request"])
        if not taken:
            raise TesseraError(ErrorCode.REPLAYED, "this request was already answered")
        result = self.oid4vp.verify_response(parsed, request)
        self._finish(session, result)
        return result


class EventStreamResponse(StreamingResponse):
    """``text/event-stream``; ``on_close`` runs once the response ends, however it ends."""

    media_type = "text/event-stream"
    # Not an __init__ parameter: FastAPI reads the default status from its signature.
    on_close: Callable[[], None] | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()


_RESPONSE_FORM: Final = {"requestBody": {"required": True, "content": {
    "application/x-www-form-urlencoded": {"schema": {
        "type": "object",
        "description": "OpenID4VP 1.0 §8.2 (direct_post: vp_token and state, or error and "
                       "state) or §8.3 (direct_post.jwt: response, a JWE)",
        "properties": {"vp_token": {"type": "string"}, "state": {"type": "string"},
                       "response": {"type": "string"}, "error": {"type": "string"},
                       "error_description": {"type": "string"}}}}}}}


class _TillKey(HTTPBearer):
    """The till key: the OpenAPI security scheme (HTTP bearer ``tillKey``) and its
    check in one dependency, the till's id.

    One rather than a check depending on ``HTTPBearer``: FastAPI solves each
    dependency of a request in Python, and two of a checkout's four requests
    carry the key (bench/README.md, "Checkout, per-request cost (session 5)").
    ``async``: FastAPI runs a plain ``def`` dependency on the thread pool, a hop
    of its own before the route's; the check is a stat of the till file and a
    hash, no I/O that waits ("Servers and drivers (session 4)").
    """

    async def __call__(self, request: Request) -> str:  # type: ignore[override]
        credentials = await super().__call__(request)
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise TesseraError(ErrorCode.UNAUTHORIZED, "missing or invalid till key")
        service: CheckoutService = request.app.state.service
        return service.tills.authenticate(credentials.credentials)


Till = Annotated[str, Depends(_TillKey(
    auto_error=False, scheme_name="tillKey",
    description="a till key, `tvk_<id>_<secret>` (`tessera verifier till create`)"))]
"""The id of the till whose key authenticates the request."""

_TILL_REFUSED: Final = "missing, wrong or revoked till key"
_RATE_LIMITED: Final = "over this client's rate limit: retry after Retry-After seconds"

# Per client (docs/configuration.md). A till creates a request per checkout and
# opens one event stream for it; 120 a minute leaves room for a shop's tills
# behind one address, while a flood is cut to two a second.
RATE_RULES: Final = (
    RateRule("requests", "POST", r"/requests", Limit(120, 60)),
    RateRule("events", "GET", r"/requests/[^/]+/events", Limit(120, 60)),
)
# Another till's request is not found, as an unknown one.
_TILL_NOT_FOUND: Final = problem_responses({
    401: _TILL_REFUSED, 404: "no such checkout request of this till (or it expired)"})


def readiness_checks(service: CheckoutService) -> dict[str, Check]:
    """What ``/readyz`` checks (tessera.health): the store and the key a checkout needs."""
    def store() -> str:
        probe = f"readyz:{secrets.token_hex(8)}"
        try:  # round trips that change nothing: an unknown session, an unissued nonce
            service.sessions.get(probe)
            service.nonces.consume(probe)
        except Exception as exc:
            raise unavailable("the session and nonce store", exc) from None
        return "ok"

    def key() -> str:
        signer = service.settings.signer
        if signer is None:
            return "none (redirect_uri client identifier)"
        signer.public_key.verify(signer.sign(b"readyz"), b"readyz")
        return signer.key_id or "ok"

    def trust() -> str:
        return f"{len(service.settings.trust.issuers)} trusted issuers"

    return {"store": store, "key": key, "trust_list": trust}


def qr_code(deep_link: str) -> segno.QRCode:
    """The till's QR code for a deep link.

    Error correction starts at L and segno raises it (M, Q) whenever that still
    fits the same version: on a till's screen nothing smudges, creases or tears
    the code, which is what the higher levels pay for, while the smallest
    version gives the largest modules at a fixed on-screen size, which is what
    a phone camera at arm's length needs (docs/verifier-service.md has the
    versions).
    """
    import segno

    return segno.make(deep_link, error="l", boost_error=True, micro=False)


def create_app(settings: ServiceSettings) -> FastAPI:
    service = CheckoutService(settings)
    app = FastAPI(
        title="Tessera verifier", version="1.0",
        description="OpenID4VP 1.0 verifier with DCQL and direct_post; a checkout page.",
    )
    app.state.service = service
    install_problem_handlers(app)
    app.add_middleware(StrictBodies)
    # Added last, so it runs first: a client over its limit costs no body parsing.
    app.add_middleware(RateLimits, rules=RATE_RULES, config=settings.rate_limits)
    for name, store in (("sessions", service.sessions), ("nonces", service.nonces)):
        engine = getattr(store, "_engine", None)  # the SQL stores; Redis has no pool here
        if engine is not None:
            instrument_pool(engine, name)
    # The checkout's four steps are added first: the router tries routes in the
    # order they were added, and every other route comes after them. They answer
    # JSONResponse themselves: FastAPI would otherwise validate the dict against
    # ``response_model`` (any object) and encode it through pydantic, the same
    # bytes for more CPU per request; ``response_model`` stays for the OpenAPI
    # (bench/README.md, "Checkout, per-request cost (session 5)").
    @app.post("/requests", status_code=201, response_model=dict[str, Any],
              responses=problem_responses({
                  400: "a DCQL query or transaction data that cannot be used",
                  401: _TILL_REFUSED, 404: "no such policy", 429: _RATE_LIMITED}))
    def create_request(body: CreateRequest, till: Till) -> JSONResponse:
        return JSONResponse(service.create(body, till=till), status_code=201)

    @app.get("/r/{request_id}", response_class=Response, responses={
        **problem_responses({404: "no such checkout request (or it expired)",
                             409: "already fetched: the checkout is cancelled"}),
        200: {"description": "the signed Request Object (OpenID4VP 1.0 §5.2)",
              "content": {"application/oauth-authz-req+jwt": {"schema": {"type": "string"}}}},
    })
    def request_object(request_id: str) -> Response:
        return Response(service.request_object(request_id),
                        media_type="application/oauth-authz-req+jwt",
                        headers={"Cache-Control": "no-store"})

    @app.post("/response", openapi_extra=_RESPONSE_FORM,
              dependencies=[count_outcome("verification")], responses={
        200: {"description": "received (§8.2)",
              "content": {"application/json": {"schema": {"type": "object"}}}},
        **problem_responses({
            400: "not verified: the problem document lists the error codes in `errors`",
            403: "not verified: untrusted issuer or credential type",
            404: "no pending request has this state or key",
            409: "already answered", 413: "body too large",
            415: "not application/x-www-form-urlencoded",
            422: "the answer does not fit the request",
            503: "a status list could not be fetched"}),
    })
    async def response_endpoint(request: Request) -> JSONResponse:
        if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            raise TesseraError(ErrorCode.UNSUPPORTED_FORMAT,
                               "direct_post bodies are application/x-www-form-urlencoded")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > 512 * 1024:
                raise TesseraError(ErrorCode.TOO_LARGE, "authorization response too large")
        result = await run_in_threadpool(service.response, bytes(body))
        # A refusal answered with 200 is still not a verified presentation.
        set_outcome(request, result.errors[0] if result.errors else None)
        if result.ok or ErrorCode.CONSENT_DENIED.value in result.errors:
            # §8.2: 200 once the response is processed; a refusal was received fine.
            return JSONResponse({}, headers={"Cache-Control": "no-store"})
        first = ErrorCode(result.errors[0]) if result.errors else ErrorCode.MALFORMED
        return problem_response(
            TesseraError(first, REASONS.get(first.value, first.value)),
            extra={"errors": list(result.errors)},
        )

    @app.get("/requests/{request_id}/result", response_model=dict[str, Any],
             responses=_TILL_NOT_FOUND)
    def result(request_id: str, till: Till) -> JSONResponse:
        return JSONResponse(service.public_view(service.session(request_id, till=till)))

    @app.get("/requests/{request_id}/events", response_class=EventStreamResponse, responses={
        **_TILL_NOT_FOUND, **problem_responses({429: _RATE_LIMITED}),
        200: {"description": "Server-Sent Events: `status` events carrying the result view",
              "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    })
    async def events(request_id: str, till: Till, request: Request) -> StreamingResponse:
        first = await run_in_threadpool(lambda: service.session(request_id, till=till))

        async def stream() -> AsyncIterator[str]:
            session: dict[str, Any] | None = first
            seen = -1
            deadline = time.monotonic() + settings.request_ttl_seconds + 30
            last_beat = time.monotonic()
            while session is not None and time.monotonic() < deadline:
                # Starlette stops the stream when the server reports the
                # disconnect (ASGI < 2.4); with 2.4 only a failed write would,
                # up to a keep-alive later. Either way, stop polling at once.
                if await request.is_disconnected():
                    return
                if session.get("version") != seen:
                    seen = int(session.get("version", 0))
                    data = json.dumps(service.public_view(session), separators=(",", ":"))
                    yield f"event: status\nid: {seen}\ndata: {data}\n\n"
                    if session.get("status") == "done":
                        return
                elif time.monotonic() - last_beat > 15:
                    last_beat = time.monotonic()
                    yield ": keep-alive\n\n"
                await asyncio.sleep(settings.sse_interval_seconds)
                session = await run_in_threadpool(
                    service.sessions.get, f"session:{request_id}"
                )

        # Held until the response ends: a stream lives up to the request's TTL,
        # so its rate limit alone would let a client hold ever more of them.
        release = service.streams.acquire(till, "event streams")
        response = EventStreamResponse(stream(), headers={"Cache-Control": "no-store",
                                                          "X-Accel-Buffering": "no"})
        response.on_close = release
        return response

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def checkout_page() -> HTMLResponse:
        return HTMLResponse(CHECKOUT_HTML, headers=PAGE_HEADERS)

    @app.get("/checkout.js", include_in_schema=False)
    def checkout_script() -> Response:
        return Response(CHECKOUT_JS, media_type="text/javascript; charset=utf-8",
                        headers=PAGE_HEADERS)

    @app.get("/checkout.css", include_in_schema=False)
    def checkout_style() -> Response:
        return Response(CHECKOUT_CSS, media_type="text/css; charset=utf-8",
                        headers=PAGE_HEADERS)

    @app.get("/policies", responses=problem_responses({401: _TILL_REFUSED}))
    def policies(_till: Till) -> list[dict[str, str]]:
        return [{"id": p.id, "label": p.label, "purpose": p.purpose}
                for p in service.policies.values()]

    @app.get("/requests/{request_id}/qr.png", response_class=PngResponse,
             responses={**_TILL_NOT_FOUND, 200: {"content": PNG_CONTENT}})
    def qr_png(request_id: str, till: Till) -> Response:
        session = service.session(request_id, till=till)
        out = io.BytesIO()
        qr_code(session["deep_link"]).save(out, kind="png", scale=6, border=2)
        return PngResponse(out.getvalue(), headers={"Cache-Control": "no-store"})

    if service.did_document is not None:
        document = service.did_document

        @app.get(service.did_document_path, responses={200: {
            "description": "the verifier's did:web document (did:web §3.2): the key that "
                           "signs its request objects",
            "content": {"application/did+json": {"schema": {"type": "object"}}}}})
        def verifier_did_document() -> Response:
            return Response(json.dumps(document), media_type="application/did+json",
                            headers={"Cache-Control": "max-age=300"})

    app.include_router(health_router(readiness_checks(service)))
    install_observability(app, service="verifier")
    # The W3C VC API verifier endpoints, so the W3C interop suites can call this service.
    app.include_router(vcapi_verifier_router(
        resolver=settings.resolver, status_check=settings.status_check,
        loader=settings.loader, issuer_must_control_key=settings.issuer_must_control_key,
        fetch_budget=timedelta(seconds=settings.fetch_budget_seconds),
    ))

    return app


# -- one key and one store for many workers ------------------------------------------------

ENV_PREFIX: Final = "TESSERA_VERIFIER_"
MASTER_KEY_ENV: Final = "TESSERA_MASTER_KEY"
_KEY_AAD: Final = b"tessera verifier key v1"


def _master_key(environ: Mapping[str, str]) -> bytes | None:
    raw = environ.get(MASTER_KEY_ENV, "").strip()
    if not raw:
        return None
    key = b64url_decode(raw, max_len=64)
    if len(key) != 32:
        raise TesseraError(ErrorCode.MALFORMED, f"{MASTER_KEY_ENV} must be 32 bytes, base64url")
    return key


def load_or_create_key(path: Path, *, master_key: bytes | None = None) -> LocalSigner:
    """The verifier's signing key from ``path``, created (ES256, mode 0600) if absent.

    With a master key (``TESSERA_MASTER_KEY``, as the issuer uses) the file
    holds the private JWK sealed with AES-256-GCM; without one it holds the
    JWK itself and must not be readable by group or others. Creation writes a
    private temporary file and hard-links it into place, so two processes
    starting at once end up with the same key, never a torn file.
    """
    if not path.exists():
        signer = generate_signer("ES256")
        data = json.dumps(signer.export_private_jwk()).encode()
        if master_key is not None:
            data = json.dumps({"sealed": seal(data, master_key, aad=_KEY_AAD)}).encode()
        # FileExistsError: another process won the race; use its key.
        with contextlib.suppress(FileExistsError):
            write_private(path, data, replace=False)
    try:
        mode = path.stat().st_mode
        raw = path.read_bytes()
    except OSError as exc:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"cannot read the key file {path}: {exc.strerror}") from exc
    document = parse_json_object(raw, max_bytes=64 * 1024)
    if "sealed" in document:
        if master_key is None:
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               f"{path} is sealed: set {MASTER_KEY_ENV} to open it")
        box = document["sealed"]
        if not isinstance(box, dict):
            raise TesseraError(ErrorCode.MALFORMED, "not a sealed key file")
        document = parse_json_object(unseal(box, master_key, aad=_KEY_AAD))
    elif mode & 0o077:
        raise TesseraError(ErrorCode.FORBIDDEN,
                           f"{path} holds a private key and is readable by others: "
                           "chmod 600 it (or seal it under a master key)")
    return signer_from_jwk(document)


def _env_list(value: str) -> list[str]:
    if not value.strip():
        return []
    parsed = parse_json(value, max_bytes=16 * 1024)
    if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
        raise TesseraError(ErrorCode.MALFORMED, "expected a JSON array of strings")
    return parsed


def settings_from_env(environ: Mapping[str, str] | None = None) -> ServiceSettings:
    """Service settings from ``TESSERA_VERIFIER_*`` variables (see docs/verifier-service.md).

    ``TRUST`` (trust list file, required), ``KEY`` (key file; without it a
    one-run key, refused when ``WORKERS`` > 1), ``BASE_URL``, ``STORE``,
    ``PREFIX``, ``NAME``, ``CONTACTS`` and ``DID_DOCUMENTS`` (JSON arrays),
    ``RESPONSE_MODE``, ``WORKERS``, ``TILLS`` (the till key file; without it
    no till is allowed, and several workers are refused);
    ``CONTEXTS`` (a pinned JSON-LD context manifest, see
    :meth:`tessera.jsonld.DocumentLoader.from_manifest`),
    ``ISSUER_MUST_CONTROL_KEY`` (``true``/``false``, default true);
    ``MAX_STREAMS_PER_TILL`` and ``MAX_STREAMS`` (event streams open at once
    per till key and in each process, default 8 and 256);
    ``TESSERA_MASTER_KEY`` seals the key file; ``TESSERA_FETCH_BUDGET`` (seconds,
    default 10) bounds each verification's fetches and each single fetch.
    """
    env = os.environ if environ is None else environ

    def get(name: str, default: str = "") -> str:
        return env.get(ENV_PREFIX + name, default)

    try:
        workers = int(get("WORKERS", "1") or "1")
    except ValueError:
        raise TesseraError(ErrorCode.MALFORMED, f"{ENV_PREFIX}WORKERS must be a number") from None
    store = get("STORE", "sqlite:///tessera-verifier.db")
    scheme = urllib.parse.urlsplit(store).scheme.lower()
    if workers > 1 and scheme == "memory":
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           "a memory:// store lives in one process: with several workers use "
                           "sqlite:///FILE, postgresql://… or redis://…")
    trust_path = get("TRUST")
    if not trust_path:
        raise TesseraError(ErrorCode.INVALID_REQUEST, f"{ENV_PREFIX}TRUST is not set")
    key_path = get("KEY")
    if key_path:
        signer = load_or_create_key(Path(key_path), master_key=_master_key(env))
    elif workers > 1:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           "several workers must share one verifier key: pass --key FILE "
                           "(created on first run)")
    else:
        signer = generate_signer("ES256")
    base_url = get("BASE_URL", "http://127.0.0.1:8090").rstrip("/")
    # did:web of the base URL: a short client_id for the QR code; the service
    # serves the document (OpenID4VP 1.0 §5.9.3, decentralized_identifier).
    signer = signer.with_key_id(verifier_did(signer, "web", base_url=base_url) + "#0")
    tills_path = get("TILLS")
    if not tills_path and workers > 1:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           "several workers must share one till key file: pass --tills FILE "
                           "(`tessera verifier till create --tills FILE` adds a till)")
    documents: dict[str, Any] = {}
    for doc_path in _env_list(get("DID_DOCUMENTS")):
        try:
            doc = parse_json_object(Path(doc_path).read_bytes())
        except OSError as exc:
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               f"cannot read {doc_path}: {exc.strerror}") from exc
        documents[str(doc.get("id"))] = doc
    budget = fetch_budget_seconds(env.get(ENV_FETCH_BUDGET))
    # Development mode (docs/configuration.md): http from named local origins only.
    # One fetch may use the whole budget: the budget still bounds them all together.
    fetcher = dev_fetcher(dev_origins(environ=env, public_urls=[base_url]), deadline=budget)
    resolver = Resolver(fetcher, documents=documents)
    contexts = get("CONTEXTS")
    loader = jsonld.DocumentLoader.from_manifest(contexts) if contexts else None
    must_control = get("ISSUER_MUST_CONTROL_KEY", "true").strip().lower()
    if must_control not in ("true", "false", "1", "0"):
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"{ENV_PREFIX}ISSUER_MUST_CONTROL_KEY must be true or false")
    streams: dict[str, int] = {}
    for name, default in (("MAX_STREAMS_PER_TILL", 8), ("MAX_STREAMS", 256)):
        raw = get(name, str(default)).strip() or str(default)
        if not (raw.isdigit() and 1 <= int(raw) <= 100_000):
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               f"{ENV_PREFIX}{name} must be a number from 1 to 100000")
        streams[name] = int(raw)
    mode = get("RESPONSE_MODE", "direct_post")
    if mode not in RESPONSE_MODES:
        raise TesseraError(ErrorCode.INVALID_REQUEST, f"unknown response mode {mode!r}")
    try:
        trust = TrustList.from_file(Path(trust_path))
    except OSError as exc:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"cannot read the trust list {trust_path}: {exc.strerror}") from exc
    return ServiceSettings(
        base_url=base_url, trust=trust, signer=signer,
        client_id_prefix=get("PREFIX", PREFIX_DID),
        client_name=get("NAME", "Partner checkout"),
        contacts=tuple(_env_list(get("CONTACTS"))), store_url=store,
        resolver=resolver, status_check=default_status_check(resolver, fetcher),
        response_mode=mode, tills=TillKeys(Path(tills_path)) if tills_path else None,
        loader=loader, issuer_must_control_key=must_control in ("true", "1"),
        rate_limits=RateLimitConfig.from_env(env), fetch_budget_seconds=budget,
        max_streams_per_till=streams["MAX_STREAMS_PER_TILL"],
        max_streams=streams["MAX_STREAMS"],
    )


def app_from_env() -> FastAPI:
    """The app factory each uvicorn worker calls (``verifier._service:app_from_env``)."""
    from tessera.serving import freeze_heap_after_startup

    configure_logging()  # in each worker: spawned processes start with no handlers
    # The start-up heap out of the collector's walks (tessera.serving).
    return freeze_heap_after_startup(create_app(settings_from_env()))
