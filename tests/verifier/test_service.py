"""The verifier service over HTTP: a spec-only wallet and Tessera's wallet at the checkout."""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from jwcrypto import jwe, jwk, jws
from sd_jwt.holder import SDJWTHolder

from tessera.did import Resolver, did_jwk, did_web
from tessera.errors import TesseraError
from tessera.keys import generate_signer, signer_from_jwk
from verifier._service import ServiceSettings, create_app
from verifier._tills import TillKeys
from verifier.testing import TestHolder, TestIssuer

BASE = "https://till.test"
# The tills of every service in this module. The wallets' calls (request
# object, response) carry no key: those two routes are public.
TILLS = TillKeys()
TILL = {"Authorization": f"Bearer {TILLS.create('lane 1')['token']}"}


# -- a wallet written from the OpenID4VP 1.0 text alone (jwcrypto, httpx, sd-jwt) ----------


class SpecWallet:
    """Nothing from holder/ or tessera/: what any conformant wallet would do."""

    def __init__(self, key: jwk.JWK, credential: str) -> None:
        self.key = key
        self.credential = credential

    def fetch(self, uri: str, http: httpx.Client) -> tuple[str, dict[str, Any]]:
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(uri).query))
        client_id, request_uri = query["client_id"], query["request_uri"]
        answer = http.get(request_uri)
        answer.raise_for_status()
        assert answer.headers["content-type"].startswith("application/oauth-authz-req+jwt")
        token = jws.JWS()
        token.deserialize(answer.text)
        header = token.jose_header
        assert header["typ"] == "oauth-authz-req+jwt"  # RFC 9101 §10.8
        prefix, _, did = client_id.partition(":")
        assert prefix == "decentralized_identifier"
        assert header["kid"].split("#")[0] == did  # §5.9.3: a key of the client's DID
        token.verify(self.resolve_key(did, header["kid"], http), alg=header["alg"])
        request = json.loads(token.payload)
        assert request["client_id"] == client_id and request["response_type"] == "vp_token"
        assert request["response_mode"] == "direct_post"
        return client_id, request

    @staticmethod
    def resolve_key(did: str, kid: str, http: httpx.Client) -> jwk.JWK:
        """did:jwk embeds the key; did:web (§3.2) is fetched from its host."""
        if did.startswith("did:jwk:"):
            encoded = did[len("did:jwk:"):]
            return jwk.JWK(**json.loads(base64.urlsafe_b64decode(encoded + "==")))
        assert did.startswith("did:web:") and ":" not in did[len("did:web:"):]
        host = urllib.parse.unquote(did[len("did:web:"):])
        document = http.get(f"https://{host}/.well-known/did.json").json()
        assert document["id"] == did and kid in document["authentication"]
        (method,) = [m for m in document["verificationMethod"] if m["id"] == kid]
        return jwk.JWK(**method["publicKeyJwk"])

    def present(self, client_id: str, request: dict[str, Any],
                names: list[str] | None = None, nonce: str | None = None) -> dict[str, Any]:
        query = request["dcql_query"]["credentials"][0]
        chosen = names if names is not None else [c["path"][0] for c in query["claims"]]
        holder = SDJWTHolder(self.credential)
        holder.create_presentation({n: True for n in chosen}, nonce=nonce or request["nonce"],
                                   aud=client_id, holder_key=self.key, sign_alg="ES256")
        return {query["id"]: [holder.sd_jwt_presentation]}

    def post(self, http: httpx.Client, request: dict[str, Any], form: dict[str, str],
             ) -> httpx.Response:
        return http.post(request["response_uri"], data=form)

    def answer(self, uri: str, http: httpx.Client, **kw: Any) -> httpx.Response:
        client_id, request = self.fetch(uri, http)
        token = self.present(client_id, request, **kw)
        return self.post(http, request, {"vp_token": json.dumps(token),
                                         "state": request["state"]})


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def brand() -> TestIssuer:
    return TestIssuer()


@pytest.fixture
def member_key() -> jwk.JWK:
    return jwk.JWK.generate(kty="EC", crv="P-256")


@pytest.fixture
def member(member_key: jwk.JWK) -> TestHolder:
    return TestHolder(signer_from_jwk(json.loads(member_key.export_private())))


def _settings(brand: TestIssuer, store_url: str, **kw: Any) -> ServiceSettings:
    signer = generate_signer("ES256")
    signer = signer.with_key_id(did_jwk(signer.public_key) + "#0")
    return ServiceSettings(
        base_url=BASE, trust=brand.trust_list(), signer=kw.pop("signer", signer),
        client_name="Corner Shop", contacts=("help@corner.test",), store_url=store_url,
        resolver=Resolver(documents={brand.did: brand.did_document}),
        tills=kw.pop("tills", TILLS), **kw,
    )


