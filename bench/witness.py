"""``python -m bench witness``: cosigning latency per checkpoint (C2SP tlog-witness).

What a brand's new checkpoint costs at a partner's witness (``tessera.witness``):

* **floor**: the ``cosignature/v1`` Ed25519 signature alone;
* **add-checkpoint**: :meth:`Witness.add_checkpoint` on a request body: parse
  the note, verify the log's signature, the consistency proof from the
  previous size, the compare-and-swap in SQLite (a file, ``synchronous=FULL``:
  the cosigned size is on disk before the answer), the cosignature;
* **round trip**: the log's :class:`WitnessClient` over the witness's HTTP app
  (ASGI in process, no socket): request, response, and the client's check of
  the returned cosignature against the witness key.

Each call submits the next checkpoint of a growing log (one leaf more), with
the consistency proof from the one before: the steady state of a log that
checkpoints every batch.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._harness import Case
from tessera import merkle
from tessera.keys import generate_signer
from tessera.tlog import AddCheckpoint, Checkpoint, Cosigner, Note, NoteSignature, NoteSigner

ORIGIN = "bench.example/brands/acme/log"


@dataclass
class _Log:
    signer: NoteSigner = field(default_factory=lambda: NoteSigner(ORIGIN, generate_signer()))
    tree: merkle.MemoryTree = field(default_factory=merkle.MemoryTree)

    def grow(self) -> Note:
        self.tree.append(b"leaf %d" % self.tree.size)
        return Checkpoint(ORIGIN, self.tree.size, self.tree.root_hash()).sign([self.signer])


@dataclass
class _State:
    witness: Any
    bodies: list[bytes]
    notes: list[Note]
    client: Any = None
    log: _Log | None = None
    tmp: Any = None


def _witness(log: _Log) -> tuple[Any, Any]:
    from tessera.witness import Witness, WitnessStore

    tmp = tempfile.TemporaryDirectory()
    cosigner = Cosigner("bench.example/witness", generate_signer())
    witness = Witness(cosigner, [log.signer.verifier], WitnessStore(Path(tmp.name) / "w.db"))
    first = log.grow()
    witness.add_checkpoint(AddCheckpoint(0, (), first).to_bytes())
    return witness, tmp


def _add_setup(n: int) -> _State:
    log = _Log()
    witness, tmp = _witness(log)
    bodies = []
    for _ in range(n):
        old = log.tree.size
        note = log.grow()
        bodies.append(AddCheckpoint(old, tuple(log.tree.consistency_proof(old)), note).to_bytes())
    bodies.reverse()
    return _State(witness, bodies, [], tmp=tmp)


def _add(state: _State) -> list[NoteSignature]:
    result: list[NoteSignature] = state.witness.add_checkpoint(state.bodies.pop())
    return result


def _round_trip_setup(n: int) -> _State:
    from fastapi.testclient import TestClient

    from tessera.witness import WitnessClient, create_app

    log = _Log()
    witness, tmp = _witness(log)
    client = WitnessClient("http://testserver", witness.cosigner.verifier,
                           TestClient(create_app(witness)))
    client.known_size = log.tree.size
    notes = []
    for _ in range(n):
        notes.append(log.grow())
    notes.reverse()
    return _State(witness, [], notes, client=client, log=log, tmp=tmp)


def _round_trip(state: _State) -> NoteSignature:
    assert state.log is not None
    note = state.notes.pop()
    size = int(note.text.split("\n")[1])
    tree = state.log.tree
    # Proofs are the log's side: computed outside the witness, as the issuer does.
    result: NoteSignature = state.client.cosign(note, lambda old: tree.consistency_proof(old,
                                                                                         size))
    return result


def _floor_setup(n: int) -> tuple[Cosigner, str]:
    note = _Log().grow()
    return Cosigner("bench.example/witness", generate_signer()), note.text


def _one_line(result: Any) -> None:
    lines = result if isinstance(result, list) else [result]
    if len(lines) != 1 or len(lines[0].signature) != 72:
        raise AssertionError("the witness did not answer one cosignature/v1 line")


def cases() -> list[Case]:
    return [
        Case("floor.cosign.ed25519", _floor_setup,
             lambda s: s[0].cosign(s[1], timestamp=1_790_000_000), group="witness",
             label="cosignature/v1 signature only", check=_one_line),
        Case("witness.add_checkpoint", _add_setup, _add, floor="floor.cosign.ed25519",
             group="witness", label="verify note + proof, CAS in SQLite (FULL), cosign",
             check=_one_line),
        Case("witness.round_trip", _round_trip_setup, _round_trip,
             floor="floor.cosign.ed25519", group="witness",
             label="WitnessClient -> HTTP app (in process) -> checked cosignature",
             check=_one_line),
    ]
