"""Interop with aics-tlog and aics-witness, an independent C2SP implementation (PyPI).

Both directions: what Tessera signs, tiles and cosigns is verified by
aics-tlog; what aics-tlog makes is verified by Tessera; aics-witness cosigns
Tessera's checkpoints over HTTP (and refuses a fork), and aics-tlog verifies
the cosignatures Tessera's witness returns.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tessera import merkle, tlog
from tessera.errors import TesseraError
from tessera.keys import generate_signer
from tessera.tlog import Checkpoint, Cosigner, NoteSigner, TileHashSource, TileRef, Verifier
from tessera.witness import Witness, WitnessClient, WitnessStore, create_app
from tests.aics import Aics

ORIGIN = "loyalty.example/brands/acme/log"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _tree(n: int, prefix: bytes = b"leaf ") -> tuple[merkle.MemoryTree, list[bytes]]:
    tree = merkle.MemoryTree()
    entries = [prefix + b"%d" % i for i in range(n)]
    for entry in entries:
        tree.append(entry)
    return tree, entries


def _published(tree: merkle.MemoryTree, entries: list[bytes]) -> dict[str, str]:
    out = {}
    for ref in tlog.tiles_for_size(tree.size):
        out[ref.path] = b64(tlog.tile_hashes(tree, ref))
        if ref.level == 0:
            bundle = TileRef(None, ref.index, ref.width)
            out[bundle.path] = b64(tlog.encode_bundle(entries[ref.start():ref.start()
                                                              + ref.width]))
    return out


def test_aics_verifies_our_checkpoint_and_cosignatures(aics: Aics) -> None:
    log = NoteSigner(ORIGIN, generate_signer())
    witness = Cosigner("witness.example/w1", generate_signer())
    tree, _ = _tree(9)
    note = Checkpoint(ORIGIN, tree.size, tree.root_hash()).sign([log])
    cosigned = note.with_signatures([witness.cosign(note.text, timestamp=1_790_000_000)])
    ask: dict[str, Any] = {"op": "verify", "note": cosigned.to_text(), "log_vkey": log.vkey,
                           "witness_vkeys": [witness.vkey], "quorum": 1, "origin": ORIGIN}
    answer = aics.run(ask)
    assert answer["note_ok"] and answer["ok"], answer
    assert answer["witnesses"] == ["witness.example/w1"]
    assert answer["timestamps"] == {"witness.example/w1": 1_790_000_000}
    assert answer["root"] == b64(tree.root_hash()) and answer["size"] == 9
    # The same check fails on a tampered root or a cosignature of another tree.
    forged = cosigned.to_text().replace(b64(tree.root_hash()), b64(bytes(32)))
    assert not aics.run({**ask, "note": forged})["note_ok"]
    other = Checkpoint(ORIGIN, 10, tree.root_hash()).sign([log])
    moved = note.with_signatures([witness.cosign(other.text, timestamp=1)])
    assert not aics.run({**ask, "note": moved.to_text()})["ok"]


@pytest.mark.parametrize("size", [1, 255, 256, 700])
def test_aics_reads_our_tiles_and_entry_bundles(aics: Aics, size: int) -> None:
    tree, entries = _tree(size)
    index = size - 1
    answer = aics.run({"op": "tiles", "tiles": _published(tree, entries), "size": size,
                       "index": index, "root": b64(tree.root_hash()), "old": size // 2})
    assert answer["root"] == b64(tree.root_hash())
    assert answer["proof"] == [b64(p) for p in tree.inclusion_proof(index)]
    assert answer["entry"] == b64(entries[index]) and answer["included"]
    assert answer["consistency"] == [b64(p) for p in tree.consistency_proof(size // 2)]


def test_we_verify_what_aics_makes(aics: Aics) -> None:
    entries = [b"aics %d" % i for i in range(300)]
    made = aics.run({"op": "make", "origin": "aics.example/log", "witness": "aics.example/w",
                     "entries": [b64(e) for e in entries], "timestamp": 1_790_000_000})
    log_key, witness_key = Verifier.parse(made["log_vkey"]), Verifier.parse(made["witness_vkey"])
    opened = tlog.open_checkpoint(made["note"], log_key, witnesses=[witness_key], quorum=1)
    assert opened.checkpoint.size == 300
    assert opened.cosignatures == {"aics.example/w": 1_790_000_000}
    tiles = {TileRef.parse(p): base64.b64decode(d) for p, d in made["tiles"].items()}
    source = TileHashSource(tiles.__getitem__, 300)
    source.verify(opened.checkpoint)
    assert source.entries(1, tiles.__getitem__) == entries[256:]
    assert merkle.inclusion_proof(source, 5, 300) == _tree(300, b"aics ")[0].inclusion_proof(5)


def test_aics_witness_cosigns_our_checkpoints_and_refuses_a_fork(aics: Aics) -> None:
    log = NoteSigner(ORIGIN, generate_signer())
    proc, url, vkey = aics.start_witness("aics.example/witness", {ORIGIN: log.vkey})
    try:
        key = Verifier.parse(vkey)
        with httpx.Client(timeout=10) as http:
            client = WitnessClient(url, key, http)
            tree, _ = _tree(5)
            note = Checkpoint(ORIGIN, tree.size, tree.root_hash()).sign([log])
            first = client.cosign(note, tree.consistency_proof)
            for entry in (b"more %d" % i for i in range(20)):
                tree.append(entry)
            note = Checkpoint(ORIGIN, tree.size, tree.root_hash()).sign([log])
            second = client.cosign(note, tree.consistency_proof)
            assert first != second
            opened = tlog.open_checkpoint(note.with_signatures([second]), log.verifier,
                                          witnesses=[key], quorum=1)
            assert opened.checkpoint.size == 25
            # Another branch of the same size, shown to someone else: refused.
            fork, _ = _tree(25, b"forged ")
            forked = Checkpoint(ORIGIN, 25, fork.root_hash()).sign([log])
            fresh = WitnessClient(url, key, http)  # a client that never heard of size 25
            with pytest.raises(TesseraError):
                fresh.cosign(forked, fork.consistency_proof)
            # A smaller tree too, whatever old size is claimed.
            small, _ = _tree(3)
            with pytest.raises(TesseraError):
                WitnessClient(url, key, http).cosign(
                    Checkpoint(ORIGIN, 3, small.root_hash()).sign([log]), small.consistency_proof)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=20)


def test_aics_verifies_what_our_witness_returns(aics: Aics, tmp_path: Path) -> None:
    log = NoteSigner(ORIGIN, generate_signer())
    ours = Witness(Cosigner("tessera.example/witness", generate_signer()), [log.verifier],
                   WitnessStore(tmp_path / "w.db"))
    client = WitnessClient("http://testserver", ours.cosigner.verifier,
                           TestClient(create_app(ours)))
    tree, _ = _tree(40)
    note = Checkpoint(ORIGIN, tree.size, tree.root_hash()).sign([log])
    cosigned = note.with_signatures([client.cosign(note, tree.consistency_proof)])
    answer = aics.run({"op": "verify", "note": cosigned.to_text(), "log_vkey": log.vkey,
                       "witness_vkeys": [ours.cosigner.vkey], "quorum": 1, "origin": ORIGIN})
    assert answer["ok"], answer
    assert answer["witnesses"] == ["tessera.example/witness"]
