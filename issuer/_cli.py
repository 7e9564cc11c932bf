"""``tessera issuer ...``: run, migrate and administer the issuer from a shell.

The commands mirror the admin API and work on the configured database
(``TESSERA_DATABASE_URL``) through the same data functions, so a brand can be
set up and a member served without writing code. Output is JSON on stdout;
errors are ``error: <code>: <detail>`` on stderr with exit status 1.
Operator-only commands (``brand create``) have no HTTP counterpart.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from issuer import _admin, _ledger
from issuer._db import WORKERS_ENV, describe_database, make_engine, session_scope
from issuer._keystore import SqlKeyStore
from issuer._models import BrandCreate, MemberEnrol, ProgramCreate, TierCreate, utcnow
from issuer._settings import (
    DEFAULT_DATABASE_URL,
    MASTER_KEY_FILE_ENV,
    Settings,
    generate_master_key,
)
from tessera.did import Resolver
from tessera.errors import ErrorCode, TesseraError
from tessera.files import write_private

__all__ = ["app_from_env", "issuer_app"]

T = TypeVar("T")

issuer_app = typer.Typer(help="The brand-side service: run it, migrate it, administer it.",
                         no_args_is_help=True)
brand_app = typer.Typer(help="Brands (tenants).", no_args_is_help=True)
apikey_app = typer.Typer(help="API keys of a brand.", no_args_is_help=True)
program_app = typer.Typer(help="Programs and tiers.", no_args_is_help=True)
member_app = typer.Typer(help="Members.", no_args_is_help=True)
points_app = typer.Typer(help="The points ledger.", no_args_is_help=True)
offer_app = typer.Typer(help="OpenID4VCI credential offers.", no_args_is_help=True)
partner_app = typer.Typer(help="Partners of a brand and their keys.", no_args_is_help=True)
holds_app = typer.Typer(help="Point holds.", no_args_is_help=True)
credential_app = typer.Typer(help="Issued credentials: revoke, suspend, resume.",
                             no_args_is_help=True)
log_app = typer.Typer(help="The points transparency log of each brand.", no_args_is_help=True)
for _sub, _name in ((brand_app, "brand"), (apikey_app, "apikey"), (program_app, "program"),
                    (member_app, "member"), (points_app, "points"), (offer_app, "offer"),
                    (credential_app, "credential"), (holds_app, "holds"),
                    (partner_app, "partner"), (log_app, "log")):
    issuer_app.add_typer(_sub, name=_name)

BrandOpt = Annotated[str, typer.Option("--brand", "-b", help="brand slug")]
MemberOpt = Annotated[str, typer.Option("--member", "-m", help="member id")]
KeyOpt = Annotated[str | None, typer.Option(
    "--idempotency-key", "-k", help="the partner transaction id; default: a fresh UUID "
                                    "(printed, so a retry can reuse it)")]


def app_from_env() -> Any:
    """The ASGI app for uvicorn (``factory=True``), configured from the environment."""
    from issuer._app import create_app
    from tessera.observability import configure_logging
    from tessera.serving import freeze_heap_after_startup

    configure_logging()  # in each worker: spawned processes start with no handlers
    # The start-up heap out of the collector's walks (tessera.serving): full
    # collections had stalled a worker's requests for 100+ ms.
    return freeze_heap_after_startup(create_app(Settings.from_env()))


def _database_url() -> str:
    return (os.environ.get("TESSERA_DATABASE_URL") or os.environ.get("DATABASE_URL")
            or DEFAULT_DATABASE_URL)


def _engine(*, check: bool = True) -> Engine:
    engine = make_engine(_database_url())
    if check:  # an unmigrated database: one clear error, not a traceback at the first query
        from issuer.migrations import require_current

        try:
            _run(lambda: require_current(engine))
        except BaseException:
            engine.dispose()
            raise
    return engine


def _out(value: Any) -> None:
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    typer.echo(json.dumps(value, indent=2, default=str))


def _run(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except TesseraError as exc:
        typer.echo(f"error: {exc.code.value}: {exc.detail}", err=True)
        raise typer.Exit(1) from None
    except ValidationError as exc:
        typer.echo(f"error: {ErrorCode.INVALID_REQUEST.value}: {exc}", err=True)
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:  # the database went away mid-command
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        typer.echo(f"error: {ErrorCode.DATABASE_UNAVAILABLE.value}: {cause}", err=True)
        raise typer.Exit(1) from None


def _write(fn: Callable[[Session], T]) -> T:
    engine = _engine()
    try:
        return _run(lambda: _ledger.run_write(engine, fn))
    finally:
        engine.dispose()


def _read(fn: Callable[[Session], T]) -> T:
    engine = _engine()
    try:
        with session_scope(engine) as session:
            return _run(lambda: fn(session))
    finally:
        engine.dispose()


def _brand_id(session: Session, slug: str) -> Any:
    return _admin.brand_by_slug(session, slug=slug)


# -- service ---------------------------------------------------------------------------------


@issuer_app.command()
def serve(host: str = "127.0.0.1", port: int = 8000,
          workers: Annotated[int, typer.Option(min=1, max=64)] = 1) -> None:
    """Run the HTTP service with uvicorn (migrate first)."""
    import uvicorn

    from tessera.observability import configure_logging, share_metrics_between_workers
    from tessera.serving import HTTP_PROTOCOL, LOOP_FACTORY, accept_delay_from_env

    settings = _run(lambda: Settings.from_env())  # fail fast on a missing master key
    _engine().dispose()  # ... and on a database that is not there or not migrated
    if workers > 1:
        _run(accept_delay_from_env)  # ... and on a TESSERA_ACCEPT_DELAY_MS out of range
    warning = public_url_mismatch(settings.public_url, host, port)
    if warning:
        typer.secho(f"warning: {warning}", err=True, fg="yellow", bold=True)
    _run(lambda: configure_logging())  # last: a refused start leaves logging as it was
    share_metrics_between_workers(workers)
    # Each worker sizes its PostgreSQL pool to its share (issuer._db.pool_size_per_worker).
    os.environ[WORKERS_ENV] = str(workers)
    # Logging is ours (tessera.observability): JSON lines, one per request with its
    # route template, instead of uvicorn's access log of raw paths.
    # TCP_NODELAY on every connection: with workers, uvicorn's own listening socket
    # leaves Nagle on (tessera.serving), ~40 ms lost per response. With workers, each
    # takes connections one at a time, the one holding fewer first (tessera.serving):
    # libuv alone accepted a burst of keep-alive connections all in one worker.
    uvicorn.run("issuer._cli:app_from_env", factory=True, host=host, port=port,
                workers=workers, proxy_headers=True, log_config=None, access_log=False,
                http=HTTP_PROTOCOL, loop=LOOP_FACTORY if workers > 1 else "auto")


def public_url_mismatch(public_url: str, host: str, port: int) -> str | None:
    """Development only (an http URL on a local name): does TESSERA_PUBLIC_URL name the
    address we listen on? Brand DIDs and offer URLs are built from it, so a mismatch
    gives DIDs nobody can resolve. Behind a proxy (https) the two differ by design."""
    import urllib.parse

    from tessera.devmode import is_local_host

    parsed = urllib.parse.urlsplit(public_url)
    named = parsed.hostname or ""
    if parsed.scheme != "http" or not is_local_host(named):
        return None
    named_port = parsed.port or 80
    loopback = {"localhost", "127.0.0.1", "::1"}
    same_host = (host in ("0.0.0.0", "::") or host == named  # noqa: S104 - compared, not bound
                 or (host in loopback and named in loopback))
    if named_port == port and same_host:
        return None
    return (f"TESSERA_PUBLIC_URL is {public_url} but the service listens on {host}:{port}: "
            f"brand DIDs and offer URLs will name {named}:{named_port}. Set "
            f"TESSERA_PUBLIC_URL=http://{'localhost' if host in loopback else host}:{port} "
            "(see docs/configuration.md)")


@issuer_app.command()
def migrate(revision: str = "head") -> None:
    """Create or upgrade the database schema (Alembic)."""
    from issuer.migrations import current, upgrade

    engine = _engine(check=False)
    try:
        _run(lambda: _upgrade(engine, revision, upgrade))
        _out({"database": describe_database(engine.url), "revision": current(engine)})
    finally:
        engine.dispose()


def _upgrade(engine: Engine, revision: str, upgrade: Callable[[Engine, str], None]) -> None:
    try:
        upgrade(engine, revision)
    except SQLAlchemyError as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        raise TesseraError(ErrorCode.DATABASE_UNAVAILABLE,
                           f"cannot migrate {describe_database(engine.url)}: {cause}") from None


@issuer_app.command()
def init(
    master_key_file: Annotated[Path | None, typer.Option(
        help="where to keep the master key, created with mode 0600 unless it exists "
             "[default: $TESSERA_MASTER_KEY_FILE or ./tessera-master.key]")] = None,
) -> None:
    """First run: a master key file, the migrated database, and the commands to run next."""
    from issuer.migrations import current, upgrade

    env_key = os.environ.get("TESSERA_MASTER_KEY", "").strip()
    key_path = (master_key_file or Path(os.environ.get(MASTER_KEY_FILE_ENV, "").strip()
                                        or "tessera-master.key")).resolve()
    if env_key:
        key_note = "master key: from TESSERA_MASTER_KEY (no file written)"
    else:
        key_note = f"master key: {key_path} ({_ensure_master_key(key_path)})"
    engine = _engine(check=False)
    try:
        _run(lambda: _upgrade(engine, "head", upgrade))
        where, revision = describe_database(engine.url), current(engine)
    finally:
        engine.dispose()
    typer.echo(key_note)
    typer.echo(f"database: {where} (schema {revision})")
    typer.echo("next, in this shell:")
    if not env_key:
        typer.echo(f"  export {MASTER_KEY_FILE_ENV}={key_path}")
    if not (os.environ.get("TESSERA_DATABASE_URL") or os.environ.get("DATABASE_URL")):
        typer.echo(f"  export TESSERA_DATABASE_URL={where}")
    typer.echo("  tessera issuer serve --port 8000 &")
    typer.echo('  tessera issuer brand create acme --name "Acme"')
    typer.echo("  (docs/issuer-service.md walks through the rest)")


def _ensure_master_key(path: Path) -> str:
    if path.exists():
        _run(lambda: Settings.from_env({MASTER_KEY_FILE_ENV: str(path)}))  # must be a valid key
        return "kept: it already exists"
    write_private(path, (generate_master_key() + "\n").encode("ascii"), replace=False)
    return "created, mode 0600; back it up: it seals every brand's keys"


@issuer_app.command("master-key")
def master_key() -> None:
    """Print a fresh master key for TESSERA_MASTER_KEY."""
    typer.echo(generate_master_key())


# -- brands and API keys --------------------------------------------------------------------


@brand_app.command("create")
def brand_create(slug: str, name: Annotated[str, typer.Option()],
                 alg: Annotated[str, typer.Option(help="EdDSA, ES256 or ES384")] = "EdDSA"
                 ) -> None:
    """Create a brand, its did:web DID, its first signing key and API key (shown once)."""
    settings = _run(Settings.from_env)
    keystore = SqlKeyStore(settings.master_key)

    def run(session: Session) -> dict[str, Any]:
        data = BrandCreate(slug=slug, name=name)
        brand, key = _admin.create_brand(session, keystore=keystore, data=data,
                                         did=settings.brand_did(slug), alg=alg)
        return {"id": brand.id, "slug": brand.slug, "did": brand.did,
                "did_document_url": f"{settings.public_url}/brands/{slug}/did.json",
                "api_key": key.token}

    _out(_write(run))


@brand_app.command("rotate-key")
def brand_rotate_key(brand: BrandOpt, alg: str | None = None) -> None:
    """New signing key; the old one stays in the DID document for verification."""
    settings = _run(Settings.from_env)
    keystore = SqlKeyStore(settings.master_key)

    def run(session: Session) -> Any:
        b = _brand_id(session, brand)
        return keystore.rotate(session, brand_id=b.id, did=b.did, alg=alg)

    _out(_write(run))


@apikey_app.command("create")
def apikey_create(brand: BrandOpt, label: str = "") -> None:
    """A new API key for a brand; the token is printed once, only its hash is stored."""
    _out(_write(lambda s: _admin.create_api_key(s, brand_id=_brand_id(s, brand).id,
                                                label=label)))


@apikey_app.command("list")
def apikey_list(brand: BrandOpt) -> None:
    """The brand's API keys: ids, labels, created/revoked (never secrets or hashes)."""
    _out([k.model_dump(mode="json") for k in _read(
        lambda s: _admin.list_api_keys(s, brand_id=_brand_id(s, brand).id))])


