"""Two partners who compare notes cannot link a member's presentations (issue 12, item 4).

One member, Gold at Acme, presents "tier at least Gold" to two partner verifiers
(the real SDK, each with its own resolver, status cache and nonce store) through the
real wallet, with credentials from the real issuer service. Everything each verifier
received (the direct_post body with its vp_token, the issuer-signed JWT, the
disclosures, the KB-JWT, the status list index and URI it looked up) is decoded
recursively down to every string and number; the two sets may share only the issuer,
the type, the disclosed claims, the status list URI, the registered algorithm and
format names, and the issuer's coarse timestamps (common to its whole anonymity set).
Any other common value fails the test, with where it was found.

The detector is itself attacked: a wallet that reuses a credential, and a credential
bound to the member's DID key, must both be caught.
"""

from __future__ import annotations

import json
import re
import secrets
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from holder import ConsentRequest, Wallet
from holder._openid4vci import receive_offer
from holder._openid4vp import parse_request, respond
from issuer._app import create_app
from issuer._db import make_engine
from issuer._issuance import TIME_GRANULARITY
from issuer._settings import Settings
from issuer.migrations import upgrade
from tessera import credentials
from tessera.dcql import claims_query
from tessera.did import HttpFetcher, Resolver, did_jwk
from tessera.encoding import b64url_decode
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import generate_signer
from tests.issuer.conftest import FakeClock, Service
from verifier import OpenID4VPVerifier, TrustList, Verifier, default_status_check
from verifier._openid4vp import parse_authorization_response

PASS = "correct horse battery"
MEMBERSHIP = "LoyaltyMembershipCredential_sd_jwt"
GOLD = {"credentials": [claims_query("m", credentials.MEMBERSHIP.vct, ["tier_at_least_gold"],
                                     require_true=True)]}
GOLD_AND_POINTS = {"credentials": [
    *GOLD["credentials"],
    claims_query("p", credentials.POINTS.vct, ["points_at_least_1000"], require_true=True)]}
# Registered identifiers every Tessera credential and presentation carries (JOSE, SD-JWT
# VC): shared by every member, so they identify nobody.
REGISTERED = {"dc+sd-jwt", "kb+jwt", "sha-256", "ES256", "EC", "P-256"}


# -- the detector ----------------------------------------------------------------------------

_B64URL = re.compile(r"^[A-Za-z0-9_-]{2,}$")


def _decoded(text: str) -> Any | None:
    """``text`` as JSON, a compact JWS, an SD-JWT or a base64url JSON value, else None."""
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except ValueError:
            pass
    if "~" in text:
        return text.split("~")
    parts = text.split(".")
    if len(parts) == 3 and all(_B64URL.match(p) for p in parts[:2]):
        try:
            return [json.loads(b64url_decode(parts[0])), json.loads(b64url_decode(parts[1])),
                    parts[2]]
        except (ValueError, TesseraError):
            pass
    if _B64URL.match(text) and len(text) >= 8:
        try:
            return json.loads(b64url_decode(text))
        except (ValueError, TesseraError, UnicodeDecodeError):
            pass
    return None


def leaves(value: Any, path: str = "") -> Iterator[tuple[str | int | float, str]]:
    """Every string and number in ``value``, decoding what is encoded, with its path.

    A string that decodes (JSON, JWS, SD-JWT, disclosure) is yielded and then
    descended into, so both the whole and each part are compared.
    """
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, dict):
        for k, v in value.items():
            yield from leaves(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}[{i}]")
    elif isinstance(value, int | float):
        yield value, path
    elif isinstance(value, str):
        if value:
            yield value, path
        inner = _decoded(value)
        if inner is not None:
            yield from leaves(inner, path + "/")


def common_values(a: dict[Any, list[str]], b: dict[Any, list[str]], allowed: set[Any]
                  ) -> dict[Any, tuple[list[str], list[str]]]:
    return {v: (a[v], b[v]) for v in set(a) & set(b) if v not in allowed}


