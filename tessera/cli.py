"""The ``tessera`` command line, shaped like didkit's so it scripts the same way.

Keys are private JWK files; credentials and presentations are plain text on
stdout; ``verify`` prints a JSON result and exits 0 only when it is valid.
Role packages are imported inside the commands that need them, so the
verifier-only install still runs ``tessera verify``.
"""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from tessera.encoding import parse_json_object
from tessera.errors import ErrorCode, TesseraError

app = typer.Typer(
    name="tessera",
    help="Verifiable loyalty credentials: keys, DIDs, issue, present, verify.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
key_app = typer.Typer(help="Key management.", no_args_is_help=True)
app.add_typer(key_app, name="key")
witness_app = typer.Typer(
    help="A C2SP witness: cosign other brands' log checkpoints (c2sp.org/tlog-witness).",
    no_args_is_help=True)
app.add_typer(witness_app, name="witness")


def _fail(exc: TesseraError) -> None:
    typer.echo(json.dumps({"error": exc.code.value, "detail": exc.detail}), err=True)
    raise typer.Exit(2)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return parse_json_object(path.read_bytes())
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from exc


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from exc


@key_app.command("new")
def key_new(
    alg: Annotated[str, typer.Option(help="EdDSA, ES256 or ES384")] = "EdDSA",
) -> None:
    """Generate a private key; print it as a JWK (keep it secret)."""
    from tessera.keys import generate_signer

    try:
        typer.echo(json.dumps(generate_signer(alg).export_private_jwk()))
    except TesseraError as exc:
        _fail(exc)


@key_app.command("seal")
def key_seal(keyfile: Path) -> None:
    """Seal a private JWK under a passphrase (scrypt + AES-256-GCM) for safe keeping or
    `tessera wallet init --import-key`; the passphrase comes from TESSERA_KEY_PASSPHRASE
    or a prompt."""
    import os

    from tessera.keys import seal_with_passphrase, signer_from_jwk

    try:
        jwk = _read_json(keyfile)
        signer_from_jwk(jwk)  # refuse to seal something that is not a private key
        passphrase = os.environ.get("TESSERA_KEY_PASSPHRASE") or typer.prompt(
            "Passphrase", hide_input=True, confirmation_prompt=True)
        if len(passphrase) < 8:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "passphrase needs 8 characters or more")
        box = seal_with_passphrase(json.dumps(jwk).encode(), passphrase)
        typer.echo(json.dumps({"sealed": box}))
    except TesseraError as exc:
        _fail(exc)


@app.command("did")
def did_cmd(
    keyfile: Path,
    method: Annotated[str, typer.Option(help="key or jwk")] = "key",
) -> None:
    """Print the DID of a key file (did:key or did:jwk)."""
    from tessera.did import did_jwk, did_key
    from tessera.keys import PublicKey

    try:
        jwk = {k: v for k, v in _read_json(keyfile).items() if k != "d"}
        key = PublicKey.from_jwk(jwk)
        if method not in ("key", "jwk"):
            raise typer.BadParameter("method must be key or jwk")
        typer.echo(did_key(key) if method == "key" else did_jwk(key))
    except TesseraError as exc:
        _fail(exc)


def _default_kid(did: str) -> str:
    if did.startswith("did:key:"):
        return f"{did}#{did.split(':', 2)[2]}"
    if did.startswith("did:jwk:"):
        return f"{did}#0"
    return f"{did}#key-1"


@app.command("issue")
def issue_cmd(
    key: Annotated[Path, typer.Option(help="issuer private JWK file")],
    issuer: Annotated[str, typer.Option(help="issuer DID")],
    type_: Annotated[str, typer.Option("--type", help="LoyaltyMembershipCredential or "
                                       "LoyaltyPointsCredential")],
    subject: Annotated[str, typer.Option(help="holder DID (did:key or did:jwk)")],
    claims: Annotated[Path, typer.Option(help="JSON file with the credential's claims")],
    kid: Annotated[str | None, typer.Option(help="verification method id (default: derived)")]
    = None,
    valid_hours: Annotated[float | None, typer.Option(help="validity in hours")] = None,
) -> None:
    """Issue an SD-JWT VC to a holder DID; print it."""
    from tessera import credentials
    from tessera.did import Resolver, holder_key_of
    from tessera.formats import sd_jwt
    from tessera.keys import signer_from_jwk

    try:
        signer = signer_from_jwk(_read_json(key), key_id=kid or _default_kid(issuer))
        holder_key = holder_key_of(Resolver(), subject)
        ctype = credentials.by_name(type_)
        now = datetime.now(UTC)
        ttl = timedelta(hours=valid_hours) if valid_hours else timedelta(days=30)
        body = _read_json(claims)
        typer.echo(sd_jwt.issue_credential(
            ctype, body, signer=signer, issuer=issuer, holder_key=holder_key,
            issued_at=now, expires_at=now + ttl,
        ))
    except TesseraError as exc:
        _fail(exc)


@app.command("present")
def present_cmd(
    key: Annotated[Path, typer.Option(help="holder private JWK file")],
    credential: Annotated[Path, typer.Option(help="file with the SD-JWT VC")],
    disclose: Annotated[str, typer.Option(help="comma-separated claim names to show")],
    audience: Annotated[str, typer.Option(help="the verifier's identifier")],
    nonce: Annotated[str, typer.Option(help="the verifier's nonce")],
) -> None:
    """Present chosen claims with a key-binding JWT; print the presentation."""
    from tessera.formats import sd_jwt
    from tessera.keys import signer_from_jwk

    try:
        names = [n.strip() for n in disclose.split(",") if n.strip()]
        typer.echo(sd_jwt.present(
            _read_text(credential), disclose=names, holder=signer_from_jwk(_read_json(key)),
            audience=audience, nonce=nonce,
        ))
    except TesseraError as exc:
        _fail(exc)


