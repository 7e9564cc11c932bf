"""Liveness and readiness, one router that every service mounts with its own checks.

* ``GET /healthz``, liveness: the process answers HTTP. It checks nothing
  else, on purpose: an orchestrator restarts a process whose liveness fails,
  and restarting does not bring a database back.
* ``GET /readyz``, readiness: every check the service registered runs now
  (the database answers and is migrated, the master key opens the keys, the
  nonce/session store answers). ``200 {"status": "ready", "checks": {...}}``,
  or ``503`` problem+json whose ``code`` is the first failing check's and whose
  ``checks`` member says what each check found. Take traffic away, do not
  restart.

A check is ``() -> str`` (what it found, e.g. a schema revision) and raises
:class:`TesseraError` when not ready; anything else it raises is reported by
type only (a driver's message may hold a connection string).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from tessera.errors import ErrorCode, TesseraError
from tessera.web import problem_response, problem_responses

__all__ = ["Check", "health_router", "run_checks", "unavailable"]

Check = Callable[[], str]


def unavailable(what: str, exc: BaseException) -> TesseraError:
    """A store that did not answer, named by type only."""
    if isinstance(exc, TesseraError):
        return exc
    return TesseraError(ErrorCode.DATABASE_UNAVAILABLE, f"{what} did not answer "
                                                        f"({type(exc).__name__})")


def run_checks(checks: Mapping[str, Check]) -> tuple[dict[str, str], TesseraError | None]:
    """Every check's finding, and the first failure (or None when all passed)."""
    results: dict[str, str] = {}
    first: TesseraError | None = None
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as exc:
            error = exc if isinstance(exc, TesseraError) else TesseraError(
                ErrorCode.INTERNAL_ERROR, f"{name} check failed ({type(exc).__name__})")
            results[name] = f"{error.code.value}: {error.detail}"
            first = first or error
    return results, first


def health_router(checks: Mapping[str, Check]) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    def healthz() -> dict[str, str]:
        """Liveness: the process answers (it checks nothing else)."""
        return {"status": "ok"}

    @router.get("/readyz", responses=problem_responses({503: "a check failed; `checks` "
                                                             "says which"}))
    def readyz() -> JSONResponse:
        """Readiness: each of the service's checks, run now."""
        results, failed = run_checks(checks)
        if failed is not None:
            return problem_response(failed, status=503, extra={"checks": results})
        return JSONResponse({"status": "ready", "checks": results},
                            headers={"Cache-Control": "no-store"})

    return router
