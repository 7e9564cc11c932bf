"""The C2SP witness: every status of tlog-witness add-checkpoint, persistence, races, attacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tessera import merkle
from tessera.cli import app as cli
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import generate_signer
from tessera.tlog import (
    AddCheckpoint,
    Checkpoint,
    Cosigner,
    Note,
    NoteSignature,
    NoteSigner,
    Verifier,
    open_checkpoint,
    parse_signature_lines,
)
from tessera.witness import (
    SIZE_MEDIA_TYPE,
    Latest,
    Witness,
    WitnessClient,
    WitnessConflict,
    WitnessStore,
    create_app,
    origin_hash,
)

ORIGIN = "loyalty.example/brands/acme/log"
NOW = 1_790_000_000


class Log:
    """A log: a tree, its key, and checkpoints of any size."""

    def __init__(self, origin: str = ORIGIN, signer: NoteSigner | None = None,
                 prefix: bytes = b"entry") -> None:
        self.signer = signer or NoteSigner(origin, generate_signer())
        self.origin = origin
        self.tree = merkle.MemoryTree()
        self.prefix = prefix

    def grow(self, n: int) -> Log:
        for _ in range(n):
            self.tree.append(self.prefix + b"%d" % self.tree.size)
        return self

    def note(self) -> Note:
        return Checkpoint(self.origin, self.tree.size, self.tree.root_hash()).sign([self.signer])

    def body(self, old: int) -> bytes:
        proof = self.tree.consistency_proof(old) if old else []
        return AddCheckpoint(old, tuple(proof), self.note()).to_bytes()


@pytest.fixture
def log() -> Log:
    return Log().grow(5)


@pytest.fixture
def witness(log: Log, tmp_path: Path) -> Witness:
    return Witness(Cosigner("witness.example/w1", generate_signer()), [log.signer.verifier],
                   WitnessStore(tmp_path / "w.db"), clock=lambda: NOW)


@pytest.fixture
def client(witness: Witness) -> TestClient:
    return TestClient(create_app(witness))


def _post(client: TestClient, body: bytes) -> tuple[int, str, str]:
    r = client.post("/add-checkpoint", content=body)
    return r.status_code, r.headers.get("content-type", ""), r.text


def test_cosigns_first_and_consistent_checkpoints(client: TestClient, witness: Witness,
                                                 log: Log) -> None:
    status, _, text = _post(client, log.body(0))
    assert status == 200, text
    lines = parse_signature_lines(text)
    note = log.note().with_signatures(lines)
    opened = open_checkpoint(note, log.signer.verifier, witnesses=[witness.cosigner.verifier],
                             quorum=1)
    assert opened.cosignatures == {"witness.example/w1": NOW}
    log.grow(7)
    status, _, text = _post(client, log.body(5))
    assert status == 200, text
    # Monitors read the latest cosigned checkpoint with both signatures.
    served = client.get(f"/{origin_hash(ORIGIN)}/checkpoint")
    assert served.status_code == 200
    opened = open_checkpoint(served.text, log.signer.verifier,
                             witnesses=[witness.cosigner.verifier], quorum=1)
    assert opened.checkpoint.size == 12
    assert client.get(f"/{origin_hash('other')}/checkpoint").status_code == 404
    assert client.get("/vkey").text.strip() == witness.cosigner.vkey
    assert client.get("/readyz").json()["checks"] == {"store": "1 log(s) cosigned"}


def test_wrong_old_size_is_409_with_the_cosigned_size(client: TestClient, log: Log) -> None:
    assert _post(client, log.body(0))[0] == 200
    log.grow(3)
    status, ctype, text = _post(client, log.body(2))
    assert (status, text) == (409, "5\n")
    assert ctype == SIZE_MEDIA_TYPE
    status, _, text = _post(client, log.body(0))  # a client that knows nothing yet
    assert (status, text) == (409, "5\n")


def test_smaller_and_forked_trees_are_refused_forever(client: TestClient, witness: Witness,
                                                      log: Log, tmp_path: Path) -> None:
    assert _post(client, log.body(0))[0] == 200
    # A smaller tree: its old size cannot be 5 (400) and any other old size is 409.
    smaller = Log(signer=log.signer).grow(3)
    assert _post(client, AddCheckpoint(5, (), smaller.note()).to_bytes())[0] == 400
    assert _post(client, smaller.body(0))[0] == 409
    # A fork of the same size: same log key, other entries.
    fork = Log(signer=log.signer, prefix=b"forged").grow(5)
    assert _post(client, fork.body(0))[0] == 409  # kept as evidence all the same
    status, _, text = _post(client, AddCheckpoint(5, (), fork.note()).to_bytes())
    assert status == 422, text
    assert json.loads(text)["code"] == "invalid_request"
    # A larger fork with a proof from its own branch does not verify against size 5.
    fork.grow(4)
    assert _post(client, fork.body(5))[0] == 422
    reasons = [reason for reason, _ in witness.store.evidence(ORIGIN)]
    assert reasons[0] == "same size, another root"
    assert reasons[1].startswith("not consistent") and len(reasons) == 3
    # After a restart the witness still holds size 5 and the honest branch goes on.
    again = Witness(witness.cosigner, [log.signer.verifier], WitnessStore(tmp_path / "w.db"),
                    clock=lambda: NOW + 1)
    restarted = TestClient(create_app(again))
    assert _post(restarted, fork.body(0)) == (409, SIZE_MEDIA_TYPE, "5\n")
    assert _post(restarted, fork.body(5))[0] == 422
    log.grow(1)
    assert _post(restarted, log.body(5))[0] == 200


def test_unknown_log_and_bad_signatures(client: TestClient, log: Log) -> None:
    stranger = Log(origin="other.example/log").grow(2)
    assert _post(client, stranger.body(0))[0] == 404
    # The right origin signed by another key (unknown name+ID): no trusted signature.
    impostor = Log(signer=NoteSigner(ORIGIN, generate_signer())).grow(5)
    status, _, text = _post(client, impostor.body(0))
    assert status == 403 and json.loads(text)["code"] == "forbidden"
    # The trusted key's name and ID over a signature that does not verify.
    note = log.note()
    sig = note.signatures[0]
    bad = Note(note.text, (NoteSignature(sig.name, sig.key_id, bytes(64)),))
    assert _post(client, AddCheckpoint(0, (), bad).to_bytes())[0] == 403
    # The same signature on another tree.
    other = Log(signer=log.signer).grow(6).note()
    moved = Note(other.text, note.signatures)
    assert _post(client, AddCheckpoint(0, (), moved).to_bytes())[0] == 403


def test_malformed_requests(client: TestClient, log: Log) -> None:
    note = bytes(log.note())
    for body in (b"", b"old 0\n" + note, b"old 01\n\n" + note, b"old 0\n\nnot a note\n",
                 b"old 0\n\n" + note.replace(b"\n5\n", b"\n05\n")):
        assert _post(client, body)[0] == 400, body
    assert client.post("/add-checkpoint", content=b"x" * 200_000).status_code == 413
    # Empty-tree rules: size 0 must have the empty root; old 0 takes no proof.
    empty = Checkpoint(ORIGIN, 0, bytes(32)).sign([log.signer])
    assert _post(client, AddCheckpoint(0, (), empty).to_bytes())[0] == 422
    assert _post(client, AddCheckpoint(0, (bytes(32),), log.note()).to_bytes())[0] == 422
    good_empty = Checkpoint(ORIGIN, 0, merkle.EMPTY_ROOT).sign([log.signer])
    assert _post(client, AddCheckpoint(0, (), good_empty).to_bytes())[0] == 200


class StaleStore(WitnessStore):
    """A store whose first read is stale: what a racing request sees."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.stale: Latest | None = None
        self.armed = False

    def latest(self, origin: str) -> Latest | None:
        if self.armed:
            self.armed = False
            return self.stale
        return super().latest(origin)


