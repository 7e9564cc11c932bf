"""``tessera verifier ...``: run the verifier service and its checkout page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from tessera.encoding import parse_json_object
from tessera.errors import TesseraError

verifier_app = typer.Typer(help="Run the verifier service.", no_args_is_help=True)


def _read_json(path: Path) -> dict[str, object]:
    try:
        return parse_json_object(path.read_bytes())
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror}") from exc


@verifier_app.command("serve")
def serve(
    trust: Annotated[Path, typer.Option(help="trust list JSON file")],
    key: Annotated[Path | None, typer.Option(
        help="verifier private JWK file (default: a fresh key for this run only)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8090,
    base_url: Annotated[str | None, typer.Option(
        help="public URL wallets reach (default http://HOST:PORT)")] = None,
    store: Annotated[str, typer.Option(
        envvar="TESSERA_VERIFIER_STORE",
        help="nonce and session store: sqlite:///file, postgresql://…, redis://…")]
    = "sqlite:///tessera-verifier.db",
    prefix: Annotated[str, typer.Option(
        help="client identifier prefix: decentralized_identifier or redirect_uri")]
    = "decentralized_identifier",
    name: Annotated[str, typer.Option(help="name shown on the member's consent screen")]
    = "Partner checkout",
    contact: Annotated[list[str] | None, typer.Option(help="contact shown to members")] = None,
    did_document: Annotated[list[Path] | None, typer.Option(
        help="pin an issuer DID document (offline did:web); repeatable")] = None,
) -> None:
    """Serve OpenID4VP requests, the direct_post endpoint and the checkout page."""
    import uvicorn

    from tessera.did import HttpFetcher, Resolver
    from tessera.keys import generate_signer, signer_from_jwk
    from verifier._service import ServiceSettings, create_app, verifier_did
    from verifier._trust import TrustList

    try:
        signer = signer_from_jwk(_read_json(key)) if key else generate_signer("ES256")
        did = verifier_did(signer)
        signer = signer.with_key_id(did + "#0")
        documents = {}
        for doc_path in did_document or []:
            doc = _read_json(doc_path)
            documents[str(doc.get("id"))] = doc
        settings = ServiceSettings(
            base_url=base_url or f"http://{host}:{port}", trust=TrustList.from_file(trust),
            signer=signer, client_id_prefix=prefix, client_name=name,
            contacts=tuple(contact or ()), store_url=store,
            resolver=Resolver(HttpFetcher(), documents=documents),
        )
        app = create_app(settings)
    except TesseraError as exc:
        typer.echo(json.dumps({"error": exc.code.value, "detail": exc.detail}), err=True)
        raise typer.Exit(2) from None
    typer.echo(f"verifier {did} at {settings.base_url}", err=True)
    uvicorn.run(app, host=host, port=port, log_level="info")
