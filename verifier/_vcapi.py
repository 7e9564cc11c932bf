"""W3C VC API verifier endpoints for Data Integrity credentials and presentations.

* ``POST /credentials/verify``: ``{verifiableCredential, options}``;
* ``POST /presentations/verify``: ``{verifiablePresentation, options:
  {challenge, domain}}``;
* ``POST /challenges``: a fresh single-use challenge (VC API ``verifier.yml``).

The answer is the VC API verification result, ``{verified, checks, warnings,
errors, problemDetails}``: ``200`` when verified, ``400`` when not, with
``errors`` holding Tessera's error codes (``invalid_signature``, ``expired``,
``revoked``, ``nonce_mismatch``, ...). A request that is not even shaped like
one (no JSON object, no ``verifiableCredential``) is an RFC 9457 problem
document from the host application's handler.

Imported by the services only: ``import verifier`` never loads FastAPI.

Challenges: one minted by ``POST /challenges`` is consumed by the first
presentation that uses it, and a second use is ``replayed``. The W3C suites
bring their own challenge (and reuse one for a whole run), so by default a
challenge the caller chose is accepted and its single use is the caller's
business, as the VC API puts it; ``require_issued_challenge=True`` accepts
only challenges minted here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from tessera import jsonld
from tessera.did import HttpFetcher, Resolver
from tessera.did import fetch_budget as within_fetch_budget
from tessera.encoding import MAX_JSON_BYTES
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import data_integrity
from tessera.keys import PublicKey
from tessera.nonces import MemoryNonceStore, new_nonce
from tessera.observability import count_outcome, set_outcome
from tessera.typing import Clock, DIDResolver, Fetcher, NonceStore
from tessera.web import PROBLEM_TYPE_BASE, read_json_body
from verifier._status import StatusCheck, default_status_check

__all__ = ["VcApiVerifier", "vcapi_verifier_router"]

_ISSUED: Final = "vcapi-challenge:"
_USED: Final = "vcapi-challenge-used:"
_MAX_CHALLENGE: Final = 200


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _options(body: dict[str, Any], document_key: str) -> tuple[Any, dict[str, Any]]:
    unknown = sorted(set(body) - {document_key, "options"})
    if unknown:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"unexpected member(s): {', '.join(u[:40] for u in unknown[:5])}")
    if document_key not in body:
        raise TesseraError(ErrorCode.MALFORMED, f"request has no {document_key}")
    options = body.get("options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise TesseraError(ErrorCode.MALFORMED, "options must be an object")
    checks = options.get("checks")
    if checks is not None and not (
        isinstance(checks, list) and all(isinstance(c, str) for c in checks)
    ):
        raise TesseraError(ErrorCode.MALFORMED, "options.checks must be a list of strings")
    return body[document_key], options


class _Outcome:
    def __init__(self) -> None:
        self.checks: list[str] = []
        self.warnings: list[str] = []

    def ok(self) -> tuple[int, dict[str, Any]]:
        return 200, {"verified": True, "checks": self.checks, "warnings": self.warnings,
                     "errors": [], "problemDetails": []}

    def failed(self, exc: TesseraError) -> tuple[int, dict[str, Any]]:
        code = exc.code.value
        return 400, {
            "verified": False, "checks": self.checks, "warnings": self.warnings,
            "errors": [code],
            "problemDetails": [{"type": PROBLEM_TYPE_BASE + code,
                                "title": code.replace("_", " "), "detail": exc.detail,
                                "code": code}],
        }


class VcApiVerifier:
    """The work behind the routes, without HTTP (so tests and other hosts can call it).

    Every check that applies is always run: ``options.checks`` cannot turn
    the proof, validity or status checks off, it is only accepted.

    Presentations are verified as VCDM 2.0 §4.13 defines them: ``holder`` and
    ``verifiableCredential`` are optional and a credential's subject need not
    be the holder (the result then carries a warning saying so); a named holder
    must own the proof key. ``require_holder_binding=True`` makes a missing
    holder ``key_binding_missing`` and a subject other than the holder
    ``key_binding_invalid``, as Tessera's own OpenID4VP flow always does.
    ``loader`` serves JSON-LD contexts (bundled ones when ``None``);
    ``issuer_must_control_key`` (default on) refuses a credential signed by
    a key outside its issuer's DID as ``issuer_key_mismatch``.
    """

    def __init__(
        self,
        *,
        resolver: DIDResolver | None = None,
        fetcher: Fetcher | None = None,
        status_check: StatusCheck | None = None,
        nonces: NonceStore | None = None,
        require_issued_challenge: bool = False,
        challenge_ttl_seconds: int = 300,
        loader: jsonld.DocumentLoader | None = None,
        clock: Clock = _utcnow,
        require_holder_binding: bool = False,
        fetch_budget: timedelta = timedelta(seconds=10),
        issuer_must_control_key: bool = True,
    ) -> None:
        fetcher = fetcher or HttpFetcher()
        self.resolver: DIDResolver = resolver or Resolver(fetcher)
        self.status_check = status_check or default_status_check(self.resolver, fetcher)
        self.nonces: NonceStore = nonces or MemoryNonceStore(clock)
        self.require_issued_challenge = require_issued_challenge
        self.challenge_ttl = challenge_ttl_seconds
        self.loader = loader
        self.clock = clock
        self.require_holder_binding = require_holder_binding
        # All DID and status-list fetches of one request together (issue 9 item 3).
        self.fetch_budget = fetch_budget.total_seconds()
        self.issuer_must_control_key = issuer_must_control_key

    def _key(self, vm: str, relationship: str) -> PublicKey:
        return self.resolver.resolve(vm.split("#", 1)[0]).key(vm, relationship=relationship)

    def _status(self, vc: dict[str, Any], outcome: _Outcome, now: datetime) -> None:
        status = vc.get("credentialStatus")
        if status is None:
            return
        if "status" not in outcome.checks:
            outcome.checks.append("status")
        issuer = vc.get("issuer")
        issuer_id = issuer.get("id") if isinstance(issuer, dict) else issuer
        self.status_check(status, issuer=str(issuer_id), now=now)

    def new_challenge(self) -> str:
        challenge = new_nonce()
        self.nonces.issue(_ISSUED + challenge, ttl_seconds=self.challenge_ttl,
                          data={"purpose": "vcapi"})
        return challenge

    def _use_challenge(self, challenge: str) -> None:
        if self.nonces.consume(_ISSUED + challenge) is not None:
            # Remembered so that a second use says "replayed", not "unknown".
            try:
                self.nonces.issue(_USED + challenge, ttl_seconds=self.challenge_ttl)
            except TesseraError as exc:
                if exc.code != ErrorCode.CONFLICT:
                    raise
            return
        if self.nonces.consume(_USED + challenge) is not None:
            self.nonces.issue(_USED + challenge, ttl_seconds=self.challenge_ttl)
            raise TesseraError(ErrorCode.REPLAYED, "this challenge was already used")
        if self.require_issued_challenge:
            raise TesseraError(ErrorCode.NONCE_MISMATCH,
                               "challenge was not issued by this verifier or has expired")

    def verify_credential(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        # One fetch budget and one JSON-LD work budget for the credential and its status list.
        with within_fetch_budget(self.fetch_budget), jsonld.work_budget():
            return self._verify_credential(body)

    def verify_presentation(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        # The same for the presentation, its credentials and their status lists.
        with within_fetch_budget(self.fetch_budget), jsonld.work_budget():
            return self._verify_presentation(body)

    def _verify_credential(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        vc, _ = _options(body, "verifiableCredential")
        outcome = _Outcome()
        now = self.clock()
        try:
            if not isinstance(vc, dict):
                raise TesseraError(ErrorCode.MALFORMED, "verifiableCredential must be an object")
            outcome.checks.append("proof")
            verified = data_integrity.verify_credential(
                vc, key_lookup=self._key, now=now, loader=self.loader,
                issuer_must_control_key=self.issuer_must_control_key)
            outcome.checks.append("validity")
            self._status(verified, outcome, now)
        except TesseraError as exc:
            return outcome.failed(exc)
        except (ValueError, TypeError, KeyError, RecursionError):
            return outcome.failed(TesseraError(ErrorCode.MALFORMED, "malformed credential"))
        return outcome.ok()

    def _verify_presentation(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        vp, options = _options(body, "verifiablePresentation")
        challenge, domain = options.get("challenge"), options.get("domain")
        for name, value in (("challenge", challenge), ("domain", domain)):
            if value is not None and (
                not isinstance(value, str) or not value or len(value) > _MAX_CHALLENGE
            ):
                raise TesseraError(ErrorCode.MALFORMED,
                                   f"options.{name} must be a short non-empty string")
        outcome = _Outcome()
        now = self.clock()
        try:
            if not isinstance(vp, dict):
                raise TesseraError(ErrorCode.MALFORMED, "verifiablePresentation must be an object")
            proof = vp.get("proof") if isinstance(vp.get("proof"), dict) else {}
            assert isinstance(proof, dict)
            # The proof's own values when the caller gives none: any type is
            # then refused by the comparison inside verify_presentation.
            expected_challenge: Any
            expected_domain: Any
            if challenge is None:
                if self.require_issued_challenge:
                    raise TesseraError(ErrorCode.NONCE_MISMATCH, "options.challenge is required")
                outcome.warnings.append("no challenge given: the proof's challenge was not checked")
                expected_challenge = proof.get("challenge")
            else:
                outcome.checks.append("challenge")
                self._use_challenge(challenge)
                expected_challenge = challenge
            if domain is None:
                outcome.warnings.append("no domain given: the proof's domain was not checked")
                expected_domain = proof.get("domain")
            else:
                outcome.checks.append("domain")
                expected_domain = domain
            outcome.checks.append("proof")
            credentials = data_integrity.verify_presentation(
                vp, key_lookup=self._key, challenge=expected_challenge, domain=expected_domain,
                now=now, loader=self.loader, holder_binding=self.require_holder_binding,
                issuer_must_control_key=self.issuer_must_control_key)
            outcome.checks.append("credentials")
            holder = data_integrity.holder_of(vp)
            if holder is None:
                outcome.warnings.append("the presentation names no holder")
            for n, vc in enumerate(credentials):
                subject = vc.get("credentialSubject")
                if not isinstance(subject, dict) or subject.get("id") != holder:
                    outcome.warnings.append(
                        f"verifiableCredential[{n}]: its subject is not the holder")
                self._status(vc, outcome, now)
        except TesseraError as exc:
            return outcome.failed(exc)
        except (ValueError, TypeError, KeyError, RecursionError):
            return outcome.failed(TesseraError(ErrorCode.MALFORMED, "malformed presentation"))
        return outcome.ok()


_RESULT_SCHEMA: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "verified": {"type": "boolean"},
        "checks": {"type": "array", "items": {"type": "string"}},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "errors": {"type": "array", "items": {"type": "string"},
                   "description": "Tessera error codes (docs/errors.md)"},
        "problemDetails": {"type": "array", "items": {"type": "object"}},
    },
}


def _openapi(document_key: str, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": [document_key], "additionalProperties": False,
            "properties": {document_key: {"type": "object"},
                           "options": {"type": "object", "properties": options}},
        }}}},
        "responses": {
            "200": {"description": "Verified",
                    "content": {"application/json": {"schema": _RESULT_SCHEMA}}},
            "400": {"description": "Not verified (result with error codes), or a malformed "
                                   "request (RFC 9457 problem document)",
                    "content": {"application/json": {"schema": _RESULT_SCHEMA},
                                "application/problem+json": {}}},
            "422": {"description": "A member the VC API does not define (RFC 9457 problem "
                                   "document)",
                    "content": {"application/problem+json": {}}},
        },
    }


_CHECKS: Final = {"checks": {"type": "array", "items": {"type": "string"}}}


def vcapi_verifier_router(
    verifier: VcApiVerifier | None = None,
    *,
    max_body_bytes: int = MAX_JSON_BYTES,
    **settings: Any,
) -> APIRouter:
    """The VC API verifier routes; ``settings`` go to :class:`VcApiVerifier` if none is given."""
    core = verifier or VcApiVerifier(**settings)
    router = APIRouter(tags=["VC API: verifier"])

    def route(work: Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]
              ) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> JSONResponse:
            body = await read_json_body(request, max_bytes=max_body_bytes)
            status, result = await run_in_threadpool(work, body)
            errors = result.get("errors") or [None]
            set_outcome(request, str(errors[0]) if errors[0] else None)
            return JSONResponse(result, status_code=status)
        return endpoint

    router.add_api_route(
        "/credentials/verify", route(core.verify_credential), methods=["POST"],
        summary="Verify a Data Integrity credential", operation_id="verifyCredential",
        openapi_extra=_openapi("verifiableCredential", _CHECKS), response_class=JSONResponse,
        dependencies=[count_outcome("verification")])
    router.add_api_route(
        "/presentations/verify", route(core.verify_presentation), methods=["POST"],
        summary="Verify a Data Integrity presentation and the credentials in it",
        operation_id="verifyPresentation",
        openapi_extra=_openapi("verifiablePresentation", {
            **_CHECKS, "challenge": {"type": "string"}, "domain": {"type": "string"}}),
        response_class=JSONResponse, dependencies=[count_outcome("verification")])

    @router.post("/challenges", summary="A fresh single-use challenge",
                 operation_id="createChallenge")
    def challenges() -> dict[str, str]:
        return {"challenge": core.new_challenge()}

    return router