def _store_url(store: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if store == "redis":  # its own key prefix: tests never see each other's checkouts
        return {"store_url": str(request.getfixturevalue("redis_url")),
                "redis_prefix": f"tessera:test:{secrets.token_hex(4)}:"}
    return {"store_url": f"sqlite:///{tmp_path / 'verifier.db'}"}


@pytest.fixture(params=["sqlite", "redis"])
def client(brand: TestIssuer, tmp_path: Path, request: pytest.FixtureRequest
           ) -> Iterator[TestClient]:
    """The service on SQLite and on Redis, where a step's commands share round trips."""
    store = _store_url(request.param, tmp_path, request)
    app = create_app(_settings(brand, store.pop("store_url"), **store))
    with TestClient(app, base_url=BASE) as c:
        yield c


def _start(client: TestClient, policy: str = "gold-10") -> dict[str, Any]:
    r = client.post("/requests", json={"policy": policy}, headers=TILL)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _result(client: TestClient, created: dict[str, Any]) -> dict[str, Any]:
    return dict(client.get(created["result"], headers=TILL).json())


# -- complete checkouts ------------------------------------------------------------------------


def test_spec_wallet_completes_a_checkout(client: TestClient, brand: TestIssuer,
                                          member: TestHolder, member_key: jwk.JWK) -> None:
    wallet = SpecWallet(member_key, brand.issue_membership(member, tier="platinum"))
    created = _start(client)
    assert created["deep_link"].startswith("openid4vp://?client_id=decentralized_identifier")
    assert _result(client, created)["status"] == "pending"
    answer = wallet.answer(created["deep_link"], client)
    assert answer.status_code == 200, answer.text
    view = _result(client, created)
    assert view["status"] == "done" and view["result"]["ok"] is True
    assert view["result"]["claims"]["tier_at_least_gold"] is True
    assert set(view["result"]["claims"]) <= {"tier_at_least_gold", "program"}
    assert view["result"]["issuer"] == brand.did


def test_tessera_wallet_completes_a_checkout(client: TestClient, brand: TestIssuer,
                                             tmp_path: Path) -> None:
    from holder import Wallet
    from holder._openid4vp import parse_request, respond

    wallet = Wallet.create(tmp_path / "m.wallet", "passphrase-1",
                           resolver=Resolver(documents={brand.did: brand.did_document}))
    wallet.receive(brand.issue_points(TestHolder(wallet.signer), balance=4200))
    created = _start(client, "points-1000")
    request = parse_request(created["deep_link"], http=client)
    assert request.verifier_name == "Corner Shop" and request.contacts == ("help@corner.test",)
    respond(wallet, request, consent=lambda c: True, http=client)
    result = _result(client, created)["result"]
    assert result["ok"] and result["claims"]["points_at_least_1000"] is True
    assert "points_balance" not in result["claims"]


def test_redirect_uri_prefix_service(brand: TestIssuer, tmp_path: Path) -> None:
    from holder import Wallet
    from holder._openid4vp import parse_request, respond

    app = create_app(_settings(brand, "memory://", client_id_prefix="redirect_uri"))
    wallet = Wallet.create(tmp_path / "m.wallet", "passphrase-1",
                           resolver=Resolver(documents={brand.did: brand.did_document}))
    wallet.receive(brand.issue_membership(TestHolder(wallet.signer), tier="gold"))
    with TestClient(app, base_url=BASE) as client:
        created = _start(client)
        assert created["request_uri"] is None and "dcql_query=" in created["deep_link"]
        request = parse_request(created["deep_link"])
        assert request.client_id == f"redirect_uri:{BASE}/response" and not request.signed
        respond(wallet, request, consent=lambda c: True, http=client)
        assert _result(client, created)["result"]["ok"] is True


def test_events_stream_flips_to_the_result(client: TestClient, brand: TestIssuer,
                                           member: TestHolder, member_key: jwk.JWK) -> None:
    wallet = SpecWallet(member_key, brand.issue_membership(member))
    created = _start(client)
    seen: list[dict[str, Any]] = []
    with client.stream("GET", created["events"], headers=TILL) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        answered = False
        for line in stream.iter_lines():
            if not line.startswith("data: "):
                continue
            seen.append(json.loads(line[len("data: "):]))
            if not answered:
                answered = True
                worker = threading.Thread(target=wallet.answer,
                                          args=(created["deep_link"], client))
                worker.start()
        worker.join()
    statuses = [s["status"] for s in seen]
    assert statuses[0] == "pending" and statuses[-1] == "done"
    assert seen[-1]["result"]["ok"] is True


# -- every bad path has a clear outcome -----------------------------------------------------------


def test_request_uri_fetched_twice(client: TestClient, brand: TestIssuer,
                                   member: TestHolder, member_key: jwk.JWK) -> None:
    wallet = SpecWallet(member_key, brand.issue_membership(member))
    created = _start(client)
    client_id, request = wallet.fetch(created["deep_link"], client)
    second = client.get(f"/r/{created['id']}")
    assert second.status_code == 409
    assert second.headers["content-type"] == "application/problem+json"
    assert second.json()["code"] == "replayed"
    view = _result(client, created)
    assert view["status"] == "done" and view["result"]["errors"] == ["replayed"]
    assert "second device" in view["result"]["reason"]
    # The first device's answer no longer counts.
    token = wallet.present(client_id, request)
    late = wallet.post(client, request, {"vp_token": json.dumps(token),
                                         "state": request["state"]})
    assert late.status_code == 409 and late.json()["code"] == "replayed"


def test_tampered_request_object_is_refused_by_the_wallet(client: TestClient) -> None:
    from holder._openid4vp import parse_request
    from tessera.errors import ErrorCode, TesseraError

    created = _start(client)
    token = client.get(f"/r/{created['id']}").text
    head, body, sig = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["response_uri"] = "https://attacker.test/collect"
    forged = ".".join([head, base64.urlsafe_b64encode(json.dumps(payload).encode())
                       .rstrip(b"=").decode(), sig])
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(created["deep_link"]).query))
    with pytest.raises(TesseraError) as err:
        parse_request("openid4vp://?" + urllib.parse.urlencode(
            {"client_id": query["client_id"], "request": forged}))
    assert err.value.code == ErrorCode.INVALID_SIGNATURE
    with pytest.raises(jws.InvalidJWSSignature):  # the spec wallet refuses it as well
        check = jws.JWS()
        check.deserialize(forged)
        did = query["client_id"].split(":", 1)[1]
        check.verify(jwk.JWK(**json.loads(base64.urlsafe_b64decode(did[8:] + "=="))))
    assert _result(client, created)["status"] == "fetched"


