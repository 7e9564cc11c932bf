"""HTTP glue shared by every Tessera service: one RFC 9457 rendering of errors.

The issuer service, the verifier service and the standalone VC API server
all install :func:`install_problem_handlers`, so a :class:`TesseraError`
becomes the same ``application/problem+json`` document everywhere, with the
machine-readable ``code`` member. Request bodies that are parsed by hand go
through :func:`read_json_body` (size cap, strict JSON).

This module imports Starlette and FastAPI, so only the services import it;
the verifier SDK never does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tessera.encoding import MAX_JSON_BYTES, json_integers, parse_json, parse_json_object
from tessera.errors import ErrorCode, TesseraError

__all__ = [
    "ERROR_CODE_STATE",
    "HTTP_STATUS",
    "PNG_CONTENT",
    "PROBLEM_JSON",
    "PROBLEM_REF",
    "PROBLEM_SCHEMA",
    "PROBLEM_TYPE_BASE",
    "STRICT_BODY",
    "UNMATCHED_ROUTE",
    "PngResponse",
    "ProblemCustomizer",
    "StrictBodies",
    "StrictBody",
    "allowed_methods",
    "document_problems",
    "install_problem_handlers",
    "problem_media_type",
    "problem_response",
    "problem_responses",
    "read_json_body",
    "route_template",
    "to_tessera_error",
]

_log = logging.getLogger("tessera.web")

PROBLEM_TYPE_BASE: Final = "tag:tessera.dev,2026:error:"

HTTP_STATUS: Final[dict[ErrorCode, int]] = {
    ErrorCode.MALFORMED: 400,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_FORMAT: 415,
    ErrorCode.UNSUPPORTED_ALGORITHM: 400,
    ErrorCode.SCHEMA_INVALID: 422,
    ErrorCode.INVALID_SIGNATURE: 400,
    ErrorCode.KEY_NOT_FOUND: 400,
    ErrorCode.DID_RESOLUTION_FAILED: 400,
    ErrorCode.UNTRUSTED_ISSUER: 403,
    ErrorCode.CREDENTIAL_TYPE_NOT_ALLOWED: 403,
    ErrorCode.EXPIRED: 400,
    ErrorCode.NOT_YET_VALID: 400,
    ErrorCode.REVOKED: 400,
    ErrorCode.SUSPENDED: 400,
    ErrorCode.STATUS_UNAVAILABLE: 503,
    ErrorCode.NONCE_MISMATCH: 400,
    ErrorCode.AUDIENCE_MISMATCH: 400,
    ErrorCode.REPLAYED: 409,
    ErrorCode.KEY_BINDING_MISSING: 400,
    ErrorCode.KEY_BINDING_INVALID: 400,
    ErrorCode.DISCLOSURE_MISMATCH: 400,
    ErrorCode.TRANSACTION_DATA_MISMATCH: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.INVALID_REQUEST: 422,
    # Refused because of the account's state, not the request's shape.
    ErrorCode.INSUFFICIENT_BALANCE: 409,
    ErrorCode.CONSENT_DENIED: 403,
    # A wallet condition; a service never raises it, but every code has a status.
    ErrorCode.POOL_EMPTY: 409,
    ErrorCode.RATE_LIMITED: 429,
    # In a service this can only mean the master key does not open a stored
    # key: an operator's problem, not the client's.
    ErrorCode.WRONG_PASSPHRASE: 500,
    # A wallet's audit finding; no service raises it, but every code has a status.
    ErrorCode.LOG_PROMISE_BROKEN: 502,
    ErrorCode.DATABASE_UNAVAILABLE: 503,
    ErrorCode.INTERNAL_ERROR: 500,
}

ProblemCustomizer = Callable[[Request, TesseraError], tuple[int | None, dict[str, Any]] | None]
"""``(request, error) -> (status, extra members)`` or None to keep the defaults.

