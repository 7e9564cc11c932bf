"""The end-to-end demo: the README's first command.

Brand Acme issues Gold membership and 1,250 points to a member's wallet; the
member shows partner Beta only "Silver or better" and "at least 1000
points"; Beta verifies, and the output sets what Beta learned beside what
stayed in the wallet. Then a tampered, a replayed and an expired
presentation are each refused with their codes.

Acme runs the real issuer service in this process (uvicorn on 127.0.0.1, a
temporary SQLite file, a throw-away master key): the brand, its program, the
member's enrolment (by DID proof) and 1,250 points go through the admin API,
and the wallet receives both credentials through OpenID4VCI offers (one by
value with a tx_code, one by reference). Beta resolves Acme's did:web and
fetches its status list over HTTP on loopback: ``allow_http`` and
``allow_private`` are for this demo only (production resolvers use HTTPS to
public addresses). At the end Acme revokes the membership credential and
Beta sees ``revoked``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from tessera import credentials
from tessera.did import HttpFetcher, Resolver
from tessera.encoding import b64url_decode, b64url_encode

BETA_ID = "https://beta-coffee.example/checkout"


@dataclass
class Outcome:
    name: str
    expected: str
    got: list[str]

    @property
    def passed(self) -> bool:
        return self.expected in self.got


def _dcql() -> dict[str, Any]:
    return {"credentials": [
        credentials_query("membership", credentials.MEMBERSHIP.vct, "tier_at_least_silver"),
        credentials_query("points", credentials.POINTS.vct, "points_at_least_1000"),
    ]}


def credentials_query(cred_id: str, vct: str, claim: str) -> dict[str, Any]:
    from tessera.dcql import claims_query

    return claims_query(cred_id, vct, [claim], require_true=True)


def _tamper(vp_token: dict[str, list[str]]) -> dict[str, list[str]]:
    """Rewrite the disclosed points claim to claim 5000+; the digest no longer matches."""
    parts = vp_token["points"][0].split("~")
    for i, disclosure in enumerate(parts[1:-1], start=1):
        salt, name, _ = json.loads(b64url_decode(disclosure))
        if name == "points_at_least_1000":
            forged = [salt, "points_at_least_5000", True]
            parts[i] = b64url_encode(json.dumps(forged).encode())
    return {**vp_token, "points": ["~".join(parts)]}


class _LoopbackFetcher:
    """Demo only: did:web always means HTTPS (did:web §3.2), but the demo issuer
    speaks plain HTTP on loopback, so https://127.0.0.1:PORT is fetched over http."""

    def __init__(self, inner: HttpFetcher, origin: str) -> None:
        self._inner = inner
        self._https = origin.replace("http://", "https://", 1)
        self._origin = origin

    def fetch(self, url: str, *, accept: str = "application/json") -> bytes:
        if url.startswith(self._https + "/"):
            url = self._origin + url[len(self._https):]
        return self._inner.fetch(url, accept=accept)


@dataclass
class _Issuer:
    base_url: str
    server: Any
    thread: threading.Thread
    engine: Any
    settings: Any

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.engine.dispose()


def _start_issuer(folder: Path) -> _Issuer:
    """The issuer service on a free loopback port, in a background thread."""
    import uvicorn

    from issuer._app import create_app
    from issuer._db import make_engine
    from issuer._settings import Settings
    from issuer.migrations import upgrade

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(database_url=f"sqlite:///{folder / 'issuer.db'}",
                        master_key=secrets.token_bytes(32),  # TESSERA_DEV-style, throw-away
                        public_url=f"http://127.0.0.1:{port}", dev_mode=True)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine=engine), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="tessera-demo-issuer", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the demo issuer did not start")
        time.sleep(0.02)
    return _Issuer(settings.public_url, server, thread, engine, settings)


def run(console: Console | None = None) -> int:
    out = console or Console(emoji=False, highlight=False)
    out.rule("[bold]Tessera demo: a coalition loyalty checkout")

    with tempfile.TemporaryDirectory() as tmp:
        # -- Acme, the issuing brand, runs the issuer service -----------------------------
        acme_service = _start_issuer(Path(tmp))
        try:
            return _run(out, Path(tmp), acme_service)
        finally:
            acme_service.stop()