def test_answer_with_another_requests_nonce(client: TestClient, brand: TestIssuer,
                                            member: TestHolder, member_key: jwk.JWK) -> None:
    wallet = SpecWallet(member_key, brand.issue_membership(member))
    first, second = _start(client), _start(client)
    _, req_a = wallet.fetch(first["deep_link"], client)
    client_id, req_b = wallet.fetch(second["deep_link"], client)
    token = wallet.present(client_id, req_b, nonce=req_a["nonce"])
    r = wallet.post(client, req_b, {"vp_token": json.dumps(token), "state": req_b["state"]})
    assert r.status_code == 400 and r.json()["code"] == "nonce_mismatch"
    view = _result(client, second)
    assert view["result"]["ok"] is False and view["result"]["errors"] == ["nonce_mismatch"]
    assert "another request" in view["result"]["reason"]
    assert _result(client, first)["status"] == "fetched"


def test_replayed_response(client: TestClient, brand: TestIssuer, member: TestHolder,
                           member_key: jwk.JWK) -> None:
    wallet = SpecWallet(member_key, brand.issue_membership(member))
    created = _start(client)
    client_id, request = wallet.fetch(created["deep_link"], client)
    form = {"vp_token": json.dumps(wallet.present(client_id, request)),
            "state": request["state"]}
    assert wallet.post(client, request, form).status_code == 200
    again = wallet.post(client, request, form)
    assert again.status_code == 409 and again.json()["code"] == "replayed"
    assert _result(client, created)["result"]["ok"] is True  # the first answer stands


def test_claims_not_asked_for(client: TestClient, brand: TestIssuer, member: TestHolder,
                              member_key: jwk.JWK) -> None:
    wallet = SpecWallet(member_key, brand.issue_membership(member, name="Alice"))
    created = _start(client)
    r = wallet.answer(created["deep_link"], client, names=["tier_at_least_gold", "name"])
    assert r.status_code == 400 and r.json()["code"] == "disclosure_mismatch"
    result = _result(client, created)["result"]
    assert result["ok"] is False and result["claims"] == {}
    assert "not asked for" in result["reason"]


def test_missing_required_claim(client: TestClient, brand: TestIssuer, member: TestHolder,
                                member_key: jwk.JWK) -> None:
    wallet = SpecWallet(member_key, brand.issue_membership(member))
    created = _start(client)
    r = wallet.answer(created["deep_link"], client, names=["membership_number"])
    assert r.status_code == 400 and r.json()["code"] == "disclosure_mismatch"
    assert _result(client, created)["result"]["errors"] == ["disclosure_mismatch"]


def test_wallet_declines(client: TestClient, brand: TestIssuer, tmp_path: Path) -> None:
    from holder import Wallet
    from holder._openid4vp import parse_request, respond
    from tessera.errors import ErrorCode, TesseraError

    wallet = Wallet.create(tmp_path / "m.wallet", "passphrase-1",
                           resolver=Resolver(documents={brand.did: brand.did_document}))
    wallet.receive(brand.issue_membership(TestHolder(wallet.signer)))
    created = _start(client)
    request = parse_request(created["deep_link"], http=client)
    with pytest.raises(TesseraError) as err:
        respond(wallet, request, consent=lambda c: False, http=client)
    assert err.value.code == ErrorCode.CONSENT_DENIED
    result = _result(client, created)["result"]
    assert result["errors"] == ["consent_denied"] and result["reason"] == \
        "The member declined to share."


def test_untrusted_issuer(client: TestClient, member: TestHolder, member_key: jwk.JWK) -> None:
    rogue = TestIssuer("did:web:rogue.test", signer=generate_signer("ES256"))
    wallet = SpecWallet(member_key, rogue.issue_membership(member))
    created = _start(client)
    r = wallet.answer(created["deep_link"], client)
    assert r.status_code == 403  # refused from the trust list, before any DID resolution
    assert r.json()["code"] == "untrusted_issuer"
    assert _result(client, created)["result"]["ok"] is False


def test_kb_jwt_with_an_infinite_iat_is_refused_not_a_server_error(
    client: TestClient, brand: TestIssuer, member: TestHolder, member_key: jwk.JWK,
) -> None:
    # iat 1e400 parsed to inf and int(inf) raised OverflowError: a 500 (issue 9 item 6).
    from tessera.formats import sd_jwt
    from tests.test_hostile_remote import with_kb_number

    wallet = SpecWallet(member_key, brand.issue_membership(member))
    client_id, request = wallet.fetch(_start(client)["deep_link"], client)
    query = request["dcql_query"]["credentials"][0]
    vp = sd_jwt.present(wallet.credential, disclose=["tier_at_least_gold"],
                        holder=member.signer, audience=client_id, nonce=request["nonce"])
    vp = with_kb_number(vp, "iat", "1e400", member.signer)
    r = wallet.post(client, request, {"vp_token": json.dumps({query["id"]: [vp]}),
                                      "state": request["state"]})
    assert r.status_code == 400 and r.json()["code"] == "key_binding_invalid", r.text


