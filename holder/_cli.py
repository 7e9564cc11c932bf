"""``tessera wallet ...``: the member's wallet on the command line.

The passphrase comes from ``TESSERA_WALLET_PASSPHRASE`` or a prompt (never
an option, so it stays out of shell history). ``present`` shows the consent
screen GDPR art. 7 and PIPL art. 23 ask for: who is asking (name, identifier,
contact), why, each claim that would be shared and each one withheld; nothing
leaves the wallet without a yes (or ``--yes`` in scripts).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from holder._wallet import ConsentItem, ConsentRequest, Wallet
from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError

wallet_app = typer.Typer(help="The member's wallet.", no_args_is_help=True)
consents_app = typer.Typer(help="The consent log: list, export, withdraw.",
                           no_args_is_help=True)
wallet_app.add_typer(consents_app, name="consents")

PASSPHRASE_ENV = "TESSERA_WALLET_PASSPHRASE"  # noqa: S105 - the variable's name
DEFAULT_WALLET = Path.home() / ".tessera" / "wallet.json"

WalletOption = Annotated[Path, typer.Option(
    "--wallet", envvar="TESSERA_WALLET", help="wallet file")]
DocsOption = Annotated[list[Path] | None, typer.Option(
    "--did-document", help="pin a DID document (offline did:web); repeatable")]
DevOption = Annotated[list[str] | None, typer.Option(
    "--dev-origin", help="DEVELOPMENT MODE: fetch did:web documents of this local origin "
                         "over http (http://localhost:8000); repeatable; also "
                         "TESSERA_DEV_ORIGINS")]
KEY_PASSPHRASE_ENV = "TESSERA_KEY_PASSPHRASE"  # noqa: S105 - the variable's name

out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def _http_client() -> httpx.Client:
    """The HTTP client for verifiers; tests replace it."""
    return httpx.Client(timeout=10.0)


def _fail(exc: TesseraError) -> NoReturn:
    err.print(f"[red]error[/red] {exc.code.value}: {exc.detail}", markup=True)
    raise typer.Exit(1 if exc.code == ErrorCode.CONSENT_DENIED else 2)


def _passphrase(*, confirm: bool = False) -> str:
    value = os.environ.get(PASSPHRASE_ENV)
    if value:
        return value
    prompted: str = typer.prompt("Wallet passphrase", hide_input=True,
                                 confirmation_prompt=confirm)
    return prompted


def _resolver(documents: list[Path] | None, dev: list[str] | None = None) -> Any:
    from tessera.devmode import dev_fetcher, dev_origins
    from tessera.did import Resolver

    pinned: dict[str, dict[str, Any]] = {}
    for path in documents or []:
        try:
            doc = parse_json_object(path.read_bytes())
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from exc
        pinned[str(doc.get("id"))] = doc
    try:
        origins = dev_origins(dev or ())
    except TesseraError as exc:
        _fail(exc)
    return Resolver(dev_fetcher(origins), documents=pinned)


def _open(path: Path, documents: list[Path] | None = None,
          dev: list[str] | None = None) -> Wallet:
    try:
        return Wallet.open(path, _passphrase(), resolver=_resolver(documents, dev))
    except TesseraError as exc:
        _fail(exc)


@wallet_app.command("init")
def init(
    wallet: WalletOption = DEFAULT_WALLET,
    alg: Annotated[str, typer.Option(help="ES256 (default), ES384 or EdDSA")] = "ES256",
    import_key: Annotated[Path | None, typer.Option(
        "--import-key", help="use this key instead of a new one: a private JWK file, or one "
                             "sealed with `tessera key seal` (its passphrase from "
                             "TESSERA_KEY_PASSPHRASE or a prompt)")] = None,
) -> None:
    """Create a wallet: a fresh (or imported) key, its did:key, sealed under your passphrase."""
    try:
        signer = _load_key(import_key) if import_key is not None else None
        created = Wallet.create(wallet, _passphrase(confirm=True), alg=alg, signer=signer)
    except TesseraError as exc:
        _fail(exc)
    out.print(created.did)


def _load_key(path: Path) -> Any:
    from tessera.keys import signer_from_jwk, unseal_with_passphrase

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TesseraError(ErrorCode.NOT_FOUND, f"cannot read {path}: {exc.strerror}") from None
    document = parse_json_object(raw, max_bytes=64 * 1024)
    if "sealed" in document:
        box = document["sealed"]
        if not isinstance(box, dict):
            raise TesseraError(ErrorCode.MALFORMED, f"{path} is not a sealed key file")
        passphrase = os.environ.get(KEY_PASSPHRASE_ENV) or typer.prompt(
            f"Passphrase of {path}", hide_input=True)
        document = parse_json_object(unseal_with_passphrase(box, passphrase))
    if "d" not in document:
        raise TesseraError(ErrorCode.MALFORMED,
                           f"{path} holds no private key (a JWK with \"d\" is needed to sign)")
    return signer_from_jwk(document)


@wallet_app.command("did")
def did_cmd(
    wallet: WalletOption = DEFAULT_WALLET,
    jwk: Annotated[bool, typer.Option("--jwk", help="print the public JWK instead "
                                                    "(asks for the passphrase)")] = False,
) -> None:
    """Print the wallet's DID (public; safe to share with a brand)."""
    if jwk:
        typer.echo(json.dumps(_open(wallet).signer.public_key.to_jwk()))
        return
    try:
        outer = parse_json_object(wallet.read_bytes(), max_bytes=16 * 1024 * 1024)
    except OSError:
        _fail(TesseraError(ErrorCode.NOT_FOUND, f"no wallet at {wallet}"))
    except TesseraError as exc:
        _fail(exc)
    if not isinstance(outer.get("did"), str):
        _fail(TesseraError(ErrorCode.MALFORMED, "not a Tessera wallet file"))
    typer.echo(outer["did"])


