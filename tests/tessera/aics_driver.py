"""Runs inside the aics-tlog/aics-witness venv (Python >= 3.12), never in Tessera's.

An independent C2SP implementation judges what Tessera produces and produces
what Tessera must accept. One JSON command on stdin, one JSON answer on
stdout; bytes travel as base64. ``witness`` instead serves aics-witness over
HTTP on loopback, prints its URL and vkey, and stops when stdin closes.
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import aics_tlog as t


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def verify(cmd: dict[str, Any]) -> dict[str, Any]:
    note = t.parse_note(cmd["note"])
    out: dict[str, Any] = {"note_ok": t.verify_note(note, [t.parse_vkey(cmd["log_vkey"])])}
    witnesses = [t.parse_vkey(v) for v in cmd.get("witness_vkeys", [])]
    result = t.verify_checkpoint(note, t.parse_vkey(cmd["log_vkey"]), witnesses,
                                 cmd.get("quorum", 0), expected_origin=cmd.get("origin"))
    out.update(ok=result.ok, error=result.error, size=result.size,
               root=b64(result.root) if result.root else None, witnesses=result.witnesses,
               timestamps=result.timestamps)
    return out


def tiles(cmd: dict[str, Any]) -> dict[str, Any]:
    reader = t.MemoryTileReader({p: unb64(d) for p, d in cmd["tiles"].items()})
    size = cmd["size"]
    out: dict[str, Any] = {"root": b64(t.tree_root_from_tiles(reader, size))}
    index = cmd.get("index")
    if index is not None:
        proof = t.inclusion_proof_from_tiles(reader, index, size)
        entry = t.read_entry(reader, index, size)
        out.update(proof=[b64(p) for p in proof], entry=b64(entry),
                   included=t.verify_leaf_inclusion(entry, index, size, proof,
                                                    unb64(cmd["root"])))
    old = cmd.get("old")
    if old is not None:
        out["consistency"] = [b64(p) for p in t.consistency_proof_from_tiles(reader, old, size)]
    return out


def make(cmd: dict[str, Any]) -> dict[str, Any]:
    """A log and a witness of aics's own making, for Tessera to verify."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    log_key, witness_key = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    origin, wname = cmd["origin"], cmd["witness"]
    leaves = [unb64(e) for e in cmd["entries"]]
    materialised = t.TileWriter(leaves).materialise()
    root = t.tree_root_from_tiles(t.MemoryTileReader(materialised), len(leaves))
    note = t.sign_checkpoint(t.Checkpoint(origin, len(leaves), root), log_key, origin)
    _, line = t.sign_cosignature(witness_key, wname, cmd["timestamp"], origin, len(leaves), root)
    cosigned = t.Note(note.text, (*note.signatures, line))
    return {"log_vkey": t.format_vkey(t.vkey_from_ed25519(origin, log_key.public_key()
                                                          .public_bytes_raw())),
            "witness_vkey": t.format_vkey(t.cosignature_vkey(wname, witness_key.public_key())),
            "note": cosigned.serialise(), "tiles": {p: b64(d) for p, d in materialised.items()}}


def witness(cmd: dict[str, Any]) -> None:
    import threading

    from aics_witness.config import LogConfig
    from aics_witness.service import Witness, make_server
    from aics_witness.store import WitnessStore
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    with tempfile.TemporaryDirectory() as tmp:
        store = WitnessStore(Path(tmp) / "witness.db", create=True)
        logs = [LogConfig.from_strings(origin, [vkey]) for origin, vkey in cmd["logs"].items()]
        service = Witness(cmd["name"], Ed25519PrivateKey.generate(), store, logs)
        server = make_server(service, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(json.dumps({"url": server.url, "vkey": service.vkey_text}), flush=True)
        sys.stdin.read()  # until the test closes our stdin
        server.shutdown()
        store.close()


def main() -> None:
    cmd = json.loads(sys.stdin.readline())
    if cmd["op"] == "witness":
        witness(cmd)
        return
    answer = {"verify": verify, "tiles": tiles, "make": make}[cmd["op"]](cmd)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
