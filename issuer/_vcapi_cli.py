"""``tessera vcapi serve``: a standalone W3C VC API server for the interop test suites.

It puts the issuer routes (:mod:`issuer._vcapi`) and the verifier routes
(:mod:`verifier._vcapi`) in one small app with did:key issuers made from
private JWK files: an Ed25519 key issues ``eddsa-rdfc-2022`` at
``/eddsa/credentials/issue``, a P-256 key ``ecdsa-rdfc-2019`` at
``/ecdsa/credentials/issue`` and ``ecdsa-sd-2023`` at
``/ecdsa-sd/credentials/issue``; ``/credentials/issue`` takes
``options.cryptosuite``. See ``docs/vc-api.md`` for the suites' config.

This is a test harness that composes the two roles, which is why the
verifier side is imported here, lazily; the brand service itself
(:mod:`issuer._app`) never imports the verifier.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Final

import typer
from fastapi import FastAPI, Request

from issuer._vcapi import VcApiIssuer, vcapi_issuer_router
from tessera import jsonld
from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError
from tessera.health import Check, health_router
from tessera.keys import signer_from_jwk
from tessera.observability import configure_logging, install_observability
from tessera.typing import Signer
from tessera.web import install_problem_handlers

__all__ = ["create_vcapi_app", "issuers_for", "vcapi_app"]

_log = logging.getLogger("tessera.vcapi")

# The VC API answers a bad request with 400 whatever went wrong in it. The
# VC API routes never refuse a caller; /metrics does (tessera.observability).
_VCAPI_STATUS: Final = {ErrorCode.TOO_LARGE: 413, ErrorCode.NOT_FOUND: 404,
                        ErrorCode.INTERNAL_ERROR: 500, ErrorCode.STATUS_UNAVAILABLE: 503,
                        ErrorCode.UNAUTHORIZED: 401, ErrorCode.FORBIDDEN: 403}


def _vcapi_status(request: Request, error: TesseraError) -> tuple[int | None, dict[str, Any]]:
    return _VCAPI_STATUS.get(error.code, 400), {}


def issuers_for(signers: Sequence[Signer]) -> list[VcApiIssuer]:
    """did:key issuers: Ed25519 -> /eddsa, P-256 -> /ecdsa and /ecdsa-sd (one key per curve)."""
    out: list[VcApiIssuer] = []
    seen: set[str] = set()
    for signer in signers:
        crv = signer.public_key.crv
        if crv in seen:
            raise TesseraError(ErrorCode.INVALID_REQUEST, f"more than one {crv} key given")
        seen.add(crv)
        if crv == "Ed25519":
            out.append(VcApiIssuer.did_key(signer, "eddsa-rdfc-2022", "/eddsa"))
        elif crv == "P-256":
            out.append(VcApiIssuer.did_key(signer, "ecdsa-rdfc-2019", "/ecdsa"))
            out.append(VcApiIssuer.did_key(signer, "ecdsa-sd-2023", "/ecdsa-sd"))
        else:
            raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                               f"no VC API cryptosuite for {crv} keys")
    return out


def _readiness_checks(issuers: Sequence[VcApiIssuer]) -> dict[str, Check]:
    """What ``/readyz`` checks (tessera.health): every issuing key still signs."""
    def keys() -> str:
        for issuer in issuers:
            issuer.signer.public_key.verify(issuer.signer.sign(b"readyz"), b"readyz")
        return f"{len(issuers)} issuers"

    return {"keys": keys}


def create_vcapi_app(
    issuers: Sequence[VcApiIssuer],
    *,
    loader: jsonld.DocumentLoader | None = None,
    **verifier_settings: Any,
) -> FastAPI:
    """Issuer and verifier routes in one app; ``verifier_settings`` go to ``VcApiVerifier``.

    It mounts the services' shared stack as the issuer and verifier services
    do: ``/healthz`` and ``/readyz`` (:mod:`tessera.health`), ``/metrics``,
    request ids and one JSON log line per request (:mod:`tessera.observability`).
    """
    from verifier._vcapi import VcApiVerifier, vcapi_verifier_router

    app = FastAPI(
        title="Tessera VC API",
        version="1.0",
        description="W3C VC API issuer and verifier endpoints (Data Integrity: "
                    "eddsa-rdfc-2022, ecdsa-rdfc-2019, ecdsa-sd-2023) for the W3C "
                    "interop test suites. Errors are RFC 9457 problem documents with a "
                    "Tessera error `code`.",
    )
    install_problem_handlers(app, customize=_vcapi_status)
    app.include_router(health_router(_readiness_checks(issuers)))
    install_observability(app, service="vcapi")
    clock = verifier_settings.get("clock")
    issuer_kwargs: dict[str, Any] = {"loader": loader}
    if clock is not None:
        issuer_kwargs["clock"] = clock
    app.include_router(vcapi_issuer_router(issuers, **issuer_kwargs))
    app.include_router(vcapi_verifier_router(VcApiVerifier(loader=loader, **verifier_settings)))
    return app


vcapi_app = typer.Typer(help="W3C VC API server for the interop test suites.",
                        no_args_is_help=True)


def _load_contexts(specs: Sequence[str]) -> jsonld.DocumentLoader | None:
    extra: dict[str, dict[str, Any]] = {}
    for spec in specs:
        url, sep, path = spec.partition("=")
        if not sep or not url or not path:
            raise typer.BadParameter(f"--context wants URL=FILE, got {spec!r}")
        try:
            extra[url] = parse_json_object(Path(path).read_bytes(), max_bytes=1024 * 1024)
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
    return jsonld.DocumentLoader(extra) if extra else None


@vcapi_app.command("serve")
def serve(
    key: Annotated[list[Path], typer.Option(
        help="Private JWK file (Ed25519 and/or P-256); repeat for several keys.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 40443,
    context: Annotated[list[str] | None, typer.Option(
        help="Extra JSON-LD context as URL=FILE (e.g. the VC examples context), not pinned; "
             "repeatable."
    )] = None,
    contexts: Annotated[Path | None, typer.Option(
        help="Manifest of extra JSON-LD contexts, each file pinned by its digest: "
             '{"URL": {"file": "FILE", "digestSRI": "sha256-..."}}.'
    )] = None,
    issuer_must_control_key: Annotated[bool, typer.Option(
        "--issuer-must-control-key/--any-issuer-key",
        help="Refuse credentials whose proof key is not a key of their issuer "
             "(issuer_key_mismatch).")] = True,
    require_issued_challenge: Annotated[bool, typer.Option(
        help="Accept only presentation challenges minted by POST /challenges.")] = False,
    require_holder_binding: Annotated[bool, typer.Option(
        help="Presentations must name a holder who is every credential's subject "
             "(off: VCDM 2.0 verification, with a warning per unbound credential).")] = False,
    allow_http: Annotated[bool, typer.Option(
        help="Let did:web and status lists be fetched over plain http (local suites).")] = False,
    fetch_budget: Annotated[float | None, typer.Option(
        envvar="TESSERA_FETCH_BUDGET", metavar="SECONDS",
        help="Time one verification may spend fetching DID documents and status lists, "
             "all fetches together (at most 120)  [default: 10]")] = None,
) -> None:
    """Serve /credentials/issue, /credentials/verify, /presentations/verify."""
    import uvicorn

    from tessera.did import HttpFetcher, fetch_budget_seconds

    try:
        budget = fetch_budget_seconds(fetch_budget)
        signers: list[Signer] = []
        for path in key:
            try:
                signers.append(signer_from_jwk(parse_json_object(path.read_bytes())))
            except OSError as exc:
                raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
        issuers = issuers_for(signers)
        if contexts is not None and context:
            raise typer.BadParameter("give either --context or --contexts, not both")
        loader = (jsonld.DocumentLoader.from_manifest(contexts) if contexts is not None
                  else _load_contexts(context or []))
        app = create_vcapi_app(
            issuers, loader=loader,
            # One fetch may use the whole budget; the budget bounds them all together.
            fetcher=HttpFetcher(allow_http=allow_http, deadline=budget),
            fetch_budget=timedelta(seconds=budget),
            require_issued_challenge=require_issued_challenge,
            require_holder_binding=require_holder_binding,
            issuer_must_control_key=issuer_must_control_key,
        )
    except TesseraError as exc:
        typer.echo(json.dumps({"error": exc.code.value, "detail": exc.detail}), err=True)
        raise typer.Exit(2) from exc
    for issuer in issuers:
        typer.echo(f"{issuer.cryptosuite:16} {issuer.did}  "
                   f"http://{host}:{port}{issuer.path}/credentials/issue", err=True)
    try:
        configure_logging()
    except TesseraError as exc:
        typer.echo(json.dumps({"error": exc.code.value, "detail": exc.detail}), err=True)
        raise typer.Exit(2) from exc
    # Logging is tessera.observability's: one JSON line per request, by route template,
    # instead of uvicorn's access log of raw paths.
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
