"""``tessera verifier ...``: run the verifier service and its checkout page; manage tills.

``serve`` validates its options once, in the parent process (so a bad trust
list or key file fails before any worker starts, and the key file is created
once), then hands them to uvicorn through ``TESSERA_VERIFIER_*`` variables:
each worker builds the app with :func:`verifier._service.app_from_env`.

``till create|list|revoke`` edit the till key file the service reads
(:mod:`verifier._tills`): a running service sees a new or revoked key on its
next request.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from tessera.devmode import ENV_ORIGINS
from tessera.did import ENV_FETCH_BUDGET
from tessera.errors import TesseraError
from verifier._tills import TillKeys

verifier_app = typer.Typer(help="Run the verifier service; manage its tills.",
                           no_args_is_help=True)
till_app = typer.Typer(help="Till keys: who may create checkout requests and read results.",
                       no_args_is_help=True)
verifier_app.add_typer(till_app, name="till")

TillsOpt = Annotated[Path, typer.Option(
    envvar="TESSERA_VERIFIER_TILLS",
    help="till key file (JSON; ids, labels and SHA-256 hashes of the keys, never a key)")]


def _fail(exc: TesseraError) -> typer.Exit:
    typer.echo(json.dumps({"error": exc.code.value, "detail": exc.detail}), err=True)
    return typer.Exit(2)


@till_app.command("create")
def till_create(tills: TillsOpt, label: Annotated[str, typer.Option(
        help="which till this is, e.g. 'store 12, lane 3'")] = "") -> None:
    """A key for one till; it is printed once, only its hash is stored."""
    try:
        typer.echo(json.dumps(TillKeys(tills).create(label), indent=2))
    except TesseraError as exc:
        raise _fail(exc) from None


@till_app.command("list")
def till_list(tills: TillsOpt) -> None:
    """The tills: ids, labels, created/revoked (never keys or hashes)."""
    try:
        typer.echo(json.dumps(TillKeys(tills).list(), indent=2))
    except TesseraError as exc:
        raise _fail(exc) from None


@till_app.command("revoke")
def till_revoke(tills: TillsOpt, key_id: Annotated[str, typer.Argument(
        help="the till id (the part after tvk_)")]) -> None:
    """Revoke a till's key: refused from its next request on, by every worker."""
    try:
        typer.echo(json.dumps(TillKeys(tills).revoke(key_id), indent=2))
    except TesseraError as exc:
        raise _fail(exc) from None