# -- HTTP surface -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [
    ("get", "/requests/nope/result", {}, 404, "not_found"),
    ("get", "/r/nope", {}, 404, "not_found"),
    ("get", "/requests/nope/qr.png", {}, 404, "not_found"),
    ("post", "/requests", {"json": {"policy": "free-lunch"}}, 404, "not_found"),
    ("post", "/requests", {"json": {}}, 422, "invalid_request"),
    ("post", "/requests", {"json": {"dcql": {"credentials": []}}}, 400, "malformed"),
    ("post", "/requests", {"json": {"policy": "gold-10", "dcql": {}}}, 422, "invalid_request"),
    ("post", "/response", {"data": {"state": "unknown", "vp_token": "{}"}}, 400, "malformed"),
    ("post", "/response", {"data": {"state": "unknown", "vp_token": '{"a":["x"]}'}}, 404,
     "not_found"),
    ("post", "/response", {"json": {"state": "x"}}, 415, "unsupported_format"),
    ("post", "/response", {"data": {"vp_token": '{"a":["x"]}'}}, 422, "invalid_request"),
    # a number where the schema declares a string (docs/conformance.md, negative_data_rejection)
    ("post", "/requests", {"json": {"policy": 5}}, 422, "invalid_request"),
    ("post", "/requests", {"json": {"policy": "gold-10", "purpose": 1.5}}, 422, "invalid_request"),
    ("post", "/requests", {"json": {"policy": "gold-10", "transaction_data": [False]}}, 422,
     "invalid_request"),
    ("post", "/requests", {"json": {"policy": "gold-10", "response_mode": 5}}, 422,
     "invalid_request"),
    ("post", "/presentations/verify",
     {"json": {"verifiablePresentation": {}, "options": {"challenge": 5}}}, 400, "malformed"),
    ("get", "/no/such/path", {}, 404, "not_found"),
])
def test_errors_are_problem_documents(client: TestClient, method: str, path: str,
                                      kwargs: dict[str, Any], status: int, code: str) -> None:
    r = getattr(client, method)(path, headers=TILL, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == code and r.json()["status"] == status


def test_qr_code_and_page(client: TestClient) -> None:
    created = _start(client)
    png = client.get(created["qr"], headers=TILL)
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n") and len(png.content) > 500
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/checkout.js"' in page.text
    assert "textContent" in client.get("/checkout.js").text
    policies = client.get("/policies", headers=TILL).json()
    assert [p["id"] for p in policies] == ["gold-10", "points-1000"]


# -- the till's QR code: a short deep link, a small symbol (issue 11 item 9) ----------------


def _web_settings(brand: TestIssuer, base_url: str, **kw: Any) -> ServiceSettings:
    """The service as `tessera verifier serve` configures it: the did:web of its base URL."""
    signer = generate_signer("ES256")
    signer = signer.with_key_id(did_web(base_url) + "#0")
    return _settings(brand, "memory://", signer=signer, **kw) if base_url == BASE else \
        ServiceSettings(base_url=base_url, trust=brand.trust_list(), signer=signer,
                        client_name="Corner Shop", store_url="memory://", tills=TILLS,
                        resolver=Resolver(documents={brand.did: brand.did_document}), **kw)


class _AppFetcher:
    """did:web documents fetched from the service under test (a wallet's view of it)."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.urls: list[str] = []

    def fetch(self, url: str, *, accept: str = "application/json") -> bytes:
        self.urls.append(url)
        r = self.client.get(url, headers={"Accept": accept})
        assert r.status_code == 200, r.text
        return r.content


# A partner's real name beside the defaults a developer gets: every one fits version 7.
@pytest.mark.parametrize("base_url", [BASE, "http://127.0.0.1:8090", "http://localhost:8090",
                                      "https://checkout.beta-coffee.example"])
def test_qr_deep_link_is_short_and_stays_openid4vp(brand: TestIssuer, base_url: str) -> None:
    from verifier._service import qr_code

    with TestClient(create_app(_web_settings(brand, base_url)), base_url=base_url) as client:
        created = _start(client)
        link = created["deep_link"]
        parts = urllib.parse.urlsplit(link)
        assert (parts.scheme, parts.netloc, parts.path) == ("openid4vp", "", "")
        # §5.10 / RFC 9101 §5.2: by reference, the link carries client_id and request_uri only.
        query = dict(urllib.parse.parse_qsl(parts.query, strict_parsing=True))
        assert set(query) == {"client_id", "request_uri"}
        did = did_web(base_url)
        assert query["client_id"] == created["client_id"] == f"decentralized_identifier:{did}"
        assert query["request_uri"] == created["request_uri"] == f"{base_url}/r/{created['id']}"
        assert len(link) <= 160, link  # was 317 with the did:jwk client_id
        symbol = qr_code(link)
        assert symbol.version <= 7 and symbol.error in ("L", "M", "Q"), symbol.designator
        # The PNG the till shows is that symbol: (17 + 4·version + 2·border) · scale pixels.
        png = client.get(created["qr"], headers=TILL).content
        width = int.from_bytes(png[16:20], "big")
        assert width == (17 + 4 * symbol.version + 2 * 2) * 6


def test_qr_code_of_a_did_jwk_client_id_was_dense(brand: TestIssuer) -> None:
    """The old client identifier, for the record: the same request needs version 13."""
    from verifier._service import qr_code

    with TestClient(create_app(_settings(brand, "memory://")), base_url=BASE) as client:
        link = _start(client)["deep_link"]
    assert len(link) > 250 and qr_code(link).version > 10


def test_qr_table_in_the_docs_is_what_the_service_makes(brand: TestIssuer) -> None:
    from verifier._service import qr_code

    doc = (Path(__file__).parents[2] / "docs" / "verifier-service.md").read_text()
    rows = re.findall(r"^\| `(https?://[^`]+)`[^|]*\| (\d+)[^|]*\| (?:version )?(\d+-[LMQH]), "
                      r"(\d+)×", doc, flags=re.M)
    assert len(rows) == 4, rows
    for base_url, length, designator, modules in rows:
        with TestClient(create_app(_web_settings(brand, base_url)), base_url=base_url) as c:
            link = _start(c)["deep_link"]
        symbol = qr_code(link)
        assert (len(link), symbol.designator) == (int(length), designator), base_url
        assert symbol.symbol_size(border=0)[0] == int(modules)


def test_verifier_serves_its_did_web_document(brand: TestIssuer) -> None:
    settings = _web_settings(brand, BASE)
    assert settings.signer is not None
    with TestClient(create_app(settings), base_url=BASE) as client:
        r = client.get("/.well-known/did.json")
        assert r.status_code == 200 and r.headers["content-type"] == "application/did+json"
        document = r.json()
    kid = settings.signer.key_id
    assert document["id"] == did_web(BASE) and document["authentication"] == [kid]
    assert document["verificationMethod"][0]["publicKeyJwk"] == settings.signer.public_key.to_jwk()
    assert "d" not in document["verificationMethod"][0]["publicKeyJwk"]
    # Behind a path (did:web:host:checkout) the document is at {base}/did.json.
    pathed = _web_settings(brand, "https://shop.test/checkout")
    with TestClient(create_app(pathed), base_url="https://shop.test") as client:
        assert client.get("/did.json").json()["id"] == "did:web:shop.test:checkout"
        assert client.get("/.well-known/did.json").status_code == 404
    # A did:jwk verifier has no document to serve.
    with TestClient(create_app(_settings(brand, "memory://")), base_url=BASE) as client:
        assert client.get("/.well-known/did.json").status_code == 404


def test_wallets_check_the_request_object_against_the_did_web_key(
        brand: TestIssuer, member: TestHolder, member_key: jwk.JWK, tmp_path: Path) -> None:
    from holder import Wallet
    from holder._openid4vp import parse_request, respond

    with TestClient(create_app(_web_settings(brand, BASE)), base_url=BASE) as client:
        # A wallet written from the specs resolves the did:web and checks the signature.
        spec = SpecWallet(member_key, brand.issue_membership(member, tier="gold"))
        created = _start(client)
        assert spec.answer(created["deep_link"], client).status_code == 200
        assert _result(client, created)["result"]["ok"] is True
        # Tessera's wallet, through its resolver (a fetcher, as in development mode).
        fetcher = _AppFetcher(client)
        resolver = Resolver(fetcher, documents={brand.did: brand.did_document})
        wallet = Wallet.create(tmp_path / "m.wallet", "passphrase-1", resolver=resolver)
        wallet.receive(brand.issue_points(TestHolder(wallet.signer), balance=4200))
        created = _start(client, "points-1000")
        request = parse_request(created["deep_link"], http=client, resolver=resolver)
        assert fetcher.urls == [f"{BASE}/.well-known/did.json"]
        assert request.signed and request.client_id == created["client_id"]
        assert request.verifier_identifier == did_web(BASE)
        respond(wallet, request, consent=lambda c: True, http=client)
        assert _result(client, created)["result"]["ok"] is True


def test_a_did_web_document_with_another_key_fails_the_request(brand: TestIssuer) -> None:
    """The key comes from the client_id's DID: a document naming another key refuses it."""
    from holder._openid4vp import parse_request
    from tessera.did import did_document
    from tessera.errors import ErrorCode, TesseraError

    settings = _web_settings(brand, BASE)
    assert settings.signer is not None
    impostor = did_document(did_web(BASE), [(settings.signer.key_id or "",
                                             generate_signer("ES256").public_key)])
    with TestClient(create_app(settings), base_url=BASE) as client:
        created = _start(client)
        with pytest.raises(TesseraError) as err:
            parse_request(created["deep_link"], http=client,
                          resolver=Resolver(documents={did_web(BASE): impostor}))
        assert err.value.code == ErrorCode.INVALID_SIGNATURE
        # A wallet that cannot resolve the did:web does not answer at all.
        with pytest.raises(TesseraError) as err:
            parse_request(_start(client)["deep_link"], http=client, resolver=Resolver())
        assert err.value.code == ErrorCode.DID_RESOLUTION_FAILED


def test_settings_from_env_name_the_verifier_by_the_did_web_of_its_base_url(
        tmp_path: Path) -> None:
    from verifier._service import settings_from_env

    trust = tmp_path / "trust.json"
    trust.write_text('{"issuers": []}')
    settings = settings_from_env({"TESSERA_VERIFIER_TRUST": str(trust),
                                  "TESSERA_VERIFIER_BASE_URL": "https://checkout.beta.example/",
                                  "TESSERA_VERIFIER_STORE": "memory://"})
    assert settings.signer is not None
    assert settings.signer.key_id == "did:web:checkout.beta.example#0"


def _csp(response: httpx.Response) -> dict[str, str]:
    directives = (d.strip().split(" ", 1) for d in
                  response.headers["content-security-policy"].split(";") if d.strip())
    return {d[0]: d[1] if len(d) > 1 else "" for d in directives}


def test_checkout_page_cannot_be_framed_or_scripted_inline(client: TestClient) -> None:
    """Clickjacking and injected script: the page refuses both (CSP level 3)."""
    for path, ctype in (("/", "text/html"), ("/checkout.js", "text/javascript"),
                        ("/checkout.css", "text/css")):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        csp = _csp(r)
        assert csp["frame-ancestors"] == "'none'"
        assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'"
        assert "unsafe-inline" not in r.headers["content-security-policy"]
        assert "unsafe-eval" not in r.headers["content-security-policy"]
    page = client.get("/").text
    # No inline script or style: every <script> has a src, and nothing on*= or style=.
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/checkout.js" defer>']
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)