@apikey_app.command("revoke")
def apikey_revoke(brand: BrandOpt, key_id: Annotated[str, typer.Argument(
        help="the key id (the part after tsk_)")]) -> None:
    """Revoke an API key at once (not the brand's last active one)."""
    _out(_write(lambda s: _admin.revoke_api_key(s, brand_id=_brand_id(s, brand).id,
                                                key_id=key_id, now=utcnow())))


# -- programs ---------------------------------------------------------------------------------


def _parse_tier(spec: str) -> TierCreate:
    parts = spec.split(":")
    if not 3 <= len(parts) <= 6:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           "tier is name:rank:qualifying[:period_days[:grace_days[:policy]]]")
    fields: dict[str, Any] = {"name": parts[0], "rank": parts[1], "qualifying_points": parts[2]}
    for key, value in zip(("qualification_period_days", "grace_period_days",
                           "downgrade_policy"), parts[3:], strict=False):
        fields[key] = value
    # Command-line values are strings: lax parsing, unlike the JSON body.
    return TierCreate.model_validate(fields, strict=False)


@program_app.command("create")
def program_create(
    brand: BrandOpt,
    name: Annotated[str | None, typer.Option(help="program name")] = None,
    tier: Annotated[list[str] | None, typer.Option(
        help="name:rank:qualifying[:period_days[:grace_days[:policy]]], repeatable")] = None,
    return_window_days: int = 0,
    points_validity_days: int | None = None,
    ladder: Annotated[str | None, typer.Option(help="comma-separated points ladder")] = None,
    from_json: Annotated[Path | None, typer.Option(
        help="a ProgramCreate JSON document (as POST /admin/v1/programs takes)")] = None,
) -> None:
    """Create a program with its tiers and points ladder."""
    def build() -> ProgramCreate:
        if from_json is not None:
            return ProgramCreate.model_validate_json(from_json.read_bytes())
        if not name:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "--name or --from-json is required")
        body: dict[str, Any] = {
            "name": name, "return_window_days": return_window_days,
            "points_validity_days": points_validity_days,
            "tiers": [_parse_tier(t) for t in tier or []]}
        if ladder:
            body["points_ladder"] = [int(v) for v in ladder.split(",") if v.strip()]
        return ProgramCreate.model_validate(body)

    data = _run(build)
    _out(_write(lambda s: _admin.create_program(s, brand_id=_brand_id(s, brand).id,
                                                data=data)))


