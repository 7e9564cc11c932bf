"""Metrics and request logs, once for every service: mounted like :mod:`tessera.health`.

:func:`install_observability` gives a service

* ``GET /metrics``, the Prometheus text format (prometheus_client): requests
  and their latency by route *template* and status, operation outcomes by
  error code, cache hits and misses, database pool use, and whatever the
  service adds at scrape time (the issuer: transparency-log size and the age
  of its latest signed head). Labels never hold a path, an id or a header.
* one JSON log line per request (:func:`configure_logging`), with an
  ``X-Request-ID`` that is echoed in the response and carried by every other
  line logged while the request runs.

Several uvicorn workers share one port, so a scrape reaches one worker at
random: with ``PROMETHEUS_MULTIPROC_DIR`` set (``serve --workers N`` sets a
fresh one) counters and histograms are prometheus_client's multiprocess files,
summed over the workers at each scrape.

This module imports prometheus_client and Starlette: only services import it.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import logging
import os
import re
import secrets
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from fastapi import Depends, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from tessera import telemetry
from tessera.errors import ErrorCode, TesseraError
from tessera.web import ERROR_CODE_STATE, route_template

__all__ = [
    "ENV_LOG_FORMAT",
    "ENV_LOG_LEVEL",
    "ENV_METRICS_TOKEN",
    "REQUEST_ID_HEADER",
    "ScrapeCollector",
    "configure_logging",
    "count_outcome",
    "current_request_id",
    "install_observability",
    "instrument_pool",
    "set_outcome",
    "share_metrics_between_workers",
]

ENV_METRICS_TOKEN: Final = "TESSERA_METRICS_TOKEN"  # noqa: S105 - a variable's name
ENV_LOG_FORMAT: Final = "TESSERA_LOG_FORMAT"
ENV_LOG_LEVEL: Final = "TESSERA_LOG_LEVEL"
MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
REQUEST_ID_HEADER: Final = "X-Request-ID"

# A caller's request id is kept only when it looks like an id (a UUID, a
# trace id): bounded, no spaces or quotes to break a log line, no '@' (not an
# email address). Anything else is replaced, not rejected.
_WELL_FORMED_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{7,127}")
_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_OPERATION_STATE: Final = "tessera_operation"
_OUTCOME_STATE: Final = "tessera_outcome"

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tessera_request_id", default=None)

_access_log = logging.getLogger("tessera.access")

# -- the metrics -----------------------------------------------------------------------------

# A ``_created`` series per series doubles what a scrape carries for a value
# Prometheus derives from the counter's resets anyway.
disable_created_metrics()  # type: ignore[no-untyped-call]
# Module-level, created once per process: prometheus_client keeps one series per
# name, and in multiprocess mode a value lives in a file named after the process.

HTTP_REQUESTS: Final = Counter(
    "tessera_http_requests", "HTTP requests answered, by route template and status",
    ["service", "method", "route", "status"])
HTTP_DURATION: Final = Histogram(
    "tessera_http_request_duration_seconds",
    "Time from the request's arrival to the end of its response, by route template",
    ["service", "method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
OUTCOMES: Final = Counter(
    "tessera_outcomes",
    "Issuance, verification and redemption outcomes: `ok` or a Tessera error code",
    ["operation", "outcome"])
CACHE_LOOKUPS: Final = Counter(
    "tessera_cache_lookups", "DID-document and status-list cache lookups: hit or miss",
    ["cache", "result"])
POOL_CHECKED_OUT: Final = Gauge(
    "tessera_db_pool_checked_out", "Database connections in use (summed over live workers)",
    ["pool"], multiprocess_mode="livesum")
POOL_CAPACITY: Final = Gauge(
    "tessera_db_pool_capacity",
    "Connections the pool may open: size plus overflow (summed over live workers)",
    ["pool"], multiprocess_mode="livesum")


def _count_cache(what: str, result: str) -> None:
    CACHE_LOOKUPS.labels(cache=what, result=result).inc()


telemetry.listen(_count_cache)

ScrapeCollector = Callable[[], Iterable[Metric]]
"""Metrics computed when scraped (from the database: the same in every worker)."""


class _Scraped(Collector):
    def __init__(self, collectors: Iterable[ScrapeCollector]) -> None:
        self._collectors = list(collectors)

    def collect(self) -> Iterable[Metric]:
        for collector in self._collectors:
            try:
                yield from collector()
            except Exception:
                # A scrape must not fail because a gauge's query did: the others
                # are still worth having, and /readyz reports the database.
                logging.getLogger("tessera.observability").warning(
                    "a scrape-time metric failed", exc_info=True)


def instrument_pool(engine: Any, name: str) -> None:
    """Report the connections ``engine``'s pool has checked out, and its capacity."""
    from sqlalchemy import event

    pool = engine.pool
    size = getattr(pool, "size", None)
    overflow = getattr(pool, "_max_overflow", 0)
    capacity = (size() + max(overflow, 0)) if callable(size) else 1
    POOL_CAPACITY.labels(pool=name).set(capacity)
    used = POOL_CHECKED_OUT.labels(pool=name)
    in_use = 0

    # Kept as a count and set, not inc/dec: a connection checked out before
    # this was installed cannot take the gauge below zero.
    def checkout(*_args: Any) -> None:
        nonlocal in_use
        in_use += 1
        used.set(in_use)

    def checkin(*_args: Any) -> None:
        nonlocal in_use
        in_use = max(in_use - 1, 0)
        used.set(in_use)

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)


