"""The end-to-end demo: the README's first command.

Brand Acme issues a membership (Silver, earned by 1,250 points) and the points
to a member's wallet; the member shows partner Beta only "Silver or better"
and "at least 1000 points"; Beta verifies, and the output sets what Beta
learned beside what stayed in the wallet. Then a tampered, a replayed, a
captured and an expired presentation are each refused with their codes.

Everything goes through the real services, each in this process on
127.0.0.1 with a temporary SQLite file:

* Acme runs the issuer service (a throw-away master key): the brand, its
  program, the member's enrolment (by DID proof) and 1,250 points go through
  the admin API, and the wallet receives both credentials through OpenID4VCI
  offers (one by value with a tx_code, one by reference);
* Beta runs the verifier service: the till creates a checkout (``POST
  /requests``, with its till key), the member's wallet reads the QR code's
  deep link, fetches the signed request object, shows the consent screen and
  answers by ``direct_post``; the till polls ``/requests/{id}/result`` (till
  key again: someone who photographs the QR code learns the request id, not
  the answer).

Beta resolves Acme's did:web and fetches its status list over HTTP on
loopback: ``allow_http`` and ``allow_private`` are for this demo only
(production resolvers use HTTPS to public addresses). At the end Acme revokes
the membership credential and Beta's till sees ``revoked``.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from tessera import credentials
from tessera.did import HttpFetcher, Resolver
from tessera.encoding import b64url_decode, b64url_encode

SILVER_AND_POINTS = "silver-1000"
SILVER = "silver"
POINTS_1000 = "points-1000"


@dataclass
class Outcome:
    name: str
    expected: str
    got: list[str]

    @property
    def passed(self) -> bool:
        return self.expected in self.got


def _dcql(*which: str) -> dict[str, Any]:
    queries = {
        "membership": ("membership", credentials.MEMBERSHIP.vct, "tier_at_least_silver"),
        "points": ("points", credentials.POINTS.vct, "points_at_least_1000"),
    }
    return {"credentials": [credentials_query(*queries[w]) for w in which]}


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
    """Demo only: did:web always means HTTPS (did:web §3.2), but the demo's issuer
    and verifier speak plain HTTP on loopback, so https://127.0.0.1:PORT of each
    named origin is fetched over http."""

    def __init__(self, inner: HttpFetcher, *origins: str) -> None:
        self._inner = inner
        self._origins = {origin.replace("http://", "https://", 1): origin for origin in origins}

    def fetch(self, url: str, *, accept: str = "application/json") -> bytes:
        for https, origin in self._origins.items():
            if url.startswith(https + "/"):
                url = origin + url[len(https):]
                break
        return self._inner.fetch(url, accept=accept)


def _loopback_resolver(*origins: str) -> tuple[Resolver, _LoopbackFetcher]:
    """A resolver for did:webs on loopback (demo only: plain HTTP, private address)."""
    import httpx

    fetcher = _LoopbackFetcher(HttpFetcher(httpx.Client(timeout=5), allow_http=True,
                                           allow_private=True), *origins)
    return Resolver(fetcher), fetcher


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class _Server:
    """A uvicorn server on loopback in a background thread."""

    base_url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def _serve(app: Any, port: int, name: str) -> _Server:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name=f"tessera-demo-{name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            server.should_exit = True
            raise RuntimeError(f"the demo {name} service did not start")
        time.sleep(0.02)
    return _Server(f"http://127.0.0.1:{port}", server, thread)


@dataclass
class _Issuer:
    service: _Server
    engine: Any
    settings: Any

    @property
    def base_url(self) -> str:
        return self.service.base_url

    def stop(self) -> None:
        self.service.stop()
        self.engine.dispose()


def _start_issuer(folder: Path) -> _Issuer:
    """Acme's issuer service on a free loopback port."""
    from issuer._app import create_app
    from issuer._db import make_engine
    from issuer._settings import Settings
    from issuer.migrations import upgrade

    port = _free_port()
    settings = Settings(database_url=f"sqlite:///{folder / 'issuer.db'}",
                        master_key=secrets.token_bytes(32),  # TESSERA_DEV-style, throw-away
                        public_url=f"http://127.0.0.1:{port}", dev_mode=True)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    try:
        server = _serve(create_app(settings, engine=engine), port, "issuer")
    except BaseException:
        engine.dispose()
        raise
    return _Issuer(server, engine, settings)