# -- members ----------------------------------------------------------------------------------


@member_app.command("challenge")
def member_challenge(brand: BrandOpt, ttl_seconds: int = 300) -> None:
    """A single-use nonce for the member's wallet to sign (proof of DID control)."""
    _out(_write(lambda s: _admin.new_enrolment_challenge(
        s, brand=_brand_id(s, brand), now=utcnow(), ttl_seconds=ttl_seconds)))


@member_app.command("enrol")
def member_enrol(brand: BrandOpt,
                 program: Annotated[str, typer.Option(help="program id")],
                 did: Annotated[str, typer.Option(help="the member's DID")],
                 proof: Annotated[str, typer.Option(
                     help="compact JWS over the challenge (see `member challenge`); "
                          "'-' reads it from stdin")]) -> None:
    """Enrol a DID that proved control over a challenge."""
    jws = sys.stdin.read().strip() if proof == "-" else proof
    data = _run(lambda: MemberEnrol(program_id=program, did=did, proof=jws))
    resolver = Resolver()

    def run(session: Session) -> Any:
        now = utcnow()
        member = _admin.enrol_member(session, brand=_brand_id(session, brand), data=data,
                                     resolver=resolver, now=now)
        _ledger.evaluate_tier(session, member=member, now=now)
        return _admin.member_public(session, member)

    _out(_write(run))