# -- the world: the issuer service, a wallet, two partners ------------------------------------


class RecordingFetcher:
    """The partner's HTTP fetcher, keeping what it fetched (DID documents, status lists)."""

    def __init__(self, inner: HttpFetcher) -> None:
        self.inner = inner
        self.urls: list[str] = []

    def fetch(self, url: str, *, accept: str) -> bytes:
        self.urls.append(url)
        return self.inner.fetch(url, accept=accept)


@dataclass
class Partner:
    name: str
    service: Service
    received: list[bytes] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fetcher = RecordingFetcher(HttpFetcher(self.service.client, allow_http=True,
                                                    is_public_host=lambda h: True))
        resolver = Resolver(self.fetcher)  # its own cache: partners share nothing
        sdk = Verifier(
            trust=TrustList.of([(BRAND_DID, [t.name for t in credentials.CREDENTIAL_TYPES])]),
            resolver=resolver, clock=self.service.clock,
            status_check=default_status_check(resolver, self.fetcher, max_age=timedelta(0),
                                              clock=self.service.clock))
        key = generate_signer("ES256")
        did = did_jwk(key.public_key)
        self.v = OpenID4VPVerifier(
            sdk, client_id=f"decentralized_identifier:{did}",
            response_uri=f"https://{self.name}.test/response",
            signer=key.with_key_id(did + "#0"), client_name=self.name)
        self.requests: dict[str, Any] = {}

    def request_uri(self, dcql: dict[str, Any] = GOLD) -> str:
        req = self.v.create_request(dcql, purpose="Gold member discount")
        self.requests[req.state] = req
        return "openid4vp://?" + urllib.parse.urlencode(
            {"client_id": self.v.client_id, "request": self.v.request_object(req)})

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.received.append(request.content)
        parsed = parse_authorization_response(request.content)
        result = self.v.verify_response(parsed, self.requests[parsed.state],  # type: ignore[arg-type]
                                        now=self.service.clock.now)
        self.results.append(result)
        if not result.ok:
            return httpx.Response(400, json={"code": result.errors[0], "detail": "refused"})
        return httpx.Response(200, json={})

    def observed(self) -> dict[Any, list[str]]:
        """Every value this partner holds from the member: answers and status look-ups."""
        seen: dict[Any, list[str]] = {}
        body: dict[str, Any] = {"answers": [dict(urllib.parse.parse_qsl(b.decode()))
                                            for b in self.received],
                                "verified": [[c.holder, c.status] for r in self.results
                                             for c in r.credentials],
                                "fetched": [u for u in self.fetcher.urls if "status" in u]}
        for value, path in leaves(body):
            seen.setdefault(value, []).append(path)
        return seen


BRAND_DID = "did:web:issuer.example:brands:acme"