def _start_verifier(folder: Path, *, acme_did: str, acme_origin: str) -> tuple[_Server, str]:
    """Beta's verifier service on a free loopback port: trusts Acme, checks status live.

    Returns the server and the key of Beta's one till.
    """
    from tessera.keys import generate_signer
    from verifier import TrustList, default_status_check
    from verifier._service import Policy, ServiceSettings, create_app, verifier_did
    from verifier._tills import TillKeys

    tills = TillKeys()
    till_key = str(tills.create("Beta Coffee, till 1")["token"])

    port = _free_port()
    resolver, fetcher = _loopback_resolver(acme_origin)
    signer = generate_signer("ES256")
    base_url = f"http://127.0.0.1:{port}"
    # Beta's did:web, served by its verifier service: the short client_id of the QR code.
    signer = signer.with_key_id(verifier_did(signer, "web", base_url=base_url) + "#0")
    settings = ServiceSettings(
        base_url=base_url,
        trust=TrustList.of([(acme_did, [t.name for t in credentials.CREDENTIAL_TYPES])]),
        signer=signer, client_name="Beta Coffee", contacts=("privacy@beta-coffee.example",),
        store_url=f"sqlite:///{folder / 'beta.db'}", resolver=resolver,
        # max_age 0: Beta re-reads Acme's status list on every check (the demo
        # shows a revocation at once; production keeps the default cache).
        status_check=default_status_check(resolver, fetcher, max_age=timedelta(0)),
        policies=(
            Policy(SILVER_AND_POINTS, "Silver or better, 1000 points to redeem",
                   "Silver-or-better price and a 1000-point redemption",
                   _dcql("membership", "points")),
            Policy(SILVER, "Silver or better", "Silver-or-better price", _dcql("membership")),
            Policy(POINTS_1000, "1000 points to redeem", "A 1000-point redemption",
                   _dcql("points")),
        ),
        tills=tills,
    )
    return _serve(create_app(settings), port, "verifier"), till_key


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