@member_app.command("show")
def member_show(brand: BrandOpt, member: MemberOpt) -> None:
    engine = _engine()
    try:
        with session_scope(engine) as session:
            b = _run(lambda: _brand_id(session, brand))
            m = _run(lambda: _admin.get_member(session, brand_id=b.id, member_id=member))
            _out({"member": _admin.member_public(session, m).model_dump(mode="json"),
                  "balance": _ledger.balance(session, member=m, now=utcnow())
                  .model_dump(mode="json")})
    finally:
        engine.dispose()


# -- points -------------------------------------------------------------------------------------


def _points(operation: Callable[..., _ledger.Outcome], brand: str, member: str,
            key: str | None, **kwargs: Any) -> None:
    idempotency_key = key or str(uuid.uuid4())

    def run(session: Session) -> _ledger.Outcome:
        return operation(session, brand_id=_brand_id(session, brand).id, member_id=member,
                         idempotency_key=idempotency_key, now=utcnow(), **kwargs)

    outcome = _write(run)
    _out({"idempotency_key": idempotency_key, "replayed": outcome.replayed, **outcome.body})


@points_app.command("earn")
def points_earn(brand: BrandOpt, member: MemberOpt, points: int, key: KeyOpt = None,
                qualifying: Annotated[int | None, typer.Option(
                    help="qualifying points; default: the same")] = None,
                reference: str | None = None, pending_days: int | None = None) -> None:
    _points(_ledger.earn, brand, member, key, points=points, qualifying_points=qualifying,
            reference=reference, pending_days=pending_days)