class World:
    def __init__(self, service: Service, tmp_path: Path) -> None:
        self.service = service
        doc = service.client.get("/brands/acme/did.json").json()
        self.wallet = Wallet.create(tmp_path / "member.wallet", PASS, clock=service.clock,
                                    resolver=Resolver(documents={doc["id"]: doc}))
        program = service.program("acme")
        self.member = service.enrol("acme", program["id"], self.wallet.signer)
        r = service.post("acme", f"/admin/v1/members/{self.member['id']}/points/earn",
                         {"points": 6000})
        assert r.status_code == 201 and r.json()["balance"]["tier"] == "gold", r.text
        self.partners = {n: Partner(n, service) for n in ("north-cafe", "south-books")}
        # Off the hour, so an exact time in common is not a whole hour by accident.
        service.clock.advance(minutes=47, seconds=13)

    legacy = False
    """Hide key attestation support from the wallet: it proves with its DID key."""

    def route(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host.endswith(".test"):
            return self.partners[host[:-5]].handle(request)
        answer = self.service.client.request(
            request.method, str(request.url), content=request.content,
            headers={k: v for k, v in request.headers.items()
                     if k.lower() not in ("host", "content-length")})
        if self.legacy and request.url.path.startswith("/.well-known/openid-credential-issuer"):
            metadata = answer.json()
            for config in metadata["credential_configurations_supported"].values():
                proofs = config.get("proof_types_supported", {})
                proofs.pop("attestation", None)
                proofs.get("jwt", {}).pop("key_attestations_required", None)
            return httpx.Response(200, json=metadata)
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def http(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.route))

    def receive(self, *configs: str) -> None:
        r = self.service.client.post(
            f"/admin/v1/members/{self.member['id']}/offers", headers=self.service.h("acme"),
            json={"credential_configuration_ids": list(configs or [MEMBERSHIP])})
        assert r.status_code == 201, r.text
        with self.http() as http:
            receive_offer(self.wallet, r.json()["offer_uri"], http_client=http,
                          now=self.service.clock.now)

    def present(self, partner: str, dcql: dict[str, Any] = GOLD, **kw: Any) -> ConsentRequest:
        shown: list[ConsentRequest] = []

        def consent(screen: ConsentRequest) -> bool:
            shown.append(screen)
            return True

        with self.http() as http:
            request = parse_request(self.partners[partner].request_uri(dcql), http=http,
                                    now=self.service.clock.now)
            respond(self.wallet, request, consent=consent, http=http, **kw)
        assert self.partners[partner].results[-1].ok, self.partners[partner].results[-1]
        # Visits are minutes apart (the same second at two tills would link by itself).
        self.service.clock.advance(minutes=11)
        return shown[0]

    def allowed(self) -> set[Any]:
        """Issuer, type, disclosed claims, status list URI, registered names, coarse times."""
        allowed: set[Any] = set(REGISTERED)
        for partner in self.partners.values():
            for result in partner.results:
                for cred in result.credentials:
                    allowed |= {v for v, _ in leaves(cred.claims)} | set(cred.claims)
            for body in partner.received:
                form = dict(urllib.parse.parse_qsl(body.decode()))
                if "vp_token" not in form:
                    continue  # the wallet's access_denied
                vp_token = json.loads(form["vp_token"])
                for presentation in (p for ps in vp_token.values() for p in ps):
                    header, payload, _ = _decoded(presentation.split("~")[0])
                    allowed |= {payload["iss"], payload["vct"], header["kid"], header["alg"],
                                payload["status"]["status_list"]["uri"]}
                    allowed |= {payload[t] for t in ("iat", "nbf", "exp")
                                if t in payload and payload[t] % COARSE == 0}
        return allowed


# The issuer rounds iat/nbf/exp of batch credentials to this (docs/privacy.md); a common
# time that is not a multiple of it is exact, hence linking, and fails the test.
COARSE = int(TIME_GRANULARITY.total_seconds())


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'issuer.db'}",
                        master_key=secrets.token_bytes(32), public_url="https://issuer.example")
    engine = make_engine(settings.database_url)
    upgrade(engine)
    clock = FakeClock()
    with TestClient(create_app(settings, engine=engine, clock=clock)) as client:
        svc = Service(client=client, engine=engine, settings=settings, clock=clock)
        svc.brand("acme")
        yield svc
    engine.dispose()


@pytest.fixture
def world(service: Service, tmp_path: Path) -> World:
    return World(service, tmp_path)


def _linking(world: World) -> dict[Any, tuple[list[str], list[str]]]:
    north, south = (p.observed() for p in world.partners.values())
    return common_values(north, south, world.allowed())


def test_two_partners_share_nothing_but_issuer_type_claims_and_list(world: World) -> None:
    world.receive()
    first = world.present("north-cafe")
    second = world.present("south-books")
    assert first.items[0].use == second.items[0].use == "one-time"
    assert first.items[0].credential_id != second.items[0].credential_id
    linking = _linking(world)
    assert linking == {}, json.dumps({str(k): v for k, v in linking.items()}, indent=1)[:4000]
    # The comparison had material: both saw a whole presentation, status index included.
    for partner in world.partners.values():
        seen = partner.observed()
        assert any(p.endswith(".status.status_list.idx") for ps in seen.values() for p in ps)
        assert any("/[1]" in p for ps in seen.values() for p in ps)  # decoded JWS payloads