def test_compare_and_swap_stops_a_racing_rollback(log: Log, tmp_path: Path) -> None:
    # tlog-witness §add-checkpoint: A checked at N, B stores N+K, A must not store N.
    store = StaleStore(tmp_path / "race.db")
    witness = Witness(Cosigner("witness.example/w1", generate_signer()), [log.signer.verifier],
                      store, clock=lambda: NOW)
    witness.add_checkpoint(log.body(0))
    store.stale = store.latest(ORIGIN)
    log.grow(4)
    witness.add_checkpoint(log.body(5))  # B: now at 9
    small = Log(signer=log.signer).grow(7)
    store.armed = True  # A read size 5 before B stored 9
    with pytest.raises(WitnessConflict) as exc:
        witness.add_checkpoint(small.body(5))
    assert exc.value.latest_size == 9
    assert store.latest(ORIGIN).size == 9  # type: ignore[union-attr]
    assert not store.swap(ORIGIN, None, 1, bytes(32), "x", NOW)  # first insert only once


def test_client_learns_the_size_from_409_and_checks_the_cosignature(client: TestClient,
                                                                    witness: Witness,
                                                                    log: Log) -> None:
    assert _post(client, log.body(0))[0] == 200
    log.grow(10)
    remote = WitnessClient("http://testserver", witness.cosigner.verifier, client)
    sig = remote.cosign(log.note(), log.tree.consistency_proof)
    assert remote.known_size == 15
    witness.cosigner.verifier.verify(log.note().text, sig)
    # A client configured with another key for that witness refuses its answer.
    log.grow(1)
    wrong = WitnessClient("http://testserver",
                          Cosigner("witness.example/w1", generate_signer()).verifier, client)
    wrong.known_size = 15
    with pytest.raises(TesseraError) as exc:
        wrong.cosign(log.note(), log.tree.consistency_proof)
    assert exc.value.code is ErrorCode.INVALID_SIGNATURE


def test_cli_vkey_and_key_file(tmp_path: Path) -> None:
    key = tmp_path / "witness.jwk"
    runner = CliRunner()
    first = runner.invoke(cli, ["witness", "vkey", "--key", str(key), "--name",
                                "witness.example/w1"])
    assert first.exit_code == 0, first.output
    assert key.stat().st_mode & 0o777 == 0o600
    again = runner.invoke(cli, ["witness", "vkey", "--key", str(key), "--name",
                                "witness.example/w1"])
    assert again.output == first.output
    assert Verifier.parse(first.output.strip()).sig_type == 0x04
    bad = runner.invoke(cli, ["witness", "vkey", "--key", str(key), "--name", "a b"])
    assert bad.exit_code == 2