@verifier_app.command("serve")
def serve(
    trust: Annotated[Path, typer.Option(help="trust list JSON file")],
    key: Annotated[Path | None, typer.Option(
        help="verifier key file (private JWK; created with mode 0600 if absent; sealed "
             "under TESSERA_MASTER_KEY when that is set). Without it: a key for this run "
             "only, and a single worker")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8090,
    workers: Annotated[int, typer.Option(
        min=1, max=64, help="uvicorn worker processes (more than 1 needs --key and a "
                            "SQL or Redis store)")] = 1,
    base_url: Annotated[str | None, typer.Option(
        envvar="TESSERA_VERIFIER_BASE_URL",
        help="public URL wallets reach (default http://HOST:PORT)")] = None,
    store: Annotated[str, typer.Option(
        envvar="TESSERA_VERIFIER_STORE",
        help="nonce and session store: sqlite:///file, postgresql://…, redis://…")]
    = "sqlite:///tessera-verifier.db",
    prefix: Annotated[str, typer.Option(
        help="client identifier prefix: decentralized_identifier or redirect_uri")]
    = "decentralized_identifier",
    response_mode: Annotated[str, typer.Option(
        help="default response mode: direct_post or direct_post.jwt (encrypted)")]
    = "direct_post",
    name: Annotated[str, typer.Option(help="name shown on the member's consent screen")]
    = "Partner checkout",
    contact: Annotated[list[str] | None, typer.Option(help="contact shown to members")] = None,
    did_document: Annotated[list[Path] | None, typer.Option(
        help="pin an issuer DID document (offline did:web); repeatable")] = None,
    tills: Annotated[Path | None, typer.Option(
        envvar="TESSERA_VERIFIER_TILLS",
        help="till key file (`tessera verifier till create`). Without it: one till key "
             "for this run only, printed at start, and a single worker")] = None,
    log_level: Annotated[str | None, typer.Option(
        help="log level: debug, info, warning, error (default TESSERA_LOG_LEVEL, else "
             "info)")] = None,
    dev_origin: Annotated[list[str] | None, typer.Option(
        help="DEVELOPMENT MODE: fetch DID documents and status lists of this local origin "
             "over http (http://localhost:8000, or ORIGIN=TARGET); repeatable; also "
             "TESSERA_DEV_ORIGINS. Refused beside TESSERA_ENV=production")] = None,
    fetch_budget: Annotated[float | None, typer.Option(
        envvar="TESSERA_FETCH_BUDGET", metavar="SECONDS",
        help="time one verification may spend fetching DID documents and status lists, "
             "all fetches together (at most 120)  [default: 10]")] = None,
) -> None:
    """Serve OpenID4VP requests, the response endpoint and the checkout page."""
    import uvicorn

    from tessera.observability import (
        ENV_LOG_LEVEL,
        configure_logging,
        share_metrics_between_workers,
    )
    from tessera.serving import (
        HTTP_PROTOCOL,
        LOOP_FACTORY,
        accept_delay_from_env,
        freeze_heap_after_startup,
    )
    from verifier._service import create_app, settings_from_env

    env = {
        "TESSERA_VERIFIER_TRUST": str(trust.resolve()),
        "TESSERA_VERIFIER_KEY": str(key.resolve()) if key else "",
        "TESSERA_VERIFIER_BASE_URL": base_url or f"http://{host}:{port}",
        "TESSERA_VERIFIER_STORE": store,
        "TESSERA_VERIFIER_PREFIX": prefix,
        "TESSERA_VERIFIER_RESPONSE_MODE": response_mode,
        "TESSERA_VERIFIER_NAME": name,
        "TESSERA_VERIFIER_CONTACTS": json.dumps(contact or []),
        "TESSERA_VERIFIER_DID_DOCUMENTS": json.dumps(
            [str(p.resolve()) for p in did_document or []]),
        "TESSERA_VERIFIER_WORKERS": str(workers),
        "TESSERA_VERIFIER_TILLS": str(tills.resolve()) if tills else "",
    }
    named = [*(dev_origin or []),
             *(s for s in os.environ.get(ENV_ORIGINS, "").split(",") if s.strip())]
    if named:
        env[ENV_ORIGINS] = ",".join(named)
    if fetch_budget is not None:  # the workers read it as settings_from_env does
        env[ENV_FETCH_BUDGET] = repr(fetch_budget)
    try:
        settings = settings_from_env({**os.environ, **env})
        if workers > 1:
            accept_delay_from_env()
    except TesseraError as exc:
        raise _fail(exc) from None
    if settings.tills is None:
        # One process, no till file: a till key that lives as long as this run.
        settings = dataclasses.replace(settings, tills=TillKeys())
        assert settings.tills is not None
        one_run = settings.tills.create("this run")
        typer.echo(f"till key for this run (pass --tills FILE to keep keys): "
                   f"{one_run['token']}", err=True)
    assert settings.signer is not None
    os.environ.update(env)
    if named:
        typer.secho(f"DEVELOPMENT MODE: plain http from {', '.join(named)} "
                    "(never in production)", err=True, fg="yellow", bold=True)
    did = (settings.signer.key_id or "").split("#", 1)[0]
    typer.echo(f"verifier {did} at {settings.base_url} "
               f"({workers} worker{'s' if workers > 1 else ''}, store "
               f"{store.split('://', 1)[0]})", err=True)
    try:  # last: a refused start leaves logging as it was
        configure_logging(level=log_level)
    except TesseraError as exc:
        raise _fail(exc) from None
    if log_level:
        os.environ[ENV_LOG_LEVEL] = log_level  # the workers configure themselves from it
    # Logging is ours (tessera.observability): JSON lines, one per request with its
    # route template, instead of uvicorn's access log of raw paths.
    if workers == 1:
        # One process: serve the app already built (a one-run key stays the one
        # printed above).
        uvicorn.run(freeze_heap_after_startup(create_app(settings)), host=host, port=port,
                    log_config=None, access_log=False, http=HTTP_PROTOCOL)
    else:
        share_metrics_between_workers(workers)
        # TCP_NODELAY on every connection: with workers, uvicorn's own listening
        # socket leaves Nagle on (tessera.serving), which made 2 workers slower than 1.
        # Each worker takes connections one at a time, the one holding fewer first
        # (tessera.serving): libuv alone accepted a burst all in one worker.
        uvicorn.run("verifier._service:app_from_env", factory=True, host=host, port=port,
                    workers=workers, log_config=None, access_log=False, http=HTTP_PROTOCOL,
                    loop=LOOP_FACTORY)