def test_the_detector_catches_a_reused_credential(world: World) -> None:
    world.receive()
    world.wallet.set_top_up_below(0)
    for cred in world.wallet.credentials():  # leave a single one-time credential
        if cred.one_time and cred.id != world.wallet.credentials()[-1].id:
            world.wallet.remove(cred.id)
    for grant in world.wallet.grants():
        world.wallet.drop_grant(grant.id)
    world.present("north-cafe")
    with pytest.raises(TesseraError) as caught:
        world.present("south-books")
    assert caught.value.code == ErrorCode.POOL_EMPTY
    assert world.present("south-books", allow_reuse=True).items[0].use == "reused"
    linking = _linking(world)
    paths = [p for north, _ in linking.values() for p in north]
    # The same credential links on its key, its signature, its salts, its status index.
    assert any(p.endswith(".cnf.jwk.x") for p in paths), linking
    assert any(p.endswith(".status.status_list.idx") for p in paths), linking
    assert any(p.endswith("[2]") for p in paths), linking  # the issuer's signature


def test_the_detector_catches_credentials_on_the_did_key(world: World) -> None:
    # Credentials bound to the enrolled DID key (what a wallet gets from an issuer without
    # key attestations): two distinct credentials, yet their cnf key links them.
    world.legacy = True
    world.receive()
    first = world.present("north-cafe")
    world.receive()
    second = world.present("south-books")
    assert first.items[0].use == second.items[0].use == "linkable"
    assert first.items[0].credential_id != second.items[0].credential_id
    paths = [p for north, _ in _linking(world).values() for p in north]
    assert any(p.endswith(".cnf.jwk.x") for p in paths), paths


def test_two_types_in_one_answer_have_one_holder_key_and_still_do_not_link(
    world: World,
) -> None:
    """A checkout asking for a tier and a points threshold gets both on one one-time key
    (the verifier refuses an answer with two holders), and the two partners still share
    nothing: the wallet spends the whole slot."""
    world.receive(MEMBERSHIP, "LoyaltyPointsCredential_sd_jwt")
    first = world.present("north-cafe", GOLD_AND_POINTS)
    second = world.present("south-books", GOLD_AND_POINTS)
    for screen in (first, second):
        assert [i.use for i in screen.items] == ["one-time", "one-time"]
    keys = {p.name: {c.holder for c in p.results[-1].credentials}
            for p in world.partners.values()}
    assert all(len(k) == 1 for k in keys.values())  # one holder per answer
    assert keys["north-cafe"] != keys["south-books"]
    used = {c.holder_key for c in world.wallet.credentials() if c.spent_at}
    assert len(used) == 2
    assert sum(1 for c in world.wallet.credentials() if c.spent_at) == 4
    linking = _linking(world)
    assert linking == {}, json.dumps({str(k): v for k, v in linking.items()}, indent=1)[:4000]


def test_types_from_separate_offers_are_refused_before_anything_is_spent(
    world: World,
) -> None:
    # Separate offers, separate keys: one answer would have two holders, which a
    # verifier refuses. The wallet says so first and keeps its credentials unspent.
    world.receive(MEMBERSHIP)
    world.receive("LoyaltyPointsCredential_sd_jwt")
    with pytest.raises(TesseraError) as caught:
        world.present("north-cafe", GOLD_AND_POINTS)
    assert caught.value.code == ErrorCode.KEY_BINDING_INVALID
    assert "one offer" in caught.value.detail
    assert world.partners["north-cafe"].received == []
    assert not any(c.spent_at for c in world.wallet.credentials())