@points_app.command("redeem")
def points_redeem(brand: BrandOpt, member: MemberOpt, points: int, key: KeyOpt = None,
                  reference: str | None = None) -> None:
    _points(_ledger.redeem, brand, member, key, points=points, reference=reference)


@points_app.command("adjust")
def points_adjust(brand: BrandOpt, member: MemberOpt,
                  points: Annotated[int, typer.Argument(help="signed change")],
                  reason: Annotated[str, typer.Option()],
                  operator: Annotated[str, typer.Option()],
                  key: KeyOpt = None, qualifying: int = 0) -> None:
    _points(_ledger.adjust, brand, member, key, points=points, reason=reason,
            operator=operator, qualifying_points=qualifying)


@points_app.command("reverse")
def points_reverse(brand: BrandOpt, member: MemberOpt, entry: int,
                   reason: Annotated[str, typer.Option()], key: KeyOpt = None,
                   operator: str | None = None) -> None:
    """Undo a ledger entry with a new reverse entry."""
    _points(_ledger.reverse, brand, member, key, entry_id=entry, reason=reason,
            operator=operator)


@holds_app.command("release-expired")
def holds_release_expired(
    brand: Annotated[str | None, typer.Option("--brand", "-b",
                                              help="brand slug; default: every brand")] = None,
    batch: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
) -> None:
    """Close every hold past its expiry (for cron): one zero-point expire entry each, logged."""
    released: list[Any] = []
    while True:  # one transaction per batch, so a big backlog does not hold locks for long
        def run(session: Session) -> list[Any]:
            brand_id = _brand_id(session, brand).id if brand is not None else None
            return _ledger.release_expired_holds(session, brand_id=brand_id, now=utcnow(),
                                                 limit=batch)
        done = _write(run)
        released.extend(h.model_dump(mode="json") for h in done)
        if len(done) < batch:
            break
    _out({"released": released, "count": len(released)})