@wallet_app.command("enrol")
def enrol(
    challenge: Annotated[Path, typer.Argument(
        help="the brand's enrolment challenge (JSON from `tessera issuer member challenge` "
             "or POST /admin/v1/enrolment-challenges); '-' reads stdin")],
    wallet: WalletOption = DEFAULT_WALLET,
) -> None:
    """Sign a brand's enrolment challenge: prints the proof (a JWS) to hand back."""
    import sys

    try:
        raw = sys.stdin.buffer.read() if str(challenge) == "-" else challenge.read_bytes()
    except OSError as exc:
        _fail(TesseraError(ErrorCode.NOT_FOUND, f"cannot read {challenge}: {exc.strerror}"))
    w = _open(wallet)
    try:
        typer.echo(w.enrolment_proof(parse_json_object(raw, max_bytes=16 * 1024)))
    except TesseraError as exc:
        _fail(exc)


@wallet_app.command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="file holding an SD-JWT VC")],
    wallet: WalletOption = DEFAULT_WALLET,
    did_document: DocsOption = None,
    dev_origin: DevOption = None,
) -> None:
    """Check an issued SD-JWT VC (issuer signature, bound to this wallet) and keep it."""
    w = _open(wallet, did_document, dev_origin)
    try:
        text = file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"cannot read {file}") from exc
    try:
        stored = w.receive(text)
    except TesseraError as exc:
        _fail(exc)
    out.print(f"{stored.id}  {stored.credential_type}  from {stored.issuer}")


@wallet_app.command("receive")
def receive(
    offer_uri: Annotated[str, typer.Argument(help="openid-credential-offer:// URI")],
    wallet: WalletOption = DEFAULT_WALLET,
    tx_code: Annotated[str | None, typer.Option(
        help="the code the brand sent separately, if the offer asks for one")] = None,
    did_document: DocsOption = None,
    dev_origin: DevOption = None,
) -> None:
    """Receive credentials from a brand's OpenID4VCI offer (pre-authorized flow)."""
    from holder._openid4vci import receive_offer

    w = _open(wallet, did_document, dev_origin)
    try:
        with _http_client() as http:
            stored = receive_offer(w, offer_uri, http_client=http, tx_code=tx_code)
    except TesseraError as exc:
        _fail(exc)
    for cred in stored:
        out.print(f"{cred.id}  {cred.credential_type}  from {cred.issuer}")


