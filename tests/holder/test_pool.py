"""One-time credentials: the wallet's pool, its key attestation, spending, topping up.

The issuer here is ``spec_issuer.SpecIssuer`` (OpenID4VCI 1.0 only, no Tessera issuer
code); the verifiers are the real SDK. The end-to-end run against Tessera's issuer
service is tests/test_unlinkability.py.
"""

from __future__ import annotations

import json
import urllib.parse
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from holder import ConsentRequest, Wallet
from holder._openid4vci import receive_offer, top_up
from holder._openid4vp import parse_request, respond
from tessera.credentials import MEMBERSHIP
from tessera.dcql import claims_query
from tessera.did import Resolver, did_jwk
from tessera.errors import ErrorCode, TesseraError
from tessera.formats import sd_jwt
from tessera.jose import decode_unverified
from tessera.keys import generate_signer, seal_with_passphrase
from tests.holder.spec_issuer import SpecIssuer
from verifier import OpenID4VPVerifier
from verifier._openid4vp import parse_authorization_response
from verifier.testing import FixedClock, TestIssuer, offline_verifier

PASS = "correct horse battery"
GOLD = {"credentials": [claims_query("m", MEMBERSHIP.vct, ["tier_at_least_gold"],
                                     require_true=True)]}


class Shop:
    """A partner verifier (SDK, its own stores) behind an httpx MockTransport."""

    def __init__(self, name: str, brand: TestIssuer, clock: FixedClock) -> None:
        key = generate_signer("ES256")
        did = did_jwk(key.public_key)
        self.base = f"https://{name}.test"
        self.v = OpenID4VPVerifier(
            offline_verifier(brand, clock=clock), client_id=f"decentralized_identifier:{did}",
            response_uri=f"{self.base}/response", signer=key.with_key_id(did + "#0"),
            client_name=name)
        self.requests: dict[str, Any] = {}
        self.bodies: list[bytes] = []
        self.results: list[tuple[str, ...]] = []
        self.on_post: Any = None

    def uri(self) -> str:
        req = self.v.create_request(GOLD, purpose="Gold discount")
        self.requests[req.state] = req
        return "openid4vp://?" + urllib.parse.urlencode(
            {"client_id": self.v.client_id, "request": self.v.request_object(req)})

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/response":
            if self.on_post is not None:
                self.on_post()
            self.bodies.append(request.content)
            parsed = parse_authorization_response(request.content)
            assert not isinstance(parsed, tuple)
            result = self.v.verify_response(parsed, self.requests[parsed.state])  # type: ignore[arg-type]
            self.results.append(result.errors)
            return httpx.Response(200 if result.ok else 400, json={} if result.ok else {
                "code": result.errors[0], "detail": "refused"})
        return httpx.Response(404)


class World:
    def __init__(self, tmp_path: Path, start: datetime | None = None, **issuer: Any) -> None:
        self.clock = FixedClock(start or datetime(2026, 11, 29, 9, 0, tzinfo=UTC))
        self.brand = TestIssuer(clock=self.clock)
        self.wallet = Wallet.create(
            tmp_path / "w.wallet", PASS, clock=self.clock,
            resolver=Resolver(documents={self.brand.did: self.brand.did_document}))
        self.issuer = SpecIssuer(self.wallet.did, self.brand, **issuer)
        self.shops = {n: Shop(n, self.brand, self.clock) for n in ("north", "south")}

    def handler(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host == "brand.test":
            return self.issuer.handler(request)
        return self.shops[host.split(".")[0]].handler(request)

    def http(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))

    def receive(self) -> list[Any]:
        with self.http() as http:
            return receive_offer(self.wallet, self.issuer.offer(), http_client=http,
                                 now=self.clock())

    def present(self, shop: str, **kw: Any) -> ConsentRequest:
        shown: list[ConsentRequest] = []

        def consent(screen: ConsentRequest) -> bool:
            shown.append(screen)
            return True

        with self.http() as http:
            request = parse_request(self.shops[shop].uri(), http=http, now=self.clock())
            respond(self.wallet, request, consent=consent, http=http, **kw)
        self.clock.advance(minutes=7)
        return shown[0]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path)