def _run(out: Console, tmp: Path, acme_service: _Issuer) -> int:
    import httpx

    from holder import ConsentRequest, Wallet
    from holder._openid4vci import receive_offer
    from issuer import CredentialIssuer, Program
    from issuer._admin import create_brand
    from issuer._keystore import SqlKeyStore
    from issuer._ledger import run_write
    from issuer._models import BrandCreate
    from tessera.jose import sign_compact
    from verifier import TrustList, Verifier, default_status_check

    settings = acme_service.settings
    keystore = SqlKeyStore(settings.master_key)
    acme_did = settings.brand_did("acme")
    _, api_key = run_write(acme_service.engine, lambda s: create_brand(
        s, keystore=keystore, data=BrandCreate(slug="acme", name="Acme Air"), did=acme_did))
    out.print(f"Acme's issuer service runs at [cyan]{acme_service.base_url}[/]; "
              f"brand DID [cyan]{acme_did}[/]")
    http = httpx.Client(base_url=acme_service.base_url, timeout=10)
    admin = {"Authorization": f"Bearer {api_key.token}"}

    def call(path: str, body: dict[str, Any] | None = None, **headers: str) -> Any:
        r = http.post(path, json=body or {}, headers={**admin, **headers})
        if r.status_code >= 300:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text}")
        return r.json()

    program = call("/admin/v1/programs", {"name": "Acme Rewards", "tiers": [
        {"name": "bronze", "rank": 0, "qualifying_points": 0},
        {"name": "silver", "rank": 1, "qualifying_points": 1000},
        {"name": "gold", "rank": 2, "qualifying_points": 5000}]})
    # Demo only: loopback over plain HTTP. Production resolvers refuse both.
    fetcher = _LoopbackFetcher(HttpFetcher(httpx.Client(timeout=5), allow_http=True,
                                           allow_private=True), acme_service.base_url)
    resolver = Resolver(fetcher)

    # -- the member's wallet -------------------------------------------------------
    with contextlib.closing(http):
        wallet = Wallet.create(tmp / "alice.wallet", "demo passphrase", resolver=resolver)
        out.print(f"Member wallet created, DID [cyan]{wallet.did}[/]")
        challenge = call("/admin/v1/enrolment-challenges")
        proof = sign_compact({"typ": challenge["typ"]}, {
            "iss": wallet.did, "aud": challenge["audience"], "nonce": challenge["nonce"],
            "iat": int(time.time())}, wallet.signer)
        member = call("/admin/v1/members", {"program_id": program["id"], "did": wallet.did,
                                            "proof": proof})
        earned = call(f"/admin/v1/members/{member['id']}/points/earn", {"points": 1250},
                      **{"Idempotency-Key": "acme-order-1001"})
        out.print(f"Acme enrolled the member by DID proof (no. {member['membership_number']})"
                  f" and credited 1,250 points: tier [bold]{earned['balance']['tier']}[/]")
        by_value = call(f"/admin/v1/members/{member['id']}/offers", {
            "credential_configuration_ids": ["LoyaltyMembershipCredential_sd_jwt"],
            "tx_code": {"length": 6, "description": "the code Acme texted you"}})
        by_reference = call(f"/admin/v1/members/{member['id']}/offers", {
            "credential_configuration_ids": ["LoyaltyPointsCredential_sd_jwt"]})
        out.print(f"Offer by value (tx_code sent separately): [dim]"
                  f"{by_value['offer_uri'][:72]}…[/]")
        out.print(f"Offer by reference: [dim]{by_reference['offer_uri_by_reference'][:72]}…[/]")
        received = receive_offer(wallet, by_value["offer_uri"], http_client=http,
                                 tx_code=by_value["tx_code"])
        received += receive_offer(wallet, by_reference["offer_uri_by_reference"],
                                  http_client=http)
        for stored in received:
            out.print(f"OpenID4VCI: wallet received [green]{stored.credential_type}[/] "
                      f"({len(stored.claims)} claims), checked and stored")

        # -- Beta, the partner at checkout ---------------------------------------------
        # max_age 0: Beta re-reads Acme's status list on every check (the demo
        # shows a revocation at once; production keeps the default cache).
        beta = Verifier(trust=TrustList.of([(acme_did, [t.name for t in
                                                        credentials.CREDENTIAL_TYPES])]),
                        resolver=resolver, status_check=default_status_check(
                            resolver, fetcher, max_age=timedelta(0)))
        request = beta.create_request(audience=BETA_ID, dcql=_dcql())
        out.print(f"\nBeta asks (DCQL): tier_at_least_silver = true, points_at_least_1000 = true;"
                  f" nonce [dim]{request.nonce[:12]}…[/]")

        def consent(screen: ConsentRequest) -> bool:
            table = Table(title=f"Share with {screen.verifier_name}?  ({screen.purpose})")
            table.add_column("credential")
            table.add_column("shared", style="green")
            table.add_column("withheld", style="red")
            for item in screen.items:
                table.add_row(item.credential_type, "\n".join(sorted(item.shared)),
                              "\n".join(item.withheld))
            out.print(table)
            out.print("Member answers: [bold green]yes[/]")
            return True

        vp_token = wallet.present(
            dcql=request.dcql or {}, audience=request.audience, nonce=request.nonce,
            consent=consent, verifier_name="Beta Coffee", purpose="Gold-or-better discount",
        )
        result = beta.verify(vp_token, request=request)
        learned = result.claims
        everything: dict[str, Any] = {}
        for stored in wallet.credentials():
            everything.update(stored.claims)
        hidden = sorted(set(everything) - set(learned))
        side = Table(title=f"Beta's verdict: ok={result.ok} errors={list(result.errors)}")
        side.add_column("What Beta learned", style="green")
        side.add_column("What stayed hidden in the wallet", style="red")
        learned_lines = [f"{k} = {json.dumps(v)}" for k, v in learned.items()]
        learned_lines += [f"issuer = {result.issuer}", f"holder = {result.holder}"]
        for i in range(max(len(learned_lines), len(hidden))):
            side.add_row(learned_lines[i] if i < len(learned_lines) else "",
                         hidden[i] if i < len(hidden) else "")
        out.print(side)

        # -- attacks ----------------------------------------------------------------------
        outcomes: list[Outcome] = []
        request2 = beta.create_request(audience=BETA_ID, dcql=_dcql())
        honest = wallet.present(dcql=request2.dcql or {}, audience=BETA_ID,
                                nonce=request2.nonce, consent=lambda _: True)
        outcomes.append(Outcome("tampered disclosure (claims 5000+ points)",
                                "disclosure_mismatch",
                                list(beta.verify(_tamper(honest), request=request2).errors)))
        outcomes.append(Outcome("replayed presentation (first one again)", "replayed",
                                list(beta.verify(vp_token, request=request).errors)))
        past = datetime.now(UTC) - timedelta(days=2)
        from issuer._admin import brand_by_slug
        from issuer._db import session_scope

        with session_scope(acme_service.engine) as session:
            acme_key = keystore.signer(session, brand_id=brand_by_slug(session, slug="acme").id,
                                       did=acme_did)
        stale_acme = CredentialIssuer(signer=acme_key, did=acme_did, clock=lambda: past,
                                      program=Program(id=f"{acme_service.base_url}/rewards",
                                                      name="Acme Rewards", brand=acme_did))
        stale = stale_acme.issue_points(
            holder_key=wallet.signer.public_key, membership_number="ACME-000042", balance=1250,
            checkpoint=(7, "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"),
        )
        request3 = beta.create_request(audience=BETA_ID, dcql={"credentials": [
            credentials_query("points", credentials.POINTS.vct, "points_at_least_1000")]})
        from tessera.formats import sd_jwt

        expired_vp = {"points": [sd_jwt.present(
            stale, disclose=["points_at_least_1000"], holder=wallet.signer,
            audience=BETA_ID, nonce=request3.nonce)]}
        outcomes.append(Outcome("expired points credential (issued 2 days ago, 24 h TTL)",
                                "expired", list(beta.verify(expired_vp, request=request3).errors)))

        # -- Acme revokes the membership credential; Beta sees it at the next checkout ----
        issued = http.get(f"/admin/v1/members/{member['id']}/credentials", headers=admin).json()
        membership_id = next(c["id"] for c in issued
                             if c["credential_type"] == "LoyaltyMembershipCredential")
        call(f"/admin/v1/credentials/{membership_id}/revoke", {"reason": "demo: card closed"})
        out.print(f"\nAcme revoked the membership credential (status list slot "
                  f"{next(c['status_index'] for c in issued if c['id'] == membership_id)})")
        request4 = beta.create_request(audience=BETA_ID, dcql={"credentials": [
            credentials_query("membership", credentials.MEMBERSHIP.vct, "tier_at_least_silver")]})
        after = wallet.present(dcql=request4.dcql or {}, audience=BETA_ID, nonce=request4.nonce,
                               consent=lambda _: True)
        outcomes.append(Outcome("membership presented after Acme revoked it", "revoked",
                                list(beta.verify(after, request=request4).errors)))

        attacks = Table(title="Attacks")
        attacks.add_column("presentation")
        attacks.add_column("expected")
        attacks.add_column("Beta said")
        for o in outcomes:
            mark = "[green]refused[/]" if o.passed else "[red]NOT REFUSED[/]"
            attacks.add_row(o.name, o.expected, f"{mark} {o.got}")
        out.print(attacks)
        log = wallet.consent_log()
        out.print(Panel(f"{len(log)} entries in the member's consent log; latest: "
                        f"{log[-1].event} {log[-1].claims} to {log[-1].verifier_id}",
                        title="Consent log"))

    ok = result.ok and all(o.passed for o in outcomes)
    out.rule("[bold green]demo passed" if ok else "[bold red]demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run())