# -- outcomes ------------------------------------------------------------------------------


def count_outcome(operation: str) -> Any:
    """A route dependency: count this route's answers as ``operation`` outcomes.

    The outcome is ``ok`` for a success, else the ``code`` of the problem the
    request was answered with (or one the route set, :func:`set_outcome`).
    """

    async def mark(request: Request) -> None:  # async: no thread-pool hop per request
        setattr(request.state, _OPERATION_STATE, operation)

    return Depends(mark)


def set_outcome(request: Request, code: ErrorCode | str | None) -> None:
    """The outcome of this request's operation, when its status does not say it
    (a verification that failed but was received, a refusal answered with 200)."""
    value = code.value if isinstance(code, ErrorCode) else code
    setattr(request.state, _OUTCOME_STATE, value or "ok")


# -- request ids and the middleware --------------------------------------------------------


def current_request_id() -> str | None:
    """The id of the request being served (None outside one)."""
    return _request_id.get()


def _request_id_from(scope: Mapping[str, Any]) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _WELL_FORMED_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


_ASGIApp = Callable[..., Any]


class _Observe:
    """ASGI middleware: request id, metrics and the one log line per request."""

    def __init__(self, app: _ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id_from(scope)
        token = _request_id.set(request_id)
        started = time.perf_counter()
        status = 500
        header = (REQUEST_ID_HEADER.lower().encode(), request_id.encode())

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, status, time.perf_counter() - started)
            _request_id.reset(token)

    def _record(self, scope: MutableMapping[str, Any], status: int, seconds: float) -> None:
        method = str(scope.get("method", ""))
        method = method if method in _METHODS else "OTHER"
        route = route_template(scope)
        state = scope.get("state") or {}
        code = state.get(ERROR_CODE_STATE)
        labels = {"service": self.service, "method": method, "route": route,
                  "status": str(status)}
        HTTP_REQUESTS.labels(**labels).inc()
        HTTP_DURATION.labels(**labels).observe(seconds)
        operation = state.get(_OPERATION_STATE)
        outcome = None
        if operation is not None:
            outcome = state.get(_OUTCOME_STATE) or code or (
                "ok" if status < 400 else ErrorCode.INTERNAL_ERROR.value)
            OUTCOMES.labels(operation=operation, outcome=outcome).inc()
        fields: dict[str, Any] = {"service": self.service, "method": method, "route": route,
                                  "status": status, "duration_ms": round(seconds * 1000, 1)}
        if code:
            fields["code"] = code
        if operation is not None:
            fields["operation"] = operation
            fields["outcome"] = outcome
        _access_log.info("%s %s %s %.1fms", method, route, status, seconds * 1000,
                         extra={"tessera": fields})


# -- /metrics ------------------------------------------------------------------------------


def _loopback_peer(request: Request) -> bool:
    """The TCP peer is this host and no proxy says it forwards someone else."""
    if request.headers.get("forwarded") or request.headers.get("x-forwarded-for"):
        return False
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _registry(collectors: Iterable[ScrapeCollector]) -> CollectorRegistry:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    registry.register(_Scraped(collectors))
    return registry


class _Forward(Collector):
    """The process's default registry (this process's metrics) inside a scrape registry."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return self._source.collect()


def _forget_dead_workers() -> None:
    """Drop the gauge files of workers that are gone (a restarted worker's pool
    is not in use any more); counters of dead workers stay, they still count."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    from prometheus_client import multiprocess

    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(int(pid), directory)  # type: ignore[no-untyped-call]
        except PermissionError:
            continue


