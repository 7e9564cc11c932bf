"""OpenID4VCI 1.0, wallet side: Tessera's Wallet receives from the real issuer service.

``holder._openid4vci.receive_offer`` runs against the issuer's FastAPI app
(SQLite, a fake clock shared by issuer and wallet) through an httpx client
bound to the ASGI app; the refused cases use the same app, some behind an
``httpx.MockTransport`` that rewrites one answer.
"""

from __future__ import annotations

import json
import secrets
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from holder import Wallet
from holder._openid4vci import receive_offer
from issuer._app import create_app
from issuer._db import make_engine
from issuer._settings import Settings
from issuer.migrations import upgrade
from tessera import credentials
from tessera.dcql import claims_query
from tessera.did import Resolver, issuer_key_lookup
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tests.issuer.conftest import FakeClock, Service

ISSUER = "https://issuer.example/brands/acme"
MEMBERSHIP = "LoyaltyMembershipCredential_sd_jwt"
POINTS = "LoyaltyPointsCredential_sd_jwt"
PASS = "correct horse battery"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'issuer.db'}",
                        master_key=secrets.token_bytes(32), public_url="https://issuer.example",
                        # No batches, so no key attestations asked: these tests are
                        # about the offer flow on the DID key; pools: test_pool.py.
                        batch_size=1)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    clock = FakeClock()
    with TestClient(create_app(settings, engine=engine, clock=clock)) as client:
        service = Service(client=client, engine=engine, settings=settings, clock=clock)
        service.brand("acme")
        yield service
    engine.dispose()


@pytest.fixture
def member(service: Service) -> dict[str, Any]:
    return {}


@pytest.fixture
def wallet(service: Service, member: dict[str, Any], tmp_path: Path) -> Wallet:
    """A member's wallet, enrolled at Acme with 1,250 points; the brand's did:web is pinned.

    ``member`` is filled with the issuer's member record."""
    doc = service.client.get("/brands/acme/did.json").json()
    w = Wallet.create(tmp_path / "alice.wallet", PASS, clock=service.clock,
                      resolver=Resolver(documents={doc["id"]: doc}))
    program = service.program("acme")
    member.update(service.enrol("acme", program["id"], w.signer))
    r = service.post("acme", f"/admin/v1/members/{member['id']}/points/earn", {"points": 1250})
    assert r.status_code == 201, r.text
    return w


def _offer(service: Service, member: dict[str, Any], *ids: str, **extra: Any
           ) -> dict[str, Any]:
    r = service.client.post(f"/admin/v1/members/{member['id']}/offers", headers=service.h("acme"),
                            json={"credential_configuration_ids": list(ids), **extra})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _refused(wallet: Wallet, uri: str, http: httpx.Client, code: ErrorCode, *,
             tx_code: str | None = None, now: Any = None) -> TesseraError:
    before = Path(wallet.path).read_bytes()
    with pytest.raises(TesseraError) as caught:
        receive_offer(wallet, uri, http_client=http, tx_code=tx_code, now=now)
    assert caught.value.code == code, caught.value
    # Nothing kept, in memory or on disk.
    assert wallet.credentials() == []
    assert Path(wallet.path).read_bytes() == before
    assert Wallet.open(wallet.path, PASS).credentials() == []
    return caught.value


def _tampering(client: TestClient, rewrite: Callable[[httpx.Request, dict[str, Any]], None]
               ) -> httpx.Client:
    """A client that forwards to the app and lets ``rewrite`` edit each JSON answer."""
    def handler(request: httpx.Request) -> httpx.Response:
        answer = client.request(request.method, str(request.url), content=request.content,
                                headers={k: v for k, v in request.headers.items()
                                         if k.lower() not in ("host", "content-length")})
        if not answer.headers.get("content-type", "").startswith("application/json"):
            return httpx.Response(answer.status_code, headers=answer.headers,
                                  content=answer.content)
        body = answer.json()
        rewrite(request, body)
        return httpx.Response(answer.status_code, json=body)

    return httpx.Client(transport=httpx.MockTransport(handler))