For a route family with its own conventions (OAuth ``error`` members on the
OpenID4VCI endpoints, the VC API's blanket 400)."""


PROBLEM_JSON: Final = "application/problem+json"


def problem_media_type(extra: Mapping[str, Any] | None) -> str:
    """``application/json`` for an OAuth error (one with an ``error`` member), else RFC 9457's.

    RFC 6749 §5.2 (token endpoint) and OpenID4VCI 1.0 §8.3.1.2 (credential
    endpoint) define their error responses as ``application/json``; a wallet may
    refuse any other media type. The members of the problem document stay, as
    extra parameters a client ignores.
    """
    return "application/json" if extra and "error" in extra else PROBLEM_JSON


def problem_response(
    error: TesseraError, *, status: int | None = None, extra: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error as a problem document; ``headers`` (e.g. a 405's ``Allow``) are kept."""
    status = status or HTTP_STATUS.get(error.code, 400)
    body = {
        "type": PROBLEM_TYPE_BASE + error.code.value,
        "title": error.code.value.replace("_", " "),
        "status": status,
        "detail": error.detail,
        "code": error.code.value,
        **(extra or {}),
    }
    # An error is about this request only: never cached (RFC 6749 §5.2 asks it of OAuth).
    all_headers = {**(headers or {}), "Cache-Control": "no-store"}
    if status == 401:
        oauth_error = (extra or {}).get("error")
        all_headers["WWW-Authenticate"] = (f'Bearer realm="tessera", error="{oauth_error}"'
                                           if oauth_error else 'Bearer realm="tessera"')
    return JSONResponse(body, status_code=status, headers=all_headers,
                        media_type=problem_media_type(extra))


def to_tessera_error(
    request: Request, exc: Exception
) -> tuple[TesseraError, int | None, dict[str, Any]]:
    """Any exception as (error, status override, extra members); unknown ones are logged."""
    if isinstance(exc, TesseraError):
        return exc, None, {}
    if isinstance(exc, RequestValidationError):
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        # The offending input is not echoed back: it may hold a token.
        detail = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors)[:1000]
        return TesseraError(ErrorCode.INVALID_REQUEST, detail), None, {"errors": errors[:50]}
    if isinstance(exc, StarletteHTTPException):
        code = {401: ErrorCode.UNAUTHORIZED, 403: ErrorCode.FORBIDDEN,
                404: ErrorCode.NOT_FOUND, 409: ErrorCode.CONFLICT,
                413: ErrorCode.TOO_LARGE}.get(exc.status_code, ErrorCode.INVALID_REQUEST)
        status = exc.status_code if 400 <= exc.status_code < 600 else 500
        return TesseraError(code, str(exc.detail)), status, {}
    # The route's template, not the path: a path can name a member.
    _log.exception("unhandled error on %s %s", request.method, route_template(request.scope))
    return TesseraError(ErrorCode.INTERNAL_ERROR, "internal error"), None, {}


UNMATCHED_ROUTE: Final = "<unmatched>"


def route_template(scope: Mapping[str, Any]) -> str:
    """The template of the route that answered (``/brands/{slug}/credential``).

    Never the path itself: paths carry ids, so metrics and logs label requests
    by template (bounded, no personal data). A path no route matched is
    ``<unmatched>``, so a scan of random paths cannot grow a label set.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


ERROR_CODE_STATE: Final = "tessera_error_code"
"""``request.state`` member: the ``code`` of the problem a request was answered with."""


_METHODS: Final = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> str:
    """Every method some route of the app takes on this path.

    Starlette's 405 names the methods of the first route that matched the path
    only; asking the router about each method counts every route, those of
    included routers too."""
    routes = request.app.router.routes
    allowed = [method for method in _METHODS
               if any(route.matches({**request.scope, "method": method})[0] == Match.FULL
                      for route in routes)]
    return ", ".join(allowed)


def install_problem_handlers(app: FastAPI, *, customize: ProblemCustomizer | None = None) -> None:
    """Make every failure of ``app`` an RFC 9457 problem document with a ``code``."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        error, status, extra = to_tessera_error(request, exc)
        setattr(request.state, ERROR_CODE_STATE, error.code.value)  # for logs and metrics
        # Starlette's exceptions and tessera.ratelimit.RateLimited carry headers.
        headers = dict(getattr(exc, "headers", None) or {})
        # A wrong method is the router's answer, not the route family's: a 405
        # keeps its status everywhere, with the Allow header RFC 9110 §15.5.6 requires.
        routing = isinstance(exc, StarletteHTTPException) and exc.status_code == 405
        if routing:
            headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
        custom = customize(request, error) if customize is not None and not routing else None
        if custom is not None:
            custom_status, custom_extra = custom
            status = custom_status or status
            extra = {**extra, **custom_extra}
        return problem_response(error, status=status, extra=extra, headers=headers)

    for exc_type in (TesseraError, RequestValidationError, StarletteHTTPException, Exception):
        app.add_exception_handler(exc_type, handle)
    document_problems(app)


async def read_json_body(request: Request, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The request body as a strictly parsed JSON object, read with a size cap."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TesseraError(ErrorCode.TOO_LARGE, f"request body over {max_bytes} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise TesseraError(ErrorCode.TOO_LARGE, f"request body over {max_bytes} bytes")
    try:
        return parse_json_object(bytes(body), max_bytes=max_bytes)
    except TesseraError as exc:
        raise TesseraError(exc.code if exc.code == ErrorCode.TOO_LARGE else ErrorCode.MALFORMED,
                           f"request body: {exc.detail}") from exc


# -- the OpenAPI documents ------------------------------------------------------------------

PROBLEM_SCHEMA: Final[dict[str, Any]] = {
    "title": "Problem",
    "description": "RFC 9457 problem details with Tessera's stable `code` (docs/errors.md)",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string", "enum": [c.value for c in ErrorCode]},
    },
}
PROBLEM_REF: Final = {"$ref": "#/components/schemas/Problem"}


class PngResponse(Response):
    """An image: declared ``image/png`` in the OpenAPI document, not FastAPI's JSON default."""

    media_type = "image/png"


PNG_CONTENT: Final = {"image/png": {"schema": {"type": "string", "format": "binary"}}}


def problem_responses(described: Mapping[int, str]) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries for a route: each status as a problem document."""
    return {status: {"description": text,
                     "content": {PROBLEM_JSON: {"schema": PROBLEM_REF}}}
            for status, text in described.items()}


_BODY_ERRORS: Final = {
    "400": "the body is not strict JSON (duplicate member, NaN, too deep) or not the "
           "documented form",
    "413": "the body is over the service's size cap",
}


def _complete(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            for status, response in responses.items():
                if not status.startswith(("4", "5")):
                    continue
                content = response.setdefault("content", {})
                json_schema = content.get("application/json", {}).get("schema", {})
                if json_schema.get("$ref", "").endswith(("/HTTPValidationError", "/Problem")):
                    # FastAPI's defaults: its validation error shape, or a model
                    # declared beside problem+json. What leaves is the problem document.
                    del content["application/json"]
                    content[PROBLEM_JSON] = {"schema": PROBLEM_REF}
                if PROBLEM_JSON in content and not content[PROBLEM_JSON].get("schema"):
                    content[PROBLEM_JSON] = {"schema": PROBLEM_REF}
            # A route family that renders its own 400 (OAuth, through a customizer)
            # folds validation errors and oversized bodies into it.
            own_400 = responses.get("400", {}).get("content", {})
            own_errors = bool(own_400) and PROBLEM_JSON not in own_400
            if own_errors:
                responses.pop("422", None)
            if "requestBody" in operation:
                # StrictBodies answers for every body: malformed JSON, over the cap.
                for status, text in _BODY_ERRORS.items():
                    if status == "413" and own_errors:
                        continue
                    responses.setdefault(status, problem_responses({int(status): text})[
                        int(status)])
    if "/HTTPValidationError" not in json.dumps(schema["paths"]):
        for name in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(name, None)
    return schema


def document_problems(app: FastAPI) -> None:
    """Make ``app.openapi()`` say what the shared stack answers on every operation.

    The problem handler and :class:`StrictBodies` answer on routes that do not
    know about them: every error is a ``Problem`` (not FastAPI's validation
    shape), and every operation with a body can get 400 (malformed) and 413.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI caches the document it builds; completing it again changes nothing.
        return _complete(build())

    app.openapi = openapi  # type: ignore[method-assign]


STRICT_BODY: Final = ConfigDict(strict=True)
"""``model_config`` of every JSON request body model: a value is what the schema says or refused.

FastAPI validates a body in pydantic's Python mode, whose lax default takes JSON ``false``
or ``"5"`` for an integer and ``1.0`` for 1; strict mode refuses them as the OpenAPI
document does (``invalid_request``); ``5.0``, an integer to JSON Schema, is taken as 5
(:func:`tessera.encoding.json_integers`). Strict Python mode also refuses a string for an enum
or a datetime, which JSON can only carry as a string: such a field is declared
``Annotated[..., Strict(False)]``. Query and path parameters stay lax: they are strings."""


class StrictBody(BaseModel):
    """Base of a JSON request body model (:data:`STRICT_BODY`)."""

    model_config = STRICT_BODY

    @field_validator("*", mode="before")
    @classmethod
    def _json_integers(cls, value: Any, info: ValidationInfo) -> Any:
        # 5.0 is a JSON Schema integer (tessera.encoding.json_integers).
        if info.field_name is None:
            return value
        return json_integers(cls.model_fields[info.field_name].annotation, value)


_ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]
_ASGIApp = Callable[[MutableMapping[str, Any], _ASGIReceive, _ASGISend], Awaitable[None]]


class StrictBodies:
    """ASGI middleware: every request body is capped, and JSON bodies are strict.

    FastAPI's own JSON parsing accepts duplicate member names (the last wins)
    and NaN; a body that says two things at once is refused here as
    ``malformed`` before any route sees it, with the same size and depth caps
    as every other input (:func:`tessera.encoding.parse_json`).
    """

    def __init__(self, app: _ASGIApp, max_bytes: int = MAX_JSON_BYTES,
                 customize: ProblemCustomizer | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.customize = customize

    async def __call__(self, scope: MutableMapping[str, Any], receive: _ASGIReceive,
                       send: _ASGISend) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        declared = headers.get(b"content-length", b"")
        if declared and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(scope, receive, send, TesseraError(
                ErrorCode.TOO_LARGE, f"request body over {self.max_bytes} bytes"))
            return
        ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if not (ctype == b"application/json" or ctype.endswith(b"+json")):
            await self.app(scope, self._capped(receive), send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._refuse(scope, receive, send, TesseraError(
                    ErrorCode.TOO_LARGE, f"request body over {self.max_bytes} bytes"))
                return
            if not message.get("more_body", False):
                break
        if body:
            try:
                parse_json(bytes(body), max_bytes=self.max_bytes)
            except TesseraError as exc:
                await self._refuse(scope, receive, send, TesseraError(
                    exc.code, f"request body: {exc.detail}"))
                return
        replayed = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _capped(self, receive: _ASGIReceive) -> _ASGIReceive:
        seen = 0

        async def capped() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise TesseraError(ErrorCode.TOO_LARGE, f"request body over {self.max_bytes} bytes")
            return message

        return capped

    async def _refuse(self, scope: MutableMapping[str, Any], receive: _ASGIReceive,
                      send: _ASGISend, error: TesseraError) -> None:
        # Refused before routing, so the app's handler never sees it: apply the
        # same customizer here, so a route family keeps its conventions.
        request = Request(scope)
        setattr(request.state, ERROR_CODE_STATE, error.code.value)
        custom = self.customize(request, error) if self.customize else None
        status, extra = custom if custom is not None else (None, {})
        await problem_response(error, status=status, extra=extra)(scope, receive, send)