@wallet_app.command("list")
def list_cmd(wallet: WalletOption = DEFAULT_WALLET) -> None:
    """List the credentials in the wallet."""
    w = _open(wallet)
    table = Table(title=f"Credentials of {w.did}")
    for column in ("id", "type", "issuer", "received", "expires", "use"):
        table.add_column(column)
    for cred in w.credentials():
        expires = "" if cred.expires_at is None else _iso(cred.expires_at)
        use = ("one-time, used" if cred.spent_at else "one-time, unused") if cred.one_time \
            else "linkable"
        table.add_row(cred.id[:8], cred.credential_type, cred.issuer, cred.received_at[:19],
                      expires, use)
    out.print(table)


@wallet_app.command("pool")
def pool_cmd(
    wallet: WalletOption = DEFAULT_WALLET,
    top_up_below: Annotated[int | None, typer.Option(
        "--top-up-below", help="top a pool up after a presentation leaves fewer unused "
                               "one-time credentials than this (0: never on its own); "
                               "kept in the wallet")] = None,
) -> None:
    """One-time credentials left per type, and the top-up threshold."""
    w = _open(wallet)
    if top_up_below is not None:
        try:
            w.set_top_up_below(top_up_below)
        except TesseraError as exc:
            _fail(exc)
    for pool in w.pools():
        how = "tops up by refresh token" if pool.can_top_up else "no refresh token: new offer"
        out.print(f"{pool.credential_type} from {pool.issuer}: {pool.unused} unused, "
                  f"{pool.used} used ({how})")
    out.print(f"top up below: {w.top_up_below}")


@wallet_app.command("refresh")
def refresh_cmd(
    wallet: WalletOption = DEFAULT_WALLET,
    did_document: DocsOption = None,
    dev_origin: DevOption = None,
    all_pools: Annotated[bool, typer.Option(
        "--all", help="top up every pool, not only those below the threshold")] = False,
) -> None:
    """Top pools up now with their refresh tokens (no offer to scan)."""
    from holder._openid4vci import top_up

    w = _open(wallet, did_document, dev_origin)
    grants = w.grants() if all_pools else w.grants_running_low()
    failed = None
    with _http_client() as http:
        for grant in grants:
            try:
                got = top_up(w, grant, http_client=http)
            except TesseraError as exc:
                err.print(f"{', '.join(grant.credential_configuration_ids)} from "
                          f"{grant.credential_issuer}: {exc.code.value}: {exc.detail}")
                failed = exc
                continue
            for ctype in sorted({c.credential_type for c in got}):
                count = sum(1 for c in got if c.credential_type == ctype)
                out.print(f"{ctype} from {got[0].issuer}: +{count}")
    if failed is not None:
        _fail(failed)