def share_metrics_between_workers(workers: int) -> str | None:
    """Before starting ``workers`` uvicorn workers: make their metrics one set.

    Uvicorn's workers share one port, so a scrape reaches any one of them; in
    prometheus_client's multiprocess mode each worker writes its values to files
    in ``PROMETHEUS_MULTIPROC_DIR`` and a scrape sums them. Unless the operator
    set that directory, a fresh one is made for this run (stale files from an
    earlier run would add old counts) and removed at exit. The workers are
    spawned, so they import prometheus_client with the variable already set.
    """
    if workers <= 1:
        return None
    if os.environ.get(MULTIPROC_ENV):
        return os.environ[MULTIPROC_ENV]
    import atexit
    import shutil
    import tempfile

    directory = tempfile.mkdtemp(prefix="tessera-metrics-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ[MULTIPROC_ENV] = directory
    return directory


def install_observability(app: FastAPI, *, service: str,
                          collectors: Iterable[ScrapeCollector] = (),
                          environ: Mapping[str, str] | None = None) -> None:
    """Mount ``/metrics`` and the request-id/metrics/log middleware on ``app``.

    ``/metrics`` needs ``Authorization: Bearer $TESSERA_METRICS_TOKEN`` when
    that is set; without it only a loopback peer (no forwarding headers) may
    scrape: the services face members and partners, and request volumes by
    route are the brand's business figures, not theirs (docs/operations.md).
    It wraps the whole application, so the request id covers every middleware.
    """
    env = os.environ if environ is None else environ
    token = env.get(ENV_METRICS_TOKEN, "").strip()
    scraped = list(collectors)
    _forget_dead_workers()

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if token:
            given = request.headers.get("authorization", "")
            scheme, _sep, credential = given.partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(
                    credential.strip().encode(), token.encode()):
                raise TesseraError(ErrorCode.UNAUTHORIZED, "missing or wrong metrics token")
        elif not _loopback_peer(request):
            raise TesseraError(ErrorCode.FORBIDDEN,
                               f"metrics answer loopback scrapes only; set {ENV_METRICS_TOKEN} "
                               "to scrape from elsewhere with a bearer token")
        return Response(generate_latest(_registry(scraped)), media_type=CONTENT_TYPE_LATEST,
                        headers={"Cache-Control": "no-store"})

    # Outside Starlette's own stack, even outside its ServerErrorMiddleware: an
    # unexpected error's 500 gets the header too, and its traceback is logged
    # while the request id is still set.
    build = app.build_middleware_stack

    def build_observed() -> _ASGIApp:
        return _Observe(build(), service)

    app.build_middleware_stack = build_observed  # type: ignore[method-assign]


# -- logs ----------------------------------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``msg``, ``request_id``
    (inside a request), the access line's fields, ``exc`` (a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or _request_id.get()
        if request_id:
            line["request_id"] = request_id
        fields = getattr(record, "tessera", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """For a person at a terminal: time, level, logger, request id, message."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s%(rid)s %(message)s",
                         datefmt="%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        request_id = _request_id.get()
        record.rid = f" [{request_id[:8]}]" if request_id else ""
        return super().format(record)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


_HANDLER_MARK: Final = "_tessera_handler"


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a line is logged (as logging's own
    last-resort handler does), not to the stream there was at start-up."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(environ: Mapping[str, str] | None = None, *,
                      level: str | None = None) -> str:
    """Send every log line (Tessera's, uvicorn's) to stderr, JSON or text; returns which.

    ``TESSERA_LOG_FORMAT``: ``json`` (the default) or ``text``; development
    (``TESSERA_DEV``, ``TESSERA_DEV_ORIGINS``) defaults to ``text``.
    ``TESSERA_LOG_LEVEL`` (or ``level``): ``info`` by default. Idempotent.
    """
    env = os.environ if environ is None else environ
    development = _truthy(env.get("TESSERA_DEV")) or bool(env.get("TESSERA_DEV_ORIGINS", "")
                                                           .strip())
    chosen = env.get(ENV_LOG_FORMAT, "").strip().lower() or ("text" if development else "json")
    if chosen not in ("json", "text"):
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"{ENV_LOG_FORMAT} must be json or text, not {chosen!r}")
    level_name = (level or env.get(ENV_LOG_LEVEL, "") or "info").strip().upper()
    if level_name not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"{ENV_LOG_LEVEL} must be debug, info, warning or error")
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_name)
    # uvicorn's loggers go through the same handler; its access log is replaced by
    # ours (route templates, not paths with ids; no client address).
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every outbound request's URL at info: a line per DID document or
    # status list fetched is noise beside the request's own line.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return chosen