# -- the transparency log ------------------------------------------------------------------------


@log_app.command("integrate")
def log_integrate(
    brand: Annotated[str | None, typer.Option("--brand", "-b",
                                              help="brand slug; default: every brand")] = None,
) -> None:
    """Put every pending leaf into the tree now and sign the new heads (the service's
    background sequencer does this within 1 s; this is for scripts and before a downgrade)."""
    from issuer._translog import integrate_all

    settings = _run(Settings.from_env)
    keystore = SqlKeyStore(settings.master_key)
    engine = _engine()
    try:
        brand_id = None
        if brand is not None:
            with session_scope(engine) as session:
                brand_id = _run(lambda: _brand_id(session, brand)).id
        count = _run(lambda: integrate_all(engine, keystore=keystore, clock=utcnow,
                                           brand_id=brand_id))
    finally:
        engine.dispose()
    _out({"integrated": count})


# -- partners and settlement -----------------------------------------------------------------

PartnerOpt = Annotated[str, typer.Option("--partner", "-p", help="partner id")]


@partner_app.command("create")
def partner_create(brand: BrandOpt, name: Annotated[str, typer.Option()],
                   client_id: Annotated[str, typer.Option(
                       help="the OpenID4VP Client Identifier of its requests (KB-JWT aud)")]
                   ) -> None:
    """Register a partner; its first key (tpk_...) is printed once."""
    from issuer._redemption import create_partner

    def check() -> None:  # the limits of POST /admin/v1/partners
        if not 1 <= len(name) <= 200 or not 1 <= len(client_id) <= 2048:
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               "name: 1-200 chars, client id: 1-2048 chars")

    _run(check)

    def run(session: Session) -> dict[str, Any]:
        partner, token = create_partner(session, brand_id=_brand_id(session, brand).id,
                                        name=name, client_id=client_id)
        return {"id": partner.id, "name": partner.name, "client_id": partner.client_id,
                "token": token}

    _out(_write(run))


@partner_app.command("list")
def partner_list(brand: BrandOpt) -> None:
    """The brand's partners and their keys (ids and dates, never secrets)."""
    from issuer._redemption import list_partners

    _out([p.model_dump(mode="json") for p in _read(
        lambda s: list_partners(s, brand_id=_brand_id(s, brand).id))])


@partner_app.command("add-key")
def partner_add_key(brand: BrandOpt, partner: PartnerOpt) -> None:
    """Another key for the partner, printed once (rotate: add, switch, revoke the old)."""
    from issuer._redemption import create_partner_key, get_partner

    def run(session: Session) -> dict[str, Any]:
        row = get_partner(session, brand_id=_brand_id(session, brand).id, partner_id=partner)
        return {"partner_id": row.id, "token": create_partner_key(session, partner_id=row.id)}

    _out(_write(run))


@partner_app.command("revoke-key")
def partner_revoke_key(brand: BrandOpt, partner: PartnerOpt, key_id: Annotated[str, typer.Argument(
        help="the key id (the part after tpk_)")]) -> None:
    """Revoke a partner key at once."""
    from issuer._redemption import revoke_partner_key

    _out(_write(lambda s: revoke_partner_key(s, brand_id=_brand_id(s, brand).id,
                                             partner_id=partner, key_id=key_id, now=utcnow())))