def _iso(ts: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()[:19]


@wallet_app.command("show")
def show(credential_id: Annotated[str, typer.Argument(help="id or its first characters")],
         wallet: WalletOption = DEFAULT_WALLET) -> None:
    """Show one credential's claims."""
    w = _open(wallet)
    try:
        cred = w.get(credential_id)
    except TesseraError as exc:
        _fail(exc)
    table = Table(title=f"{cred.credential_type} {cred.id}")
    table.add_column("claim")
    table.add_column("value")
    for name, value in cred.claims.items():
        table.add_row(name, value if isinstance(value, str) else json.dumps(value))
    out.print(table)
    out.print(f"issuer: {cred.issuer}")


def _consent_screen(request: ConsentRequest, contacts: tuple[str, ...], client_id: str,
                    transactions: tuple[dict[str, Any], ...]) -> None:
    lines = [
        f"[bold]{_esc(request.verifier_name)}[/bold] asks for information from your wallet.",
        f"Contact: {_esc(', '.join(contacts)) if contacts else '(none given)'}",
        f"Purpose: {_esc(request.purpose) if request.purpose else '(none given)'}",
    ]
    out.print(Panel("\n".join(lines), title="Consent", expand=False))
    # Outside the panel, unwrapped: members copy it into `consents withdraw`.
    out.print(f"Verifier identifier: {_esc(client_id)}")
    for item in request.items:
        table = Table(title=f"{item.credential_type} from {_esc(item.issuer)}",
                      caption=_use_note(item))
        table.add_column("claim")
        table.add_column("shared?")
        table.add_column("value")
        for name, value in item.shared.items():
            shown = value if isinstance(value, str) else json.dumps(value)
            table.add_row(name, "[green]shared[/green]", _esc(shown))
        for name in item.withheld:
            table.add_row(name, "[dim]withheld[/dim]", "")
        out.print(table)
    for tx in transactions:
        out.print(Panel(_esc(json.dumps(tx, indent=2)), title="Transaction you authorise",
                        expand=False))


def _use_note(item: ConsentItem) -> str:
    if item.use == "one-time":
        return (f"a one-time credential: verifiers cannot link it to your other visits; "
                f"{item.remaining} unused left after this")
    if item.use == "reused":
        return ("REUSED (you allowed it): this verifier and the ones that saw it before "
                f"can link these visits; {item.remaining} unused left")
    return "bound to your wallet's key: verifiers comparing notes can link its presentations"


def _esc(text: str) -> str:
    # Verifier-supplied text must not be read as rich markup.
    from rich.markup import escape

    return escape(text)


@wallet_app.command("present")
def present(
    request_uri: Annotated[str, typer.Argument(help="openid4vp:// request URI (QR code)")],
    wallet: WalletOption = DEFAULT_WALLET,
    yes: Annotated[bool, typer.Option("--yes", help="consent without asking (scripts)")]
    = False,
    did_document: DocsOption = None,
    dev_origin: DevOption = None,
    allow_reuse: Annotated[bool, typer.Option(
        "--allow-reuse", help="when no unused one-time credential is left and topping up "
                              "fails, present a used one again (verifiers can then link "
                              "the two presentations)")] = False,
    no_top_up: Annotated[bool, typer.Option(
        "--no-top-up", help="do not contact the issuer to refill the pool")] = False,
) -> None:
    """Answer a verifier's OpenID4VP request after showing what would be shared."""
    from holder._openid4vp import parse_request, respond

    w = _open(wallet, did_document, dev_origin)
    with _http_client() as http:
        try:
            # The wallet's resolver: a verifier's did:web is fetched like a brand's
            # (TESSERA_DEV_ORIGINS for a verifier on a developer's machine).
            request = parse_request(request_uri, http=http, resolver=w.resolver)
        except TesseraError as exc:
            _fail(exc)

        def consent(screen: ConsentRequest) -> bool:
            _consent_screen(screen, request.contacts, request.client_id, request.transactions)
            if yes:
                out.print("--yes given: sharing.")
                return True
            return bool(typer.confirm(f"Share this with {request.verifier_name}?",
                                      default=False))

        try:
            respond(w, request, consent=consent, http=http, allow_reuse=allow_reuse,
                    top_up=not no_top_up)
        except TesseraError as exc:
            if exc.code == ErrorCode.CONSENT_DENIED:
                err.print(f"Nothing was shared with {request.verifier_name}.")
            _fail(exc)
    out.print(f"Shared with {request.verifier_name}; the verifier accepted it.")


@consents_app.command("list")
def consents_list(wallet: WalletOption = DEFAULT_WALLET) -> None:
    """Every presentation made, declined or withdrawn."""
    w = _open(wallet)
    table = Table(title="Consent log")
    for column in ("when", "event", "verifier", "purpose", "claims"):
        table.add_column(column)
    for record in w.consent_log():
        claims = "; ".join(f"{t}: {', '.join(n)}" for t, n in record.claims.items())
        table.add_row(record.at[:19], record.event, _esc(record.verifier_name) + "\n" +
                      _esc(record.verifier_id), _esc(record.purpose), claims)
    out.print(table)


@consents_app.command("export")
def consents_export(
    wallet: WalletOption = DEFAULT_WALLET,
    output: Annotated[Path | None, typer.Option(help="write to a file instead of stdout")]
    = None,
) -> None:
    """Export the consent log as JSON."""
    text = _open(wallet).export_consents()
    if output is None:
        typer.echo(text)
    else:
        output.write_text(text + "\n", encoding="utf-8")


@consents_app.command("withdraw")
def consents_withdraw(
    verifier: Annotated[str, typer.Argument(help="the verifier's identifier (client_id)")],
    wallet: WalletOption = DEFAULT_WALLET,
) -> None:
    """Withdraw consent: the wallet refuses this verifier from now on."""
    w = _open(wallet)
    w.withdraw(verifier)
    out.print(f"Withdrawn: {_esc(verifier)} will be refused until you grant it again.")


@consents_app.command("grant")
def consents_grant(
    verifier: Annotated[str, typer.Argument(help="the verifier's identifier (client_id)")],
    wallet: WalletOption = DEFAULT_WALLET,
) -> None:
    """Allow a withdrawn verifier to ask again (each request still asks you)."""
    w = _open(wallet)
    w.grant(verifier)
    out.print(f"{_esc(verifier)} may ask again.")


@wallet_app.command("audit")
def audit_cmd(
    brand: Annotated[list[str] | None, typer.Option(
        "--brand", help="brand DID to audit; default: issuers of your points credentials")]
    = None,
    base_url: Annotated[str | None, typer.Option(
        "--base-url", help="the brand's URL if not the one its did:web names")] = None,
    promise: Annotated[list[str] | None, typer.Option(
        "--promise", help="a brand's log promise (the log_promise of a ledger write's answer) "
                          "to keep and hold the brand to; repeatable")] = None,
    wallet: WalletOption = DEFAULT_WALLET,
    did_document: DocsOption = None,
    dev_origin: DevOption = None,
    witness: Annotated[list[str] | None, typer.Option(
        "--witness", envvar="TESSERA_WALLET_WITNESSES",
        help="a witness's cosignature verifier key (name+id+key); repeatable")] = None,
    quorum: Annotated[int | None, typer.Option(
        "--quorum", help="how many of those witnesses must have cosigned the brand's head "
                         "[default: a majority]")] = None,
) -> None:
    """Check your points history in each brand's transparency log (exit 3 on a mismatch)."""
    from holder._audit import audit
    from tessera import credentials
    from tessera.tlog import Verifier

    try:
        witnesses = [Verifier.parse(v.strip()) for v in witness or [] if v.strip()]
    except TesseraError as exc:
        _fail(exc)
    needed = quorum if quorum is not None else (len(witnesses) // 2 + 1 if witnesses else 0)
    w = _open(wallet, did_document, dev_origin)
    for token in promise or []:
        try:
            w.add_log_promise(token.strip())
        except TesseraError as exc:
            _fail(exc)
    if promise:
        w.save()
    brands = brand or sorted({c.issuer for c in w.credentials()
                              if c.vct == credentials.POINTS.vct} | set(w.log_promises))
    if not brands:
        _fail(TesseraError(ErrorCode.INVALID_REQUEST, "no brand given and no points credential"))
    failed = False
    with _http_client() as http:
        for did in brands:
            try:
                report = audit(w, brand_did=did, http=http, resolver=w.resolver,
                               base_url=base_url, witnesses=witnesses, quorum=needed)
            except TesseraError as exc:
                _fail(exc)
            status = "[green]consistent[/green]" if report.ok else "[red]MISMATCH[/red]"
            out.print(f"{_esc(did)}: {status}", markup=True)
            out.print(f"  signed head: size {report.tree_size}, root {report.root_hash}")
            if report.cosigned_by:
                out.print(f"  cosigned by: {_esc(', '.join(report.cosigned_by))}")
            out.print(f"  your entries: {report.entries}, log total {report.log_total}, "
                      f"ledger total {report.ledger_total}, credentials checked "
                      f"{report.credentials_checked}")
            for note in report.notes:
                out.print(f"  note: {_esc(note)}")
            if report.promises_kept:
                out.print(f"  log promises kept: {report.promises_kept}")
            for problem in report.problems:
                out.print(f"  [red]problem[/red]: {_esc(problem)}", markup=True)
            for code in report.codes:
                out.print(f"  [red]error[/red]: {code.value}", markup=True)
            failed = failed or not report.ok
    if failed:
        raise typer.Exit(3)