def test_custom_dcql_request(client: TestClient) -> None:
    dcql = {"credentials": [{"id": "m", "format": "dc+sd-jwt",
                             "claims": [{"path": ["tier"]}]}]}
    r = client.post("/requests", json={"dcql": dcql, "purpose": "check tier"}, headers=TILL)
    assert r.status_code == 201 and r.json()["purpose"] == "check tier"


def test_sdk_import_does_not_load_fastapi() -> None:
    code = ("import sys, verifier; import verifier._openid4vp; "
            "assert 'fastapi' not in sys.modules and 'starlette' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)  # noqa: S603 - our own code


# -- shared state across instances ---------------------------------------------------------------


def _two_instances(brand: TestIssuer, store_url: str, member: TestHolder,
                   member_key: jwk.JWK, **store: Any) -> None:
    """A request made on one instance, answered on a second, read back on the first."""
    signer = generate_signer("ES256")
    signer = signer.with_key_id(did_jwk(signer.public_key) + "#0")
    a = create_app(_settings(brand, store_url, signer=signer, **store))
    b = create_app(_settings(brand, store_url, signer=signer, **store))
    wallet = SpecWallet(member_key, brand.issue_membership(member))
    with TestClient(a, base_url=BASE) as ca, TestClient(b, base_url=BASE) as cb:
        created = _start(ca)
        client_id, request = wallet.fetch(created["deep_link"], cb)
        assert cb.get(f"/r/{created['id']}").status_code == 409
        # The second fetch cancelled the checkout everywhere.
        assert _result(ca, created)["result"]["errors"] == ["replayed"]
        created = _start(ca)
        r = wallet.answer(created["deep_link"], cb)
        assert r.status_code == 200, r.text
        assert _result(ca, created)["result"]["ok"] is True
        form = {"vp_token": json.dumps(wallet.present(client_id, request)),
                "state": request["state"]}
        assert wallet.post(ca, request, form).status_code == 409


@pytest.mark.parametrize("store", ["sqlite", "redis"])
def test_a_step_already_live_refuses_the_new_checkout(
        brand: TestIssuer, tmp_path: Path, store: str, request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A new checkout's single-use step that is live already is ``conflict`` (409), as
    ``NonceStore.issue`` makes it, when the steps are written in one Redis pipeline too."""
    import verifier._sdk

    settings = _store_url(store, tmp_path, request)
    app = create_app(_settings(brand, settings.pop("store_url"), **settings))
    real = secrets.token_urlsafe
    # The state (16 bytes) fixed, the presentation nonce (24) random as ever.
    monkeypatch.setattr(verifier._sdk.secrets, "token_urlsafe",
                        lambda n=None: "S" * 22 if n == 16 else real(n))
    with TestClient(app, base_url=BASE) as c:
        app.state.service.nonces.issue("resp:" + "S" * 22, ttl_seconds=60)
        r = c.post("/requests", json={"policy": "gold-10"}, headers=TILL)
        assert r.status_code == 409 and r.json()["code"] == "conflict"


def test_redis_checkout_round_trips(brand: TestIssuer, member: TestHolder,
                                    member_key: jwk.JWK, redis_url: str,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """On Redis a checkout's independent commands share round trips: 8, not 12.

    POST /requests: the SDK's presentation nonce, then the service's two steps and
    the session in one pipeline; GET /r/{id}: the session and taking the step, then
    the session written back; POST /response: the same two, the SDK taking the
    presentation nonce, the result written; the result: one GET.
    """
    import redis.connection

    trips: list[int] = []
    real = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, *args: Any, **kw: Any) -> None:
        trips.append(1)
        real(self, *args, **kw)

    app = create_app(_settings(brand, redis_url,
                               redis_prefix=f"tessera:test:{secrets.token_hex(4)}:"))
    wallet = SpecWallet(member_key, brand.issue_membership(member))
    with TestClient(app, base_url=BASE) as c:
        _start(c)  # connects (a new connection's handshake is round trips of its own)
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command",
                            counted)
        steps = []
        created = _start(c)
        steps.append(len(trips))
        client_id, request = wallet.fetch(created["deep_link"], c)
        steps.append(len(trips))
        form = {"vp_token": json.dumps(wallet.present(client_id, request)),
                "state": request["state"]}
        assert wallet.post(c, request, form).status_code == 200
        steps.append(len(trips))
        assert _result(c, created)["result"]["ok"] is True
        steps.append(len(trips))
    assert steps == [2, 4, 7, 8]


def test_sqlite_store_shared_by_two_instances(brand: TestIssuer, member: TestHolder,
                                              member_key: jwk.JWK, tmp_path: Path) -> None:
    _two_instances(brand, f"sqlite:///{tmp_path / 'shared.db'}", member, member_key)


def test_redis_store_shared_by_two_instances(brand: TestIssuer, member: TestHolder,
                                             member_key: jwk.JWK, redis_url: str) -> None:
    _two_instances(brand, redis_url, member, member_key,
                   redis_prefix=f"tessera:test:{secrets.token_hex(4)}:")


def test_postgres_store_shared_by_two_instances(brand: TestIssuer, member: TestHolder,
                                                member_key: jwk.JWK, postgres_url: str) -> None:
    import sqlalchemy as sa

    suffix = secrets.token_hex(4)
    tables = {"nonce_table": f"t_vn_{suffix}", "session_table": f"t_vs_{suffix}"}
    try:
        _two_instances(brand, postgres_url, member, member_key, **tables)
    finally:
        engine = sa.create_engine(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
        with engine.begin() as conn:
            for name in tables.values():
                conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
        engine.dispose()


# -- direct_post.jwt through the service (§8.3) ------------------------------------------------


def _spec_encrypt(request: dict[str, Any], payload: dict[str, Any], *,
                  key: jwk.JWK | None = None) -> str:
    """The spec wallet's encryption: jwcrypto only, ECDH-ES + A128GCM to the jwks key."""
    (public,) = request["client_metadata"]["jwks"]["keys"]
    assert public["alg"] == "ECDH-ES" and "d" not in public
    token = jwe.JWE(json.dumps(payload).encode(), protected=json.dumps(
        {"alg": "ECDH-ES", "enc": "A128GCM", "kid": public["kid"]}))
    token.add_recipient(key or jwk.JWK(**public))
    return str(token.serialize(compact=True))


def _start_jwt(client: TestClient) -> dict[str, Any]:
    r = client.post("/requests", json={"policy": "gold-10", "response_mode": "direct_post.jwt"},
                    headers=TILL)
    assert r.status_code == 201, r.text
    assert r.json()["response_mode"] == "direct_post.jwt"
    return dict(r.json())


def test_spec_wallet_encrypted_checkout(client: TestClient, brand: TestIssuer,
                                       member: TestHolder, member_key: jwk.JWK) -> None:
    wallet = SpecWallet(member_key, brand.issue_membership(member, tier="gold"))
    created = _start_jwt(client)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(created["deep_link"]).query))
    answer = client.get(query["request_uri"])
    token = jws.JWS()
    token.deserialize(answer.text)
    request = json.loads(token.objects["payload"])
    assert request["response_mode"] == "direct_post.jwt"
    client_id = query["client_id"]
    vp_token = wallet.present(client_id, request)
    # A tampered JWE and one encrypted to another key are refused, and the
    # checkout stays open for the member's real answer.
    good = _spec_encrypt(request, {"vp_token": vp_token, "state": request["state"]})
    head, key_part, iv, ciphertext, tag = good.split(".")
    flipped = ciphertext[:-2] + ("A" if ciphertext[-2] != "A" else "B") + ciphertext[-1]
    for bad in (".".join([head, key_part, iv, flipped, tag]),
                _spec_encrypt(request, {"vp_token": vp_token, "state": request["state"]},
                              key=jwk.JWK.generate(kty="EC", crv="P-256"))):
        r = client.post(request["response_uri"], data={"response": bad})
        assert r.status_code == 400 and r.json()["code"] == "malformed", r.text
        assert _result(client, created)["status"] == "fetched"
    # A plain direct_post to this request is not accepted either.
    plain = client.post(request["response_uri"], data={"vp_token": json.dumps(vp_token),
                                                       "state": request["state"]})
    assert plain.status_code == 422 and plain.json()["code"] == "invalid_request"
    assert _result(client, created)["result"]["errors"] == ["invalid_request"]