def test_receives_membership_by_value_with_tx_code(
    service: Service, wallet: Wallet, member: dict[str, Any],
) -> None:
    offer = _offer(service, member, MEMBERSHIP, tx_code={"length": 6, "description": "SMS"})
    assert offer["tx_code"] and offer["offer_uri"].startswith(
        "openid-credential-offer://?credential_offer=")
    (stored,) = receive_offer(wallet, offer["offer_uri"], http_client=service.client,
                              tx_code=offer["tx_code"], now=service.clock.now)
    assert stored.credential_type == "LoyaltyMembershipCredential"
    assert stored.vct == credentials.MEMBERSHIP.vct
    assert stored.issuer == "did:web:issuer.example:brands:acme"
    assert stored.claims["tier"] == {"name": "silver", "rank": 1}
    assert stored.claims["tier_at_least_silver"] is True
    assert stored.claims["tier_at_least_gold"] is False
    assert stored.claims["membership_number"] == member["membership_number"]
    # Stored sealed on disk: the reopened wallet has it.
    reopened = Wallet.open(wallet.path, PASS)
    assert [c.id for c in reopened.credentials()] == [stored.id]


def test_receives_points_by_reference(
    service: Service, wallet: Wallet, member: dict[str, Any],
) -> None:
    offer = _offer(service, member, POINTS)
    assert offer["tx_code"] is None
    uri = offer["offer_uri_by_reference"]
    assert "credential_offer_uri=" in uri
    (stored,) = receive_offer(wallet, uri, http_client=service.client, now=service.clock.now)
    assert stored.credential_type == "LoyaltyPointsCredential"
    assert stored.claims["points_balance"] == 1250
    assert stored.claims["points_at_least_1000"] is True
    assert stored.claims["points_at_least_5000"] is False
    # The issuer's ledger lists it as issued to this member, valid.
    listed = service.client.get(
        f"/admin/v1/members/{member['id']}/credentials", headers=service.h("acme")).json()
    assert [(c["credential_type"], c["format"], c["status"]) for c in listed] == [
        ("LoyaltyPointsCredential", "dc+sd-jwt", "valid")]


def test_both_types_in_one_offer_and_the_wallet_presents_them(
    service: Service, wallet: Wallet, member: dict[str, Any],
) -> None:
    offer = _offer(service, member, MEMBERSHIP, POINTS)
    got = receive_offer(wallet, offer["offer_uri"], http_client=service.client,
                        now=service.clock.now)
    assert sorted(c.credential_type for c in got) == ["LoyaltyMembershipCredential",
                                                      "LoyaltyPointsCredential"]
    # What was received is bound to the wallet's key: it presents it, key binding and all.
    doc = service.client.get("/brands/acme/did.json").json()
    nonce = secrets.token_urlsafe(16)
    token = wallet.present(dcql={"credentials": [
        claims_query("p", credentials.POINTS.vct, ["points_at_least_1000"], require_true=True)]},
        audience="https://partner.example", nonce=nonce, consent=lambda _: True)
    seen = sd_jwt.verify(token["p"][0], now=service.clock.now, nonce=nonce,
                         issuer_key=issuer_key_lookup(Resolver(documents={doc["id"]: doc})),
                         audience="https://partner.example")
    assert seen.issuer == "did:web:issuer.example:brands:acme"
    assert seen.disclosed == {"points_at_least_1000"}
    assert seen.holder_key is not None
    assert seen.holder_key.to_jwk() == wallet.signer.public_key.to_jwk()


def test_offer_needing_a_tx_code_refused_without_one(
    service: Service, wallet: Wallet, member: dict[str, Any],
) -> None:
    offer = _offer(service, member, MEMBERSHIP, tx_code={"length": 6})
    err = _refused(wallet, offer["offer_uri"], service.client, ErrorCode.INVALID_REQUEST,
                   now=service.clock.now)
    assert "tx_code" in err.detail
    # Refused before any request: the right code still works afterwards.
    got = receive_offer(wallet, offer["offer_uri"], http_client=service.client,
                        tx_code=offer["tx_code"], now=service.clock.now)
    assert len(got) == 1


def test_wrong_tx_code_refused(
    service: Service, wallet: Wallet, member: dict[str, Any],
) -> None:
    offer = _offer(service, member, MEMBERSHIP, tx_code={"length": 6})
    wrong = "000000" if offer["tx_code"] != "000000" else "111111"
    err = _refused(wallet, offer["offer_uri"], service.client, ErrorCode.INVALID_REQUEST,
                   tx_code=wrong, now=service.clock.now)
    assert "token endpoint answered 400" in err.detail and "invalid_grant" in err.detail