def test_batch_binds_each_credential_to_a_fresh_attested_key(world: World) -> None:
    got = world.receive()
    assert len(got) == 4 and all(c.one_time and c.spent_at is None for c in got)
    # What the wallet sent: 4 jwt proofs, each signed by its own key, one key attestation
    # signed by the enrolled DID key over exactly those keys, nonce = the c_nonce.
    (_, body), = [r for r in world.issuer.requests if r[0] == "credential"]
    proofs = body["proofs"]["jwt"]
    assert len(proofs) == 4
    headers = [decode_unverified(p).header for p in proofs]
    (attestation,) = {h["key_attestation"] for h in headers}
    att = decode_unverified(attestation)
    assert att.header["typ"] == "key-attestation+jwt"
    assert att.header["kid"].startswith(world.wallet.did + "#")
    assert att.payload["attested_keys"] == [h["jwk"] for h in headers]
    assert {decode_unverified(p).payload["nonce"] for p in proofs} == {att.payload["nonce"]}
    # Four distinct holder keys, none of them the DID key.
    bound = [sd_jwt.verify(c.credential, issuer_key=lambda *_: world.brand.signer.public_key,
                           now=world.clock(), audience=None, nonce=None,
                           require_key_binding=False).holder_key for c in got]
    thumbs = {k.thumbprint() for k in bound if k is not None}
    assert len(thumbs) == 4 and world.wallet.signer.public_key.thumbprint() not in thumbs
    (pool,) = world.wallet.pools()
    assert (pool.unused, pool.used, pool.can_top_up) == (4, 0, True)
    # Sealed on disk, keys included: the reopened wallet can present them.
    again = Wallet.open(world.wallet.path, PASS)
    assert [c.id for c in again.credentials()] == [c.id for c in got]


def test_attestation_proof_type_too(tmp_path: Path) -> None:
    world = World(tmp_path, proof_type="attestation", batch_size=3)
    assert len(world.receive()) == 3
    (_, body), = [r for r in world.issuer.requests if r[0] == "credential"]
    assert list(body["proofs"]) == ["attestation"] and len(body["proofs"]["attestation"]) == 1
    assert world.present("north").items[0].use == "one-time"


def test_each_presentation_spends_one_credential_before_the_answer_leaves(world: World) -> None:
    world.receive()
    world.wallet.set_top_up_below(0)
    seen_on_disk: list[int] = []

    def check_disk() -> None:  # runs when the verifier receives the answer
        stored = Wallet.open(world.wallet.path, PASS).credentials()
        seen_on_disk.append(sum(1 for c in stored if c.spent_at is not None))

    world.shops["north"].on_post = check_disk
    world.shops["south"].on_post = check_disk
    first = world.present("north")
    second = world.present("south")
    assert seen_on_disk == [1, 2]
    assert (first.items[0].use, first.items[0].remaining) == ("one-time", 3)
    assert (second.items[0].use, second.items[0].remaining) == ("one-time", 2)
    assert first.items[0].credential_id != second.items[0].credential_id
    assert world.shops["north"].results == [()] and world.shops["south"].results == [()]
    spent = [c for c in world.wallet.credentials() if c.spent_at]
    assert sorted(c.presented_to[0] for c in spent) == sorted(
        s.v.client_id for s in world.shops.values())


def test_pool_tops_up_by_refresh_token_when_low(world: World) -> None:
    world.receive()
    offers_before = len(world.issuer.codes)
    world.wallet.set_top_up_below(3)
    world.present("north")  # 3 left: not below 3
    assert len(world.issuer.attested) == 1
    world.present("south")  # 2 left: below 3, topped up with the refresh token
    assert len(world.issuer.attested) == 2
    (pool,) = world.wallet.pools()
    assert (pool.unused, pool.used) == (6, 2)
    grants = [r[1] for r in world.issuer.requests if r[0] == "token"]
    assert [g["grant_type"] for g in grants] == [
        "urn:ietf:params:oauth:grant-type:pre-authorized_code", "refresh_token"]
    assert len(world.issuer.codes) == offers_before  # no new offer was needed
    # The rotated refresh token was kept: the next top-up works with it.
    (grant,) = Wallet.open(world.wallet.path, PASS).grants()
    assert grant.refresh_token in world.issuer.refresh_tokens
    with world.http() as http:
        assert len(top_up(world.wallet, grant, http_client=http)) == 4
    # Never a key twice across batches.
    attested = [json.dumps(k, sort_keys=True) for batch in world.issuer.attested for k in batch]
    assert len(attested) == len(set(attested)) == 12


