"""The brand's log as C2SP checkpoints and tiles, cosigned by witnesses; a split view caught.

Two partner witnesses (``tessera.witness``, over HTTP through their own
apps) cosign each brand checkpoint; the member's audit requires a quorum.
The fork test shows a brand two members two different trees of one size:
the witnesses refuse the second branch and that member's audit fails.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlmodel import select

from holder._audit import audit
from holder._wallet import Wallet
from issuer import _translog, _witnessing
from issuer._db import session_scope
from issuer._log_models import LogNode
from issuer._settings import Settings
from tessera import merkle
from tessera.did import Resolver
from tessera.keys import generate_signer
from tessera.tlog import Cosigner, Note, TileHashSource, TileRef, Verifier, open_checkpoint
from tessera.witness import Witness, WitnessStore, create_app

from .conftest import Service
from .test_audit import rewrite_history

BASE = "http://testserver/brands/air"
ORIGIN = "issuer.example/brands/air/log"
HOSTS = ("w1.partner.example", "w2.partner.example")


@dataclasses.dataclass
class Witnesses:
    cosigners: dict[str, Cosigner]
    running: dict[str, Witness] = dataclasses.field(default_factory=dict)
    down: set[str] = dataclasses.field(default_factory=set)

    def keys(self) -> list[Verifier]:
        return [c.verifier for c in self.cosigners.values()]

    def start(self, log_vkey: str, tmp: Path, clock: Callable[[], float]) -> None:
        for host, cosigner in self.cosigners.items():
            self.running[host] = Witness(cosigner, [Verifier.parse(log_vkey)],
                                         WitnessStore(tmp / f"{host}.db"), clock=clock)

    def transport(self) -> httpx.MockTransport:
        clients = {}

        def handle(request: httpx.Request) -> httpx.Response:
            host = request.url.host
            if host in self.down or host not in self.running:
                raise httpx.ConnectError("witness down", request=request)
            if host not in clients:
                clients[host] = TestClient(create_app(self.running[host]))
            answer = clients[host].post(request.url.path, content=request.content)
            return httpx.Response(answer.status_code, headers=answer.headers,
                                  content=answer.content)

        return httpx.MockTransport(handle)


@pytest.fixture
def witnesses() -> Witnesses:
    return Witnesses({h: Cosigner(f"{h}/witness", generate_signer()) for h in HOSTS})


@pytest.fixture
def settings(database_url: str, witnesses: Witnesses) -> Settings:
    # No background sequencer: each test says when batches are integrated.
    return Settings(database_url=database_url, master_key=secrets.token_bytes(32),
                    public_url="https://issuer.example", log_sequencer_interval=0,
                    witnesses=tuple((f"http://{h}", c.vkey)
                                    for h, c in witnesses.cosigners.items()))


@pytest.fixture
def world(service: Service, witnesses: Witnesses, tmp_path: Path) -> Iterator[dict[str, Any]]:
    service.brand("air")
    program = service.program("air")
    doc = service.client.get("/brands/air/did.json").json()
    (log_service,) = doc["service"]
    witnesses.start(log_service["vkeys"][0], tmp_path, lambda: service.clock.now.timestamp())
    state = service.client.app.state.tessera  # type: ignore[attr-defined]
    state.witness_http = httpx.Client(transport=witnesses.transport())
    yield {"doc": doc, "program": program, "service": log_service,
           "resolver": Resolver(documents={doc["id"]: doc})}
    state.witness_http.close()


def _earn(service: Service, member_id: str, points: int) -> None:
    r = service.post("air", f"/admin/v1/members/{member_id}/points/earn", {"points": points})
    assert r.status_code == 201, r.text


def test_each_sequencer_batch_goes_to_the_witnesses(service: Service, world: dict[str, Any],
                                                    witnesses: Witnesses) -> None:
    from functools import partial

    from issuer._app import _witness_batch
    from issuer._log_models import LogCosignature

    member = service.enrol("air", world["program"]["id"])
    for points in (1, 2, 3):
        _earn(service, member["id"], points)
    state = service.client.app.state.tessera  # type: ignore[attr-defined]
    sequencer = _translog.Sequencer(service.engine, keystore=state.keystore,
                                    clock=service.clock,
                                    after_batch=partial(_witness_batch, state))
    assert sequencer.run_once() == 3
    # Nobody asked for a checkpoint: the batch's head was sent all the same.
    for witness in witnesses.running.values():
        assert witness.store.latest(ORIGIN).size == 3  # type: ignore[union-attr]
    with session_scope(service.engine) as s:
        rows = s.exec(select(LogCosignature).where(LogCosignature.tree_size == 3)).all()
    assert sorted(r.witness for r in rows) == sorted(f"{h}/witness" for h in HOSTS)
    assert sequencer.run_once() == 0  # nothing pending: no batch, no witness call


def test_the_did_document_declares_the_log_and_its_note_key(world: dict[str, Any]) -> None:
    service_entry, doc = world["service"], world["doc"]
    assert service_entry["type"] == "C2SPTransparencyLog"
    assert service_entry["origin"] == ORIGIN
    assert service_entry["serviceEndpoint"] == f"https://{ORIGIN}"
    (vkey,) = service_entry["vkeys"]
    key = Verifier.parse(vkey)
    assert key.name == ORIGIN
    # The note key is the brand's Ed25519 assertion key.
    assert any(m["publicKeyJwk"] == key.key.to_jwk() for m in doc["verificationMethod"])


def test_checkpoints_are_cosigned_and_tiles_rebuild_them(service: Service, world: dict[str, Any],
                                                         witnesses: Witnesses) -> None:
    member = service.enrol("air", world["program"]["id"])
    for points in range(1, 6):
        _earn(service, member["id"], points)
    log_key = Verifier.parse(world["service"]["vkeys"][0])
    r = service.client.get("/brands/air/log/checkpoint")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    opened = open_checkpoint(r.text, log_key, witnesses=witnesses.keys(), quorum=2)
    assert opened.checkpoint.size == 5 and len(opened.cosignatures) == 2
    # The log grows; the witnesses cosign again, each from the size it cosigned.
    for points in range(300):
        _earn(service, member["id"], 1 + points % 3)
    later = open_checkpoint(service.client.get("/brands/air/log/checkpoint").text, log_key,
                            witnesses=witnesses.keys(), quorum=2)
    assert later.checkpoint.size == 305
    # The earlier checkpoint stays available with its cosignatures.
    earlier = service.client.get("/brands/air/log/checkpoints/5")
    assert open_checkpoint(earlier.text, log_key, witnesses=witnesses.keys(), quorum=2)
    assert service.client.get("/brands/air/log/checkpoints/999").status_code == 404

    fetched: list[str] = []

    def fetch(ref: TileRef) -> bytes:
        fetched.append(ref.path)
        answer = service.client.get(f"/brands/air/log/{ref.path}")
        assert answer.status_code == 200, (ref.path, answer.text)
        assert "immutable" in answer.headers["cache-control"]
        return answer.content

    tiles = TileHashSource(fetch, 305)
    tiles.verify(later.checkpoint)
    assert "tile/1/000.p/1" in fetched
    assert merkle.inclusion_proof(tiles, 3, 305) == merkle.inclusion_proof(
        _translog_source(service), 3, 305)
    # Tiles beyond the tree, non-canonical paths and (by default) entry bundles: 404.
    for path in ("tile/0/002", "tile/0/001.p/50", "tile/0/x000/000", "tile/entries/000"):
        assert service.client.get(f"/brands/air/log/{path}").status_code == 404, path


def _translog_source(service: Service) -> merkle.HashSource:
    tree = merkle.MemoryTree()
    with session_scope(service.engine) as s:
        for digest in s.exec(select(LogNode.hash).where(LogNode.level == 0)
                             .order_by(LogNode.idx)):
            tree.append_leaf_hash(bytes(digest))
    return tree


def test_public_entry_bundles_hash_to_the_tiles(service: Service, world: dict[str, Any]) -> None:
    service.settings.__dict__["log_public_entries"] = True  # frozen dataclass, test only
    member = service.enrol("air", world["program"]["id"])
    for points in range(1, 4):
        _earn(service, member["id"], points)
    log_key = Verifier.parse(world["service"]["vkeys"][0])
    cp = open_checkpoint(service.client.get("/brands/air/log/checkpoint").text, log_key)

    def fetch(ref: TileRef) -> bytes:
        return service.client.get(f"/brands/air/log/{ref.path}").content

    tiles = TileHashSource(fetch, cp.checkpoint.size)
    tiles.verify(cp.checkpoint)
    entries = tiles.entries(0, fetch)
    assert [json.loads(e)["delta"] for e in entries] == [1, 2, 3]


def test_a_witness_down_leaves_the_checkpoint_with_fewer_cosignatures(
        service: Service, world: dict[str, Any], witnesses: Witnesses,
        monkeypatch: pytest.MonkeyPatch) -> None:
    real_monotonic = time.monotonic
    member = service.enrol("air", world["program"]["id"])
    _earn(service, member["id"], 10)
    witnesses.down.add(HOSTS[1])
    log_key = Verifier.parse(world["service"]["vkeys"][0])
    note = service.client.get("/brands/air/log/checkpoint").text
    assert open_checkpoint(note, log_key, witnesses=witnesses.keys(), quorum=1)
    with pytest.raises(Exception, match="1 witness cosignatures, 2 required"):
        open_checkpoint(note, log_key, witnesses=witnesses.keys(), quorum=2)
    witnesses.down.clear()  # back, but not asked again before RETRY_SECONDS
    assert len(Note.parse(service.client.get("/brands/air/log/checkpoint").text)
               .signatures) == 2
    monkeypatch.setattr(_witnessing.time, "monotonic",
                        lambda: real_monotonic() + _witnessing.RETRY_SECONDS + 1)
    again = service.client.get("/brands/air/log/checkpoint").text
    assert open_checkpoint(again, log_key, witnesses=witnesses.keys(), quorum=2)


def _wallet(service: Service, world: dict[str, Any], path: Path) -> tuple[Wallet, dict[str, Any]]:
    wallet = Wallet.create(path, "passphrase-1", resolver=world["resolver"], clock=service.clock)
    member = service.enrol("air", world["program"]["id"], signer=wallet.signer)
    return wallet, member


def _audit(service: Service, wallet: Wallet, world: dict[str, Any], witnesses: Witnesses,
           quorum: int = 2) -> Any:
    return audit(wallet, brand_did=world["doc"]["id"], http=service.client,
                 resolver=world["resolver"], base_url=BASE, now=service.clock.now,
                 witnesses=witnesses.keys(), quorum=quorum)


def test_fork_two_trees_of_one_size_the_witnesses_refuse_the_second(
        service: Service, world: dict[str, Any], witnesses: Witnesses, tmp_path: Path) -> None:
    alice, alice_member = _wallet(service, world, tmp_path / "alice.json")
    bob, bob_member = _wallet(service, world, tmp_path / "bob.json")
    for member in (alice_member, bob_member):
        _earn(service, member["id"], 500)
    r = service.post("air", f"/admin/v1/members/{alice_member['id']}/points/redeem",
                     {"points": 100})
    assert r.status_code == 201, r.text
    first = _audit(service, alice, world, witnesses)
    assert first.ok, first.problems
    assert first.tree_size == 3 and len(first.cosigned_by) == 2
    # The brand now shows Bob another tree of the same size (Alice's redemption
    # shrunk to 10 points, every node rehashed, the head re-signed).
    rewrite_history(service)  # another tree of the same size
    second = _audit(service, bob, world, witnesses)
    assert second.tree_size == 3 and second.root_hash != first.root_hash
    assert not second.ok
    assert any("not cosigned by 2 witness" in p for p in second.problems), second.problems
    assert world["doc"]["id"] not in Wallet.open(bob.path, "passphrase-1").log_heads
    # Each witness refused the second branch and kept it as evidence.
    for witness in witnesses.running.values():
        (reason, _), *_ = witness.store.evidence(ORIGIN)
        assert "not consistent" in reason
        assert witness.store.latest(ORIGIN).size == 3  # type: ignore[union-attr]
    # Without witnesses Bob, who never saw this log before, would have been fooled:
    assert audit(bob, brand_did=world["doc"]["id"], http=service.client,
                 resolver=world["resolver"], base_url=BASE, now=service.clock.now).ok
    # Alice, who remembers the first head, sees the rewrite too.
    assert not _audit(service, alice, world, witnesses).ok


def test_quorum_checks_the_witness_keys_and_the_head(service: Service, world: dict[str, Any],
                                                     witnesses: Witnesses, tmp_path: Path) -> None:
    wallet, member = _wallet(service, world, tmp_path / "w.json")
    _earn(service, member["id"], 5)
    strangers = [Cosigner(f"{h}/witness", generate_signer()).verifier for h in HOSTS]
    report = audit(wallet, brand_did=world["doc"]["id"], http=service.client,
                   resolver=world["resolver"], base_url=BASE, now=service.clock.now,
                   witnesses=strangers, quorum=1)
    assert not report.ok  # same names, other keys: no cosignature counts
    with pytest.raises(Exception, match="quorum"):
        _audit(service, wallet, world, witnesses, quorum=3)
    assert _audit(service, wallet, world, witnesses).ok


def test_note_is_the_same_bytes_each_time(service: Service, world: dict[str, Any]) -> None:
    member = service.enrol("air", world["program"]["id"])
    _earn(service, member["id"], 5)
    a = service.client.get("/brands/air/log/checkpoints/1").text
    b = service.client.get("/brands/air/log/checkpoints/1").text
    assert a == b
    assert Note.parse(a).signatures[0].name == ORIGIN


def test_witness_settings_are_checked() -> None:
    from tessera.encoding import b64url_encode
    from tessera.errors import TesseraError
    from tessera.tlog import NoteSigner

    env = {"TESSERA_MASTER_KEY": b64url_encode(secrets.token_bytes(32))}
    cosigner = Cosigner("w.example/witness", generate_signer())
    good = json.dumps([{"url": "https://w.example", "vkey": cosigner.vkey}])
    assert Settings.from_env({**env, "TESSERA_WITNESSES": good}).witnesses == (
        ("https://w.example", cosigner.vkey),)
    assert Settings.from_env(env).witnesses == ()
    note_key = NoteSigner("w.example/witness", generate_signer()).vkey  # type 0x01, not 0x04
    for bad in ("[1]", '{"url": "https://w.example"}', "not json",
                json.dumps([{"url": "ftp://w.example", "vkey": cosigner.vkey}]),
                json.dumps([{"url": "https://w.example", "vkey": note_key}])):
        with pytest.raises(TesseraError):
            Settings.from_env({**env, "TESSERA_WITNESSES": bad})


def test_the_brand_log_with_an_independent_c2sp_implementation(
        service: Service, settings: Settings, aics: Any, tmp_path: Path) -> None:
    """aics-witness cosigns the brand's checkpoints over HTTP; aics-tlog verifies the
    checkpoint, the cosignature and the tiles the issuer serves."""
    import base64

    service.brand("air")
    program = service.program("air")
    doc = service.client.get("/brands/air/did.json").json()
    log_vkey = doc["service"][0]["vkeys"][0]
    proc, url, witness_vkey = aics.start_witness("aics.example/witness", {ORIGIN: log_vkey})
    state = service.client.app.state.tessera  # type: ignore[attr-defined]
    service.settings.__dict__["witnesses"] = ((url, witness_vkey),)  # test only
    state.witness_http = httpx.Client(timeout=10)
    try:
        member = service.enrol("air", program["id"])
        for points in range(1, 4):
            _earn(service, member["id"], points)
        first = service.client.get("/brands/air/log/checkpoint").text
        for points in range(260):
            _earn(service, member["id"], 1 + points % 5)
        note = service.client.get("/brands/air/log/checkpoint").text
        answer = aics.run({"op": "verify", "note": note, "log_vkey": log_vkey,
                           "witness_vkeys": [witness_vkey], "quorum": 1, "origin": ORIGIN})
        assert answer["ok"], answer
        assert answer["size"] == 263 and answer["witnesses"] == ["aics.example/witness"]
        assert first != note
        paths = ["tile/0/000", "tile/0/001.p/7", "tile/1/000.p/1"]
        tiles = {p: base64.b64encode(service.client.get(f"/brands/air/log/{p}").content)
                 .decode() for p in paths}
        read = aics.run({"op": "tiles", "tiles": tiles, "size": 263})
        assert read["root"] == answer["root"]
    finally:
        state.witness_http.close()
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=20)


def test_a_brand_rotated_to_p256_gets_no_checkpoint(service: Service,
                                                    world: dict[str, Any]) -> None:
    from issuer._admin import brand_by_slug
    from issuer._keystore import SqlKeyStore

    with session_scope(service.engine) as s:
        brand = brand_by_slug(s, slug="air")
        SqlKeyStore(service.settings.master_key).rotate(s, brand_id=brand.id, did=brand.did,
                                                        alg="ES256")
    r = service.client.get("/brands/air/log/checkpoint")
    assert r.status_code == 400 and r.json()["code"] == "unsupported_algorithm"
    # The retired Ed25519 key's vkey stays declared: older checkpoints still verify.
    doc = service.client.get("/brands/air/did.json").json()
    assert doc["service"][0]["vkeys"] == world["service"]["vkeys"]