def test_encrypted_checkout_end_to_end(client: TestClient, brand: TestIssuer,
                                      member: TestHolder, member_key: jwk.JWK) -> None:
    wallet = SpecWallet(member_key, brand.issue_membership(member, tier="platinum"))
    created = _start_jwt(client)
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(created["deep_link"]).query))
    token = jws.JWS()
    token.deserialize(client.get(query["request_uri"]).text)
    request = json.loads(token.objects["payload"])
    form = {"response": _spec_encrypt(request, {
        "vp_token": wallet.present(query["client_id"], request), "state": request["state"]})}
    r = client.post(request["response_uri"], data=form)
    assert r.status_code == 200, r.text
    view = _result(client, created)
    assert view["result"]["ok"] is True and view["result"]["claims"]["tier_at_least_gold"]
    again = client.post(request["response_uri"], data=form)
    assert again.status_code == 409 and again.json()["code"] == "replayed"
    stranger = {**json.loads(jwk.JWK.generate(kty="EC", crv="P-256").export_public()),
                "kid": "nope", "alg": "ECDH-ES"}
    unknown = client.post(request["response_uri"], data={"response": _spec_encrypt(
        {"client_metadata": {"jwks": {"keys": [stranger]}}},
        {"state": "x", "error": "access_denied"})})
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"