def test_empty_pool_refills_before_asking(world: World) -> None:
    world.issuer.batch_size = 1
    world.receive()
    world.wallet.set_top_up_below(0)  # never after a presentation
    world.present("north")
    screen = world.present("south")  # pool empty: refilled first, then asked
    assert (screen.items[0].use, screen.items[0].remaining) == ("one-time", 0)
    assert len(world.issuer.attested) == 2


def test_empty_pool_and_failed_refresh_is_pool_empty_and_nothing_is_reused(
    world: World,
) -> None:
    world.issuer.batch_size = 1
    world.receive()
    world.wallet.set_top_up_below(0)
    world.present("north")
    world.issuer.refresh_tokens.clear()  # the brand revoked the refresh token
    before = [(c.id, c.spent_at) for c in world.wallet.credentials()]
    with pytest.raises(TesseraError) as caught:
        world.present("south")
    assert caught.value.code == ErrorCode.POOL_EMPTY
    assert "invalid_grant" in caught.value.detail and "--allow-reuse" in caught.value.detail
    # Nothing was shared: the verifier was told access_denied, nothing got spent.
    assert world.shops["south"].results == [("consent_denied",)]
    assert b"vp_token" not in world.shops["south"].bodies[0]
    assert [(c.id, c.spent_at) for c in world.wallet.credentials()] == before
    # The member may explicitly allow a reuse; the consent screen says so.
    screen = world.present("south", allow_reuse=True)
    assert (screen.items[0].use, screen.items[0].remaining) == ("reused", 0)
    assert world.shops["south"].results[-1] == ()


def test_reuse_prefers_a_credential_this_verifier_already_saw(world: World) -> None:
    world.issuer.batch_size = 2
    world.receive()
    world.wallet.set_top_up_below(0)
    north = world.present("north").items[0].credential_id
    south = world.present("south").items[0].credential_id
    assert north != south
    again = world.present("north", allow_reuse=True, top_up=False).items[0]
    assert (again.use, again.credential_id) == ("reused", north)


def test_a_batch_with_a_foreign_key_is_refused_whole(world: World) -> None:
    stranger = generate_signer("ES256")

    def swap_last(issued: list[str]) -> list[str]:
        claims = sd_jwt.verify(issued[0], issuer_key=lambda *_: world.brand.signer.public_key,
                               now=world.clock(), audience=None, nonce=None,
                               require_key_binding=False).claims
        from tessera import credentials
        foreign = sd_jwt.issue_credential(
            credentials.MEMBERSHIP, claims, signer=world.brand.signer, issuer=world.brand.did,
            holder_key=stranger.public_key, issued_at=world.clock(),
            expires_at=world.clock().replace(year=2027))
        return [*issued[:-1], foreign]

    world.issuer.tamper = swap_last
    with pytest.raises(TesseraError) as caught:
        world.receive()
    assert caught.value.code == ErrorCode.KEY_BINDING_INVALID
    assert world.wallet.credentials() == [] and Wallet.open(world.wallet.path, PASS).pools() == []


def test_key_attestation_refuses_reused_or_did_keys(world: World) -> None:
    world.receive()
    held = world.wallet._holder_keys
    old = next(iter(held.values())).public_key
    for keys in ([old], [world.wallet.signer.public_key],
                 [generate_signer("ES256").public_key] * 2):
        with pytest.raises(TesseraError) as caught:
            world.wallet.key_attestation(keys, nonce="n")
        assert caught.value.code == ErrorCode.KEY_BINDING_INVALID