class _Till:
    """Beta's till: the cashier's side of the verifier service's HTTP API."""

    def __init__(self, base_url: str, key: str) -> None:
        import httpx

        # The till's key on every call: only this till may ask, and read the answers.
        self.http = httpx.Client(base_url=base_url, timeout=10,
                                 headers={"Authorization": f"Bearer {key}"})

    def checkout(self, policy: str) -> dict[str, Any]:
        r = self.http.post("/requests", json={"policy": policy})
        if r.status_code != 201:
            raise RuntimeError(f"POST /requests: {r.status_code} {r.text}")
        created: dict[str, Any] = r.json()
        return created

    def result(self, created: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
        """Poll ``/requests/{id}/result`` until the wallet's answer is in."""
        deadline = time.monotonic() + timeout
        while True:
            r = self.http.get(created["result"])
            if r.status_code != 200:
                raise RuntimeError(f"GET {created['result']}: {r.status_code} {r.text}")
            view: dict[str, Any] = r.json()
            if view["status"] == "done":
                result: dict[str, Any] = view["result"]
                return result
            if time.monotonic() > deadline:
                raise RuntimeError(f"checkout {created['id']} still {view['status']}")
            time.sleep(0.05)


def _vp_json(vp_token: dict[str, list[str]]) -> str:
    return json.dumps(vp_token, separators=(",", ":"))


def _post_answer(http: Any, response_uri: str, form: dict[str, str]) -> list[str]:
    """Post an answer as a wallet would (direct_post, §8.2); the codes Beta answered."""
    r = http.post(response_uri, data=form)
    if r.status_code == 200:
        return []
    body = r.json()
    return [str(e) for e in body.get("errors") or [body.get("code")]]


def _run(out: Console, tmp: Path, acme_service: _Issuer) -> int:
    from issuer._admin import create_brand
    from issuer._keystore import SqlKeyStore
    from issuer._ledger import run_write
    from issuer._models import BrandCreate

    settings = acme_service.settings
    keystore = SqlKeyStore(settings.master_key)
    acme_did = settings.brand_did("acme")
    _, api_key = run_write(acme_service.engine, lambda s: create_brand(
        s, keystore=keystore, data=BrandCreate(slug="acme", name="Acme Air"), did=acme_did))
    out.print(f"Acme's issuer service runs at [cyan]{acme_service.base_url}[/]; "
              f"brand DID [cyan]{acme_did}[/]")
    # -- Beta, the partner, runs the verifier service ---------------------------------
    beta_service, till_key = _start_verifier(tmp, acme_did=acme_did,
                                             acme_origin=acme_service.base_url)
    try:
        return _story(out, tmp, acme_service, beta_service, keystore, api_key.token, till_key)
    finally:
        beta_service.stop()


def _story(out: Console, tmp: Path, acme_service: _Issuer, beta_service: _Server,
           keystore: Any, api_token: str, till_key: str) -> int:
    import httpx

    from holder import ConsentRequest, Wallet
    from holder._openid4vci import receive_offer
    from holder._openid4vp import parse_request, respond
    from issuer import CredentialIssuer, Program
    from tessera.errors import TesseraError
    from tessera.formats import sd_jwt
    from tessera.jose import sign_compact
    from verifier._service import qr_code

    acme_did = acme_service.settings.brand_did("acme")
    http = httpx.Client(base_url=acme_service.base_url, timeout=10)
    admin = {"Authorization": f"Bearer {api_token}"}

    def call(path: str, body: dict[str, Any] | None = None, **headers: str) -> Any:
        r = http.post(path, json=body or {}, headers={**admin, **headers})
        if r.status_code >= 300:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text}")
        return r.json()

    program = call("/admin/v1/programs", {"name": "Acme Rewards", "tiers": [
        {"name": "bronze", "rank": 0, "qualifying_points": 0},
        {"name": "silver", "rank": 1, "qualifying_points": 1000},
        {"name": "gold", "rank": 2, "qualifying_points": 5000}]})
    # The member's phone resolves Acme's did:web (credentials) and Beta's (requests).
    resolver, _ = _loopback_resolver(acme_service.base_url, beta_service.base_url)

    # -- the member's wallet -------------------------------------------------------
    till = _Till(beta_service.base_url, till_key)
    wallet_http = httpx.Client(timeout=10)  # the phone's own connection
    with contextlib.closing(http), contextlib.closing(till.http), \
            contextlib.closing(wallet_http):
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
        # One offer for both types: the wallet binds the i-th membership and the i-th
        # points credential to one one-time key, so a checkout asking for both gets one
        # holder (docs/privacy.md).
        offer = call(f"/admin/v1/members/{member['id']}/offers", {
            "credential_configuration_ids": ["LoyaltyMembershipCredential_sd_jwt",
                                             "LoyaltyPointsCredential_sd_jwt"],
            "tx_code": {"length": 6, "description": "the code Acme texted you"}})
        out.print(f"Offer by value (tx_code sent separately): [dim]"
                  f"{escape(offer['offer_uri'][:72])}…[/]")
        out.print(f"The same offer by reference: [dim]"
                  f"{escape(offer['offer_uri_by_reference'][:72])}…[/]")
        received = receive_offer(wallet, offer["offer_uri_by_reference"],
                                 http_client=wallet_http, tx_code=offer["tx_code"])
        for ctype in sorted({c.credential_type for c in received}):
            got = [c for c in received if c.credential_type == ctype]
            kind = "one-time credentials, each on its own key" if got[0].one_time \
                else "credential(s) on the wallet's DID key"
            out.print(f"OpenID4VCI: wallet received {len(got)} [green]{ctype}[/] {kind} "
                      f"({len(got[0].claims)} claims each), checked and stored")

        # -- Beta's till: a checkout through the verifier service ----------------------
        out.print(f"\nBeta's verifier service runs at [cyan]{beta_service.base_url}[/]")
        created = till.checkout(SILVER_AND_POINTS)
        out.print(f"The cashier starts checkout [cyan]{created['id']}[/] "
                  f"(policy {SILVER_AND_POINTS}: {created['label']}); the till shows a QR code "
                  f"({beta_service.base_url}{created['qr']}, version "
                  f"{qr_code(created['deep_link']).designator}) holding the deep link:")
        out.print(f"[dim]{escape(created['deep_link'])}[/]", soft_wrap=True)
        request = parse_request(created["deep_link"], http=wallet_http, resolver=resolver)
        asked = [f"{c.get('id')}: " + ", ".join("/".join(map(str, q["path"]))
                                                for q in c.get("claims", []))
                 for c in request.dcql_query["credentials"]]
        out.print(f"The wallet fetched the request object, signed by "
                  f"[cyan]{request.verifier_identifier}[/]; Beta asks (DCQL) "
                  f"{'; '.join(asked)}; nonce [dim]{request.nonce[:12]}…[/]")

        def consent(screen: ConsentRequest) -> bool:
            table = Table(title=f"Share with {escape(screen.verifier_name)}?  "
                                f"({escape(screen.purpose)})")
            table.add_column("credential")
            table.add_column("shared", style="green")
            table.add_column("withheld", style="red")
            for item in screen.items:
                table.add_row(item.credential_type, "\n".join(sorted(item.shared)),
                              "\n".join(item.withheld))
            out.print(table)
            out.print("Member answers: [bold green]yes[/]")
            return True

        captured: dict[str, str] = {}

        def eavesdrop(sent: httpx.Request) -> None:
            # An attacker on the shop's network keeps a copy of the answer.
            if sent.method == "POST":
                captured.update(urllib.parse.parse_qsl(sent.read().decode()))

        with httpx.Client(timeout=10, event_hooks={"request": [eavesdrop]}) as tapped:
            respond(wallet, request, consent=consent, http=tapped)
        out.print(f"The wallet answered by direct_post to [cyan]{request.response_uri}[/]")
        result = till.result(created)
        out.print(f"The till polled {created['result']}: done")
        learned: dict[str, Any] = result["claims"]
        everything: dict[str, Any] = {}
        for stored in wallet.credentials():
            everything.update(stored.claims)
        hidden = sorted(set(everything) - set(learned))
        side = Table(title=f"Beta's verdict: ok={result['ok']} errors={result['errors']}")
        side.add_column("What Beta learned", style="green")
        side.add_column("What stayed hidden in the wallet", style="red")
        learned_lines = [f"{k} = {json.dumps(v)}" for k, v in learned.items()]
        one_time = "" if result["holder"] == wallet.did else " (one-time key, not your DID)"
        learned_lines += [f"issuer = {result['issuer']}",
                          f"holder = {str(result['holder'])[:40]}…{one_time}"]
        for i in range(max(len(learned_lines), len(hidden))):
            side.add_row(learned_lines[i] if i < len(learned_lines) else "",
                         hidden[i] if i < len(hidden) else "")
        out.print(side)
        checkout_ok = (result["ok"] is True and result["errors"] == []
                       and learned.get("tier_at_least_silver") is True
                       and learned.get("points_at_least_1000") is True
                       and result["issuer"] == acme_did
                       # One-time credentials show a fresh key; others, the member's DID.
                       and (result["holder"] == wallet.did) != received[0].one_time)

        # -- attacks, each posted to Beta's service ------------------------------------
        outcomes: list[Outcome] = []
        attack = till.checkout(SILVER_AND_POINTS)
        seen = parse_request(attack["deep_link"], http=wallet_http, resolver=resolver)
        honest = wallet.present(dcql=seen.dcql_query, audience=seen.client_id, nonce=seen.nonce,
                                consent=lambda _: True, verifier_name=seen.verifier_name)
        outcomes.append(Outcome("tampered disclosure (claims 5000+ points)",
                                "disclosure_mismatch",
                                _post_answer(wallet_http, seen.response_uri, {
                                    "vp_token": _vp_json(_tamper(honest)),
                                    "state": seen.state})))
        # The first checkout's answer, captured on the way: posted again it is refused,
        # and at another checkout its key-binding JWT names the wrong nonce.
        outcomes.append(Outcome("replayed answer (the first checkout's, again)", "replayed",
                                _post_answer(wallet_http, request.response_uri, captured)))
        other = till.checkout(SILVER_AND_POINTS)
        other_seen = parse_request(other["deep_link"], http=wallet_http, resolver=resolver)
        outcomes.append(Outcome("captured presentation at another checkout", "nonce_mismatch",
                                _post_answer(wallet_http, other_seen.response_uri, {
                                    "vp_token": captured["vp_token"],
                                    "state": other_seen.state})))
        # A photo of the till's screen: the QR code's request_uri names the first
        # checkout; without the till's key its answer stays with the till.
        peek = wallet_http.get(f"{beta_service.base_url}{created['result']}")
        outcomes.append(Outcome("result read with the request id from the QR code",
                                "unauthorized", [str(peek.json().get("code"))]))

        from issuer._admin import brand_by_slug
        from issuer._db import session_scope

        past = datetime.now(UTC) - timedelta(days=2)
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
        expired_checkout = till.checkout(POINTS_1000)
        expired_seen = parse_request(expired_checkout["deep_link"], http=wallet_http,
                                     resolver=resolver)
        expired_vp = {"points": [sd_jwt.present(
            stale, disclose=["points_at_least_1000"], holder=wallet.signer,
            audience=expired_seen.client_id, nonce=expired_seen.nonce)]}
        _post_answer(wallet_http, expired_seen.response_uri, {
            "vp_token": _vp_json(expired_vp), "state": expired_seen.state})
        outcomes.append(Outcome("expired points credential (issued 2 days ago, 24 h TTL)",
                                "expired", list(till.result(expired_checkout)["errors"])))

        # -- Acme revokes the membership credential; Beta sees it at the next checkout ----
        issued = http.get(f"/admin/v1/members/{member['id']}/credentials", headers=admin).json()
        membership_id = next(c["id"] for c in issued
                             if c["credential_type"] == "LoyaltyMembershipCredential")
        call(f"/admin/v1/credentials/{membership_id}/revoke", {"reason": "demo: card closed"})
        out.print(f"\nAcme revoked the membership credential (status list slot "
                  f"{next(c['status_index'] for c in issued if c['id'] == membership_id)})")
        after = till.checkout(SILVER)
        with contextlib.suppress(TesseraError):  # the till's verdict is what counts
            respond(wallet, parse_request(after["deep_link"], http=wallet_http,
                                          resolver=resolver),
                    consent=lambda _: True, http=wallet_http)
        outcomes.append(Outcome("membership presented after Acme revoked it", "revoked",
                                list(till.result(after)["errors"])))

        attacks = Table(title="Attacks (each posted to Beta's verifier service)")
        attacks.add_column("presentation")
        attacks.add_column("expected")
        attacks.add_column("Beta said")
        for o in outcomes:
            mark = "[green]refused[/]" if o.passed else "[red]NOT REFUSED[/]"
            attacks.add_row(o.name, o.expected, f"{mark} {o.got}")
        out.print(attacks)
        # The first checkout's verdict stands after the replay.
        if till.result(created)["ok"] is not True:
            outcomes.append(Outcome("first checkout still accepted", "ok", ["changed"]))
        log = wallet.consent_log()
        out.print(Panel(f"{len(log)} entries in the member's consent log; latest: "
                        f"{log[-1].event} {log[-1].claims} to {log[-1].verifier_id}",
                        title="Consent log"))

    ok = checkout_ok and all(o.passed for o in outcomes)
    out.rule("[bold green]demo passed" if ok else "[bold red]demo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(run())