def test_tessera_wallet_encrypted_checkout(brand: TestIssuer, tmp_path: Path) -> None:
    from holder import Wallet
    from holder._openid4vp import parse_request, respond

    app = create_app(_settings(brand, f"sqlite:///{tmp_path / 'v.db'}",
                               response_mode="direct_post.jwt"))
    wallet = Wallet.create(tmp_path / "m.wallet", "passphrase-1",
                           resolver=Resolver(documents={brand.did: brand.did_document}))
    wallet.receive(brand.issue_membership(TestHolder(wallet.signer), tier="gold"))
    with TestClient(app, base_url=BASE) as client:
        created = _start(client)  # the service's default is now direct_post.jwt
        request = parse_request(created["deep_link"], http=client)
        assert request.response_mode == "direct_post.jwt"
        respond(wallet, request, consent=lambda c: True, http=client)
        assert _result(client, created)["result"]["ok"] is True
        declined = _start(client)
        request = parse_request(declined["deep_link"], http=client)
        with pytest.raises(Exception, match="consent"):
            respond(wallet, request, consent=lambda c: False, http=client)
        assert _result(client, declined)["result"]["errors"] == ["consent_denied"]


# -- event streams: bounded while open, freed when the till goes (issue 9) -----------------------


@contextlib.contextmanager
def _served(app: Any) -> Iterator[str]:
    """The app under uvicorn on a loopback port: real connections, real disconnects."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def test_event_streams_are_bounded_and_a_gone_till_frees_its_slot(brand: TestIssuer) -> None:
    # Before: a stream stayed open until its deadline (request TTL + 30 s)
    # after the till had gone, and nothing bounded how many were open at once.
    tills = TillKeys()
    a, b = tills.create("lane a"), tills.create("lane b")
    keys = {a["id"]: {"Authorization": f"Bearer {a['token']}"},
            b["id"]: {"Authorization": f"Bearer {b['token']}"}}
    app = create_app(_settings(brand, "memory://", tills=tills, max_streams_per_till=2,
                               max_streams=3, sse_interval_seconds=0.05))
    slots = app.state.service.streams
    with _served(app) as url, httpx.Client(base_url=url, timeout=20) as http, \
            contextlib.ExitStack() as held:

        def events(till: str) -> str:
            r = http.post("/requests", json={"policy": "gold-10"}, headers=keys[till])
            assert r.status_code == 201, r.text
            return str(r.json()["events"])

        readers: list[Iterator[str]] = []  # kept: a dropped reader closes its stream

        def live(stream: httpx.Response) -> httpx.Response:
            if stream.status_code == 200:  # the first event has arrived
                readers.append(stream.iter_lines())
                assert next(readers[-1]).startswith("event: status")
            return stream

        def open_stream(path: str, till: str) -> httpx.Response:
            return live(held.enter_context(http.stream("GET", path, headers=keys[till])))

        a_paths = [events(a["id"]) for _ in range(3)]
        b_paths = [events(b["id"]) for _ in range(2)]
        first = http.stream("GET", a_paths[0], headers=keys[a["id"]])
        assert live(first.__enter__()).status_code == 200
        assert open_stream(a_paths[1], a["id"]).status_code == 200
        over = open_stream(a_paths[2], a["id"])  # a third for one till
        assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1
        over.read()
        assert over.json()["code"] == "rate_limited"
        assert open_stream(b_paths[0], b["id"]).status_code == 200
        over = open_stream(b_paths[1], b["id"])  # a fourth in the process
        assert over.status_code == 429
        assert slots.open() == 3 and slots.open(a["id"]) == 2

        first.__exit__(None, None, None)  # lane a's till goes away mid-checkout
        deadline = time.monotonic() + 15  # generous: the checkout's own deadline is 330 s
        while slots.open(a["id"]) != 1:
            assert time.monotonic() < deadline, "a disconnected stream kept its slot"
            time.sleep(0.05)
        assert open_stream(a_paths[2], a["id"]).status_code == 200
        assert slots.open() == 3


def test_stream_bounds_from_env_are_checked() -> None:
    from verifier._service import settings_from_env

    for bad in ("0", "x", "-1"):
        with pytest.raises(TesseraError) as refused:
            settings_from_env({"TESSERA_VERIFIER_TRUST": "/nonexistent",
                               "TESSERA_VERIFIER_MAX_STREAMS": bad})
        assert "MAX_STREAMS" in refused.value.detail


# -- the request id follows from the state (no stored pointer) ----------------------------------


def test_request_id_is_a_one_way_function_of_the_state(client: TestClient, brand: TestIssuer,
                                                       member: TestHolder,
                                                       member_key: jwk.JWK) -> None:
    from verifier._service import request_id_of

    wallet = SpecWallet(member_key, brand.issue_membership(member))
    created = _start(client)
    _, request = wallet.fetch(created["deep_link"], client)
    state = request["state"]
    assert created["id"] == request_id_of(state) and len(created["id"]) == 16
    assert state not in created["deep_link"] and created["id"] not in state
    # Nothing is stored under the state: the response finds its checkout by the id.
    service = client.app.state.service  # type: ignore[attr-defined]
    assert service.sessions.get(f"state:{state}") is None
    # An answer whose state is another request's id, or any other string, finds nothing.
    for wrong in (created["id"], state[:-1] + ("A" if state[-1] != "A" else "B"), "x" * 129):
        form = {"vp_token": json.dumps(wallet.present(request["client_id"], request)),
                "state": wrong}
        refused = client.post("/response", data=form)
        assert refused.status_code == 404 and refused.json()["code"] == "not_found", wrong
    assert _result(client, created)["status"] == "fetched"  # no wrong answer touched it
    form = {"vp_token": json.dumps(wallet.present(request["client_id"], request)),
            "state": state}
    assert wallet.post(client, request, form).status_code == 200
    assert _result(client, created)["result"]["ok"] is True