def test_replayed_offer_refused(
    service: Service, wallet: Wallet, member: dict[str, Any],
) -> None:
    by_value = _offer(service, member, MEMBERSHIP)
    receive_offer(wallet, by_value["offer_uri"], http_client=service.client,
                  now=service.clock.now)
    with pytest.raises(TesseraError) as caught:
        receive_offer(wallet, by_value["offer_uri"], http_client=service.client,
                      now=service.clock.now)
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert "invalid_grant" in caught.value.detail
    # By reference: the redeemed offer is gone from its URI.
    by_ref = _offer(service, member, POINTS)
    receive_offer(wallet, by_ref["offer_uri_by_reference"], http_client=service.client,
                  now=service.clock.now)
    with pytest.raises(TesseraError) as caught:
        receive_offer(wallet, by_ref["offer_uri_by_reference"], http_client=service.client,
                      now=service.clock.now)
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert "credential offer answered 404" in caught.value.detail
    # One of each, not two.
    assert sorted(c.credential_type for c in wallet.credentials()) == [
        "LoyaltyMembershipCredential", "LoyaltyPointsCredential"]


def test_metadata_naming_another_issuer_refused(
    service: Service, wallet: Wallet, member: dict[str, Any],
) -> None:
    calls: list[str] = []

    def rewrite(request: httpx.Request, body: dict[str, Any]) -> None:
        calls.append(request.url.path)
        if request.url.path.startswith("/.well-known/openid-credential-issuer"):
            # An attacker's metadata: every endpoint theirs, its own issuer id.
            body["credential_issuer"] = "https://evil.example/brands/acme"
            for name in ("credential_endpoint", "nonce_endpoint"):
                body[name] = body[name].replace("issuer.example", "evil.example")

    offer = _offer(service, member, MEMBERSHIP)
    with _tampering(service.client, rewrite) as http:
        err = _refused(wallet, offer["offer_uri"], http, ErrorCode.UNTRUSTED_ISSUER,
                       now=service.clock.now)
    assert "another issuer" in err.detail
    # Refused at the metadata: the pre-authorized code never left the wallet.
    assert calls == ["/.well-known/openid-credential-issuer/brands/acme"]
    # The offer is still good against the real issuer.
    assert len(receive_offer(wallet, offer["offer_uri"], http_client=service.client,
                             now=service.clock.now)) == 1


def test_untampered_passthrough_still_works(
    service: Service, wallet: Wallet, member: dict[str, Any],
) -> None:
    """The tampering client is a faithful proxy when it rewrites nothing (so the test
    above fails for the metadata, not for the proxy)."""
    offer = _offer(service, member, POINTS)
    with _tampering(service.client, lambda _r, _b: None) as http:
        got = receive_offer(wallet, offer["offer_uri_by_reference"], http_client=http,
                            now=service.clock.now)
    assert [c.credential_type for c in got] == ["LoyaltyPointsCredential"]


def test_offer_without_dc_sd_jwt_refused(
    service: Service, wallet: Wallet, member: dict[str, Any],
) -> None:
    offer = _offer(service, member, "LoyaltyMembershipCredential_ldp_vc",
                   "LoyaltyPointsCredential_ldp_vc")
    err = _refused(wallet, offer["offer_uri"], service.client, ErrorCode.UNSUPPORTED_FORMAT,
                   now=service.clock.now)
    assert "dc+sd-jwt" in err.detail
    # An offer naming a configuration the issuer does not publish is no better.
    forged = json.loads(json.dumps(offer["credential_offer"]))
    forged["credential_configuration_ids"] = ["NoSuchCredential"]
    uri = "openid-credential-offer://?credential_offer=" + urllib.parse.quote(
        json.dumps(forged))
    _refused(wallet, uri, service.client, ErrorCode.UNSUPPORTED_FORMAT, now=service.clock.now)


def test_credential_for_another_key_is_not_kept(
    service: Service, wallet: Wallet, member: dict[str, Any], tmp_path: Path,
) -> None:
    """A wallet that is not the enrolled member cannot take the member's offer."""
    doc = service.client.get("/brands/acme/did.json").json()
    thief = Wallet.create(tmp_path / "thief.wallet", PASS, clock=service.clock,
                          resolver=Resolver(documents={doc["id"]: doc}))
    offer = _offer(service, member, MEMBERSHIP)
    with pytest.raises(TesseraError) as caught:
        receive_offer(thief, offer["offer_uri"], http_client=service.client,
                      now=service.clock.now)
    # The issuer refuses the key proof: it is not the member's key.
    assert caught.value.code == ErrorCode.INVALID_REQUEST
    assert "invalid_proof" in caught.value.detail
    assert thief.credentials() == []