def _instant(value: str, option: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise TesseraError(ErrorCode.INVALID_REQUEST,
                           f"{option} must be an ISO 8601 date or date-time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@issuer_app.command("settlement")
def settlement(
    brand: BrandOpt, partner: PartnerOpt,
    start: Annotated[str, typer.Option("--from", help="start (inclusive), ISO 8601; UTC "
                                                      "unless an offset is given")],
    end: Annotated[str, typer.Option("--to", help="end (exclusive), ISO 8601")],
    csv_file: Annotated[Path | None, typer.Option("--csv", help="also write the CSV here")]
    = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="also write the signed "
                                                                  "JSON statement here")] = None,
) -> None:
    """A partner's signed settlement statement for [from, to), as GET /brands/{slug}/settlement."""
    from issuer._redemption import get_partner
    from issuer._redemption import settlement as build
    from tessera.redemption import statement_csv

    settings = _run(Settings.from_env)
    keystore = SqlKeyStore(settings.master_key)
    period = _run(lambda: (_instant(start, "--from"), _instant(end, "--to")))

    def run(session: Session) -> dict[str, Any]:
        b = _brand_id(session, brand)
        p = get_partner(session, brand_id=b.id, partner_id=partner)
        return build(session, keystore=keystore, brand=b, partner=p, start=period[0],
                     end=period[1], now=utcnow())

    statement = _read(run)
    if csv_file is not None:
        csv_file.write_bytes(statement_csv(statement).encode("utf-8"))  # CRLF kept
    if json_file is not None:
        json_file.write_text(json.dumps(statement, indent=2) + "\n", encoding="utf-8")
    _out(statement)


# -- offers and credentials --------------------------------------------------------------------


@offer_app.command("create")
def offer_create(
    brand: BrandOpt, member: MemberOpt,
    credential: Annotated[list[str] | None, typer.Option(
        "--credential", "-c", help="credential configuration id (repeatable); default: both "
                                   "types as dc+sd-jwt")] = None,
    tx_code: Annotated[int | None, typer.Option(
        help="require a numeric transaction code of this many digits (4-10)")] = None,
    tx_code_description: Annotated[str | None, typer.Option()] = None,
    ttl_seconds: int = 600,
    qr: Annotated[Path | None, typer.Option(help="also write a QR code PNG of the offer")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="print the whole offer as JSON")]
    = False,
) -> None:
    """A pre-authorized offer: prints the openid-credential-offer:// URI and the tx_code."""
    from issuer._openid4vci import OfferRequest, TxCodeRequest, create_offer

    settings = _run(Settings.from_env)
    ids = credential or ["LoyaltyMembershipCredential_sd_jwt", "LoyaltyPointsCredential_sd_jwt"]
    request = _run(lambda: OfferRequest(
        credential_configuration_ids=ids, ttl_seconds=ttl_seconds,
        tx_code=TxCodeRequest(length=tx_code, description=tx_code_description)
        if tx_code is not None else None))
    created = _write(lambda s: create_offer(s, settings=settings, brand=_brand_id(s, brand),
                                            member_id=member, request=request, now=utcnow()))
    if qr is not None:
        import segno

        segno.make(created.offer_uri, error="m").save(str(qr), kind="png", scale=6, border=4)
    if json_output:
        _out(created)
        return
    typer.echo(created.offer_uri)
    if created.tx_code is not None:
        typer.echo(f"tx_code: {created.tx_code}")


def _credential_state(brand: str, credential_id: str, state: str, reason: str | None) -> None:
    from issuer._models import CredentialState, IssuedCredentialPublic
    from issuer._status_lists import change_state

    def run(session: Session) -> IssuedCredentialPublic:
        cred = change_state(session, brand_id=_brand_id(session, brand).id,
                            credential_id=credential_id, state=CredentialState(state),
                            now=utcnow(), reason=reason)
        return IssuedCredentialPublic.model_validate(cred, from_attributes=True)

    _out(_write(run))


ReasonOpt = Annotated[str | None, typer.Option(help="recorded with the change")]


@credential_app.command("revoke")
def credential_revoke(brand: BrandOpt, credential_id: str, reason: ReasonOpt = None) -> None:
    """Revoke for good (the status list shows it as invalid from now on)."""
    _credential_state(brand, credential_id, "revoked", reason)


@credential_app.command("suspend")
def credential_suspend(brand: BrandOpt, credential_id: str, reason: ReasonOpt = None) -> None:
    _credential_state(brand, credential_id, "suspended", reason)


@credential_app.command("resume")
def credential_resume(brand: BrandOpt, credential_id: str, reason: ReasonOpt = None) -> None:
    """Lift a suspension."""
    _credential_state(brand, credential_id, "valid", reason)