def test_version_1_wallet_opens_and_is_written_back_as_version_2(tmp_path: Path) -> None:
    brand = TestIssuer()
    key = generate_signer("ES256")
    holder = type("H", (), {"signer": key})()
    credential = brand.issue_membership(holder, tier="gold")  # type: ignore[arg-type]
    vc = sd_jwt.verify(credential, issuer_key=lambda *_: brand.signer.public_key,
                       now=datetime.now(UTC), audience=None, nonce=None,
                       require_key_binding=False)
    from tessera.did import did_key
    inner = {"key": key.export_private_jwk(), "credentials": [{
        "id": "c1", "format": "dc+sd-jwt", "credential": credential, "issuer": vc.issuer,
        "vct": vc.vct, "credential_type": "LoyaltyMembershipCredential", "claims": vc.claims,
        "received_at": "2026-01-01T00:00:00+00:00", "expires_at": vc.payload["exp"]}],
        "consents": [], "log_heads": {}}
    path = tmp_path / "old.wallet"
    path.write_text(json.dumps({"version": 1, "did": did_key(key.public_key),
                                "sealed": seal_with_passphrase(json.dumps(inner).encode(),
                                                               PASS)}))
    w = Wallet.open(path, PASS, resolver=Resolver(documents={brand.did: brand.did_document}))
    (cred,) = w.credentials()
    # Bound to the DID key: linkable by construction, so the one-time rule does not apply.
    assert not cred.one_time and w.pools() == []
    for _ in range(2):
        screen, _ = w.plan(dcql=GOLD, verifier_id="https://shop.test")
        assert screen.items[0].use == "linkable" and screen.items[0].remaining is None
    w.save()
    assert json.loads(path.read_text())["version"] == 2
    assert Wallet.open(path, PASS).credentials()[0].claims == cred.claims


def test_a_did_bound_credential_does_not_stand_in_for_a_spent_pool(world: World) -> None:
    # An old credential on the DID key would undo the pool's privacy: once a type has a
    # pool, only the pool (or an explicit reuse) answers.
    holder = type("H", (), {"signer": world.wallet.signer})()
    world.wallet.receive(world.brand.issue_membership(holder, tier="gold"))  # type: ignore[arg-type]
    world.issuer.batch_size = 1
    world.receive()
    world.wallet.set_top_up_below(0)
    assert world.present("north").items[0].use == "one-time"
    with pytest.raises(TesseraError) as caught:
        world.present("south", top_up=False)
    assert caught.value.code == ErrorCode.POOL_EMPTY


def test_the_command_line_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``wallet receive``, ``pool``, ``present`` (consent screen: one-time, how many left;
    ``pool_empty``; ``--allow-reuse``) and ``refresh``, on the command line."""
    from typer.testing import CliRunner

    from holder import _cli as wallet_cli
    from tessera.cli import app

    # The CLI runs on the wall clock; so does this world (nothing here asserts a time).
    world = World(tmp_path, start=datetime.now(UTC), batch_size=2)
    client = world.http()

    class Shared(httpx.Client):
        def __enter__(self) -> Any:
            return client

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(wallet_cli, "_http_client", Shared)
    monkeypatch.setenv("TESSERA_WALLET_PASSPHRASE", PASS)
    monkeypatch.setenv("COLUMNS", "200")
    doc = tmp_path / "brand.json"
    doc.write_text(json.dumps(world.brand.did_document))
    runner = CliRunner()
    w = ["--wallet", str(world.wallet.path)]
    pin = ["--did-document", str(doc)]

    r = runner.invoke(app, ["wallet", "receive", world.issuer.offer(), *w, *pin])
    assert r.exit_code == 0, r.output
    assert r.output.count("LoyaltyMembershipCredential") == 2
    r = runner.invoke(app, ["wallet", "pool", "--top-up-below", "0", *w])
    assert r.exit_code == 0, r.output
    assert ("LoyaltyMembershipCredential from did:web:brand.test: 2 unused, 0 used "
            "(tops up by refresh token)") in r.output
    assert "top up below: 0" in r.output

    def present(*extra: str) -> Any:
        return runner.invoke(app, ["wallet", "present", world.shops["north"].uri(), "--yes",
                                   *w, *pin, *extra])

    r = present()
    assert r.exit_code == 0, r.output
    assert "one-time credential" in " ".join(r.output.split())
    assert "1 unused left after this" in " ".join(r.output.split())
    assert present().exit_code == 0
    world.issuer.refresh_tokens.clear()
    r = present()
    assert r.exit_code == 2 and "pool_empty" in r.output and "invalid_grant" in r.output
    r = present("--allow-reuse")
    assert r.exit_code == 0, r.output
    assert "REUSED" in r.output
    r = runner.invoke(app, ["wallet", "list", *w])
    assert r.output.count("one-time, used") == 2
    r = runner.invoke(app, ["wallet", "refresh", "--all", *w, *pin])
    assert r.exit_code == 2 and "invalid_grant" in r.output