@app.command("verify")
def verify_cmd(
    presentation: Annotated[Path, typer.Option(help="file with the presentation")],
    audience: Annotated[str, typer.Option(help="your own identifier")],
    nonce: Annotated[str, typer.Option(help="the nonce you sent")],
    trust: Annotated[Path | None, typer.Option(help="trust list JSON file")] = None,
    issuer_key: Annotated[Path | None, typer.Option(help="issuer public JWK file")] = None,
    did_document: Annotated[list[Path] | None, typer.Option(
        help="pin a DID document (offline did:web); repeatable")] = None,
) -> None:
    """Verify a presentation; print a JSON result; exit 0 only when valid."""
    from tessera.did import HttpFetcher, Resolver
    from tessera.keys import PublicKey
    from verifier import TrustList, Verifier
    from verifier import sd_jwt as low_level

    if (trust is None) == (issuer_key is None):
        raise typer.BadParameter("give exactly one of --trust or --issuer-key")
    try:
        text = _read_text(presentation)
        if issuer_key is not None:
            key = PublicKey.from_jwk({k: v for k, v in _read_json(issuer_key).items()
                                      if k not in ("d", "kid", "use", "key_ops")})
            result = low_level.verify(
                text, issuer_keys=key, audience=audience, nonce=nonce, now=datetime.now(UTC),
            )
        else:
            assert trust is not None
            documents = {}
            for doc_path in did_document or []:
                doc = _read_json(doc_path)
                documents[str(doc.get("id"))] = doc
            resolver = Resolver(HttpFetcher(), documents=documents)
            v = Verifier(trust=TrustList.from_file(trust), resolver=resolver)
            request = v.create_request(audience=audience, nonce=nonce)
            result = v.verify(text, request=request)
    except TesseraError as exc:
        _fail(exc)
        return
    typer.echo(json.dumps(result.to_dict(), indent=2))
    raise typer.Exit(0 if result.ok else 1)


def _witness_cosigner(key: Path, name: str) -> Any:
    """The witness's Ed25519 key, created (mode 0600) on first use."""
    from tessera.files import write_private
    from tessera.keys import generate_signer, signer_from_jwk
    from tessera.tlog import Cosigner

    if not key.exists():
        fresh = json.dumps(generate_signer("EdDSA").export_private_jwk()).encode()
        # replace=False: another start that created it first wins, and we use its key.
        with contextlib.suppress(FileExistsError):
            write_private(key, fresh, replace=False)
    return Cosigner(name, signer_from_jwk(_read_json(key)))


WitnessKeyOpt = Annotated[Path, typer.Option(
    help="the witness's private Ed25519 JWK file (created with mode 0600 if absent)")]
WitnessNameOpt = Annotated[str, typer.Option(
    help="the witness's key name, a schema-less URL such as witness.example.com/acme")]


@witness_app.command("vkey")
def witness_vkey(key: WitnessKeyOpt, name: WitnessNameOpt) -> None:
    """Print the witness's verifier key (cosignature/v1, type 0x04) for log operators."""
    try:
        typer.echo(_witness_cosigner(key, name).vkey)
    except TesseraError as exc:
        _fail(exc)


@witness_app.command("serve")
def witness_serve(
    key: WitnessKeyOpt,
    name: WitnessNameOpt,
    log: Annotated[list[str] | None, typer.Option(
        help="a log's verifier key (name+id+key, name = the log's origin); repeatable")] = None,
    logs: Annotated[Path | None, typer.Option(
        help="file of log verifier keys, one a line (# comments)")] = None,
    db: Annotated[Path, typer.Option(
        help="SQLite file of the latest cosigned checkpoint of each log")]
    = Path("tessera-witness.db"),
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8091,
) -> None:
    """Serve POST /add-checkpoint (c2sp.org/tlog-witness) for the configured logs."""
    import uvicorn

    from tessera.witness import Witness, WitnessStore, create_app, load_logs

    try:
        lines = list(log or [])
        if logs is not None:
            lines += _read_text(logs).splitlines()
        keys = load_logs(lines)
        if not keys:
            raise typer.BadParameter("give at least one --log or --logs")
        witness = Witness(_witness_cosigner(key, name), keys, WitnessStore(db))
    except TesseraError as exc:
        _fail(exc)
        return
    typer.echo(f"witness {witness.cosigner.vkey} for {len(witness.logs)} log(s) at "
               f"http://{host}:{port}", err=True)
    uvicorn.run(create_app(witness), host=host, port=port, log_config=None, access_log=False)


@app.command("demo")
def demo_cmd() -> None:
    """Run the end-to-end story: issue, consent, present, verify, attacks refused."""
    from tessera.demo import run

    raise typer.Exit(run())


def _mount_optional() -> None:
    # The issuer service and the wallet CLI need their extras; a verifier-only
    # install simply does not get those sub-commands.
    import importlib

    optional = {"fastapi", "sqlmodel", "sqlalchemy", "uvicorn", "alembic", "segno",
                "prometheus_client"}
    for module, attr, name, help_text in (
        ("issuer._cli", "issuer_app", "issuer", "Run and administer the issuer service."),
        ("holder._cli", "wallet_app", "wallet", "The member's wallet."),
        ("issuer._vcapi_cli", "vcapi_app", "vcapi", "W3C VC API server for the test suites."),
        ("verifier._cli", "verifier_app", "verifier", "Run the verifier service."),
    ):
        try:
            sub = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name not in optional | {module, module.split(".")[0]}:
                raise
        else:
            app.add_typer(sub, name=name, help=help_text)


_mount_optional()


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="tessera")
    sys.exit(0)
