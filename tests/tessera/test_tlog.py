"""C2SP signed notes, checkpoints, cosignatures and tiles: vectors, round trips, attacks."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera import merkle, tlog
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import generate_signer
from tessera.tlog import (
    AddCheckpoint,
    Checkpoint,
    Cosigner,
    Note,
    NoteSignature,
    NoteSigner,
    TileHashSource,
    TileRef,
    Verifier,
    open_checkpoint,
    verify_note,
)

# signed-note §Verifier keys, "Example": this vkey verifies this note.
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_NOTE = ("This is an example message.\n\n\u2014 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1Y"
             "Eq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n")
ORIGIN = "loyalty.example/brands/acme/log"


def _code(exc: pytest.ExceptionInfo[TesseraError]) -> ErrorCode:
    return exc.value.code


def test_spec_example_verifies_and_tampering_fails() -> None:
    verifier = Verifier.parse(SPEC_VKEY)
    assert verifier.vkey() == SPEC_VKEY
    assert verify_note(Note.parse(SPEC_NOTE), [verifier]) == [(verifier, None)]
    with pytest.raises(TesseraError) as exc:
        verify_note(Note.parse(SPEC_NOTE.replace("example message", "example massage")),
                    [verifier])
    assert _code(exc) is ErrorCode.INVALID_SIGNATURE


def test_key_id_is_the_recommended_hash() -> None:
    signer = generate_signer()
    raw = signer.public_key.raw()
    note_signer = NoteSigner("example.com/log", signer)
    assert note_signer.verifier.key_id == hashlib.sha256(
        b"example.com/log\n\x01" + raw).digest()[:4]
    cosigner = Cosigner("example.com/log", signer)
    assert cosigner.verifier.key_id == hashlib.sha256(
        b"example.com/log\n\x04" + raw).digest()[:4]
    assert note_signer.vkey.split("+")[1] == note_signer.verifier.key_id.hex()
    for _ in range(20):  # base64 has '+' too: a vkey splits at its first two only
        key = NoteSigner("example.com/log", generate_signer()).verifier
        assert Verifier.parse(key.vkey()) == key


def _log() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_signer())


def test_checkpoint_round_trip_and_cosignature_message() -> None:
    log, witness = _log(), Cosigner("witness.example/w1", generate_signer())
    cp = Checkpoint(ORIGIN, 20852163, hashlib.sha256(b"x").digest(), ("ext one",))
    note = cp.sign([log])
    cosig = witness.cosign(note.text, timestamp=1679315147)
    assert cosig.signature[:8] == (1679315147).to_bytes(8, "big")
    assert tlog.cosignature_message(note.text, 1679315147) == (
        f"cosignature/v1\ntime 1679315147\n{ORIGIN}\n20852163\n"
        f"{base64.b64encode(cp.root_hash).decode()}\next one\n").encode()
    cosigned = note.with_signatures([cosig])
    opened = open_checkpoint(bytes(cosigned), log.verifier, witnesses=[witness.verifier],
                             quorum=1, not_after=1679315147)
    assert opened.checkpoint == cp
    assert opened.cosignatures == {"witness.example/w1": 1679315147}


@settings(max_examples=60, deadline=None)
@given(origin=st.text(st.characters(min_codepoint=0x21, exclude_characters="\x7f"),
                      min_size=1, max_size=40),
       size=st.integers(0, 2**63 - 1), root=st.binary(min_size=32, max_size=32),
       extensions=st.lists(st.text(st.characters(min_codepoint=0x20, exclude_characters="\x7f"),
                                   min_size=1, max_size=20), max_size=3))
def test_checkpoint_text_round_trips(origin: str, size: int, root: bytes,
                                     extensions: list[str]) -> None:
    cp = Checkpoint(origin, size, root, tuple(extensions))
    assert Checkpoint.from_text(cp.text()) == cp


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=300).map(str.encode))
def test_note_parser_only_raises_tessera_errors(data: bytes) -> None:
    try:
        note = Note.parse(data)
    except TesseraError as exc:
        assert exc.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)
    else:
        assert Note.parse(bytes(note)) == note


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_witness_request_parser_only_raises_tessera_errors(data: bytes) -> None:
    try:
        AddCheckpoint.parse(data)
    except TesseraError as exc:
        assert exc.code in (ErrorCode.MALFORMED, ErrorCode.TOO_LARGE)


@settings(max_examples=100, deadline=None)
@given(old=st.integers(0, 2**63 - 1), proof=st.lists(st.binary(min_size=32, max_size=32),
                                                     max_size=63))
def test_witness_request_round_trips(old: int, proof: list[bytes]) -> None:
    note = Checkpoint(ORIGIN, 5, bytes(32)).sign([_log()])
    request = AddCheckpoint(old, tuple(proof), note)
    assert AddCheckpoint.parse(request.to_bytes()) == request


@settings(max_examples=200, deadline=None)
@given(level=st.none() | st.integers(0, 63), index=st.integers(0, 2**63 - 1),
       width=st.integers(1, 256))
def test_tile_paths_round_trip(level: int | None, index: int, width: int) -> None:
    ref = TileRef(level, index, width)
    assert TileRef.parse(ref.path) == ref


def test_tile_path_examples_and_non_canonical_spellings() -> None:
    assert TileRef(0, 1234067).path == "tile/0/x001/x234/067"  # tlog-tiles §Merkle Tree
    assert TileRef(None, 5, 3).path == "tile/entries/005.p/3"
    for bad in ("tile/0/x000/005", "tile/0/5", "tile/01/005", "tile/0/005.p/256",
                "tile/0/005.p/0", "tile/0/005.p/07", "tile/64/000", "tile/0/x005", "../x"):
        with pytest.raises(TesseraError) as exc:
            TileRef.parse(bad)
        assert _code(exc) is ErrorCode.NOT_FOUND


def test_tiles_for_size_matches_the_spec_example() -> None:
    # tlog-tiles §Partial Tiles: a tree of 70,000 leaves.
    refs = tiles_for = tlog.tiles_for_size(70000)
    assert sum(1 for r in refs if r.level == 0 and not r.partial) == 273
    assert [r for r in tiles_for if r.partial or r.level] == [
        TileRef(0, 273, 112), TileRef(1, 0), TileRef(1, 1, 17), TileRef(2, 0, 1)]
    assert tlog.tiles_for_size(256) == [TileRef(0, 0), TileRef(1, 0, 1)]


@pytest.mark.parametrize("size", [1, 2, 7, 255, 256, 257, 511, 513, 1000, 65536 + 3])
def test_tiles_rebuild_root_and_proofs(size: int) -> None:
    tree = merkle.MemoryTree()
    entries = [f"entry {i}".encode() for i in range(size)]
    for entry in entries:
        tree.append(entry)
    tiles = {ref: tlog.tile_hashes(tree, ref) for ref in tlog.tiles_for_size(size)}
    fetched: list[TileRef] = []

    def fetch(ref: TileRef) -> bytes:
        fetched.append(ref)
        return tiles[ref]

    source = TileHashSource(fetch, size)
    cp = Checkpoint(ORIGIN, size, tree.root_hash())
    source.verify(cp)
    assert len(set(fetched)) == len(fetched)  # each tile fetched once
    for index in {0, size // 2, size - 1}:
        assert merkle.inclusion_proof(source, index, size) == tree.inclusion_proof(index)
    assert merkle.consistency_proof(source, size // 3, size) == tree.consistency_proof(size // 3)
    bundles = {TileRef(None, r.index, r.width): tlog.encode_bundle(
        entries[r.start():r.start() + r.width]) for r in tiles if r.level == 0}
    last = (size - 1) // 256
    assert source.entries(last, bundles.__getitem__) == entries[last * 256:]


def test_forged_tile_or_bundle_is_caught() -> None:
    tree = merkle.MemoryTree()
    for i in range(300):
        tree.append(b"%d" % i)
    tiles = {ref: tlog.tile_hashes(tree, ref) for ref in tlog.tiles_for_size(300)}
    forged = dict(tiles)
    forged[TileRef(0, 1, 44)] = bytes(32) + tiles[TileRef(0, 1, 44)][32:]
    with pytest.raises(TesseraError) as exc:
        TileHashSource(forged.__getitem__, 300).verify(Checkpoint(ORIGIN, 300, tree.root_hash()))
    assert _code(exc) is ErrorCode.INVALID_SIGNATURE
    short = dict(tiles)
    short[TileRef(0, 0)] = tiles[TileRef(0, 0)][:-32]
    with pytest.raises(TesseraError) as exc:  # the root reads tile 1/0, a proof reads 0/0
        merkle.inclusion_proof(TileHashSource(short.__getitem__, 300), 3, 300)
    assert _code(exc) is ErrorCode.INVALID_SIGNATURE
    source = TileHashSource(tiles.__getitem__, 300)
    bad_bundle = tlog.encode_bundle([b"%d" % i for i in range(256, 299)] + [b"not 299"])
    with pytest.raises(TesseraError) as exc:
        source.entries(1, lambda ref: bad_bundle)
    assert _code(exc) is ErrorCode.INVALID_SIGNATURE


def test_bundle_decoding_is_strict() -> None:
    assert tlog.decode_bundle(tlog.encode_bundle([b"", b"ab"])) == [b"", b"ab"]
    for bad in (b"\x00", b"\x00\x05ab", tlog.encode_bundle([b"a"]) + b"\x00"):
        with pytest.raises(TesseraError):
            tlog.decode_bundle(bad)
    with pytest.raises(TesseraError):
        tlog.decode_bundle(tlog.encode_bundle([b"a"]), count=2)
    with pytest.raises(TesseraError) as exc:
        tlog.encode_bundle([b"x" * 70000])
    assert _code(exc) is ErrorCode.TOO_LARGE


# -- hostile notes -------------------------------------------------------------------------------


def _signed(text: str = "hello\n") -> tuple[NoteSigner, Note]:
    signer = _log()
    return signer, Note(text, (signer.sign(text),))


def test_oversized_notes_and_too_many_signatures_are_refused_before_verifying() -> None:
    signer, note = _signed()
    with pytest.raises(TesseraError) as exc:
        Note.parse("x" * tlog.MAX_NOTE_BYTES + "\n\n" + note.signatures[0].line())
    assert _code(exc) is ErrorCode.TOO_LARGE
    many = Note(note.text, tuple(NoteSignature(f"k{i}", b"abcd", b"s") for i in range(101)))
    with pytest.raises(TesseraError) as exc:
        Note.parse(bytes(many))
    assert _code(exc) is ErrorCode.TOO_LARGE
    # At least 16 signatures are accepted (signed-note §Format).
    sixteen = Note(note.text, (*(NoteSignature(f"k{i}", b"abcd", b"s") for i in range(15)),
                               note.signatures[0]))
    assert verify_note(Note.parse(bytes(sixteen)), [signer.verifier])


def test_duplicate_signature_by_a_trusted_key_is_refused() -> None:
    signer, note = _signed()
    doubled = Note(note.text, note.signatures * 2)
    with pytest.raises(TesseraError) as exc:
        verify_note(Note.parse(bytes(doubled)), [signer.verifier])
    assert _code(exc) is ErrorCode.INVALID_SIGNATURE
    # with_signatures never repeats a line.
    assert note.with_signatures(note.signatures).signatures == note.signatures


def test_unknown_keys_ignored_known_failure_rejects() -> None:
    signer, note = _signed()
    other = _log()  # same name, different key: another ID, so unknown
    foreign = other.sign(note.text)
    assert verify_note(Note(note.text, (foreign, *note.signatures)), [signer.verifier])
    # Same name and ID as the trusted key but a bad signature: the note is rejected.
    forged = NoteSignature(signer.name, signer.verifier.key_id, foreign.signature)
    with pytest.raises(TesseraError) as exc:
        verify_note(Note(note.text, (*note.signatures, forged)), [signer.verifier])
    assert _code(exc) is ErrorCode.INVALID_SIGNATURE
    with pytest.raises(TesseraError):
        verify_note(Note(note.text, (foreign,)), [signer.verifier])


@pytest.mark.parametrize("name", ["", "a b", "a+b", "a\u00a0b", "a\u2003b", "a\tb", "a\x7fb",
                                  "x" * 256])
def test_bad_key_names(name: str) -> None:
    with pytest.raises(TesseraError) as exc:
        tlog.check_key_name(name)
    assert _code(exc) is ErrorCode.MALFORMED
    signature = base64.b64encode(b"abcd" + bytes(64)).decode()
    with pytest.raises(TesseraError):
        Note.parse(f"hi\n\n\u2014 {name} {signature}\n")


def test_non_canonical_encodings_are_refused() -> None:
    _, note = _signed()
    line = note.signatures[0].line()
    blob = line.rsplit(" ", 1)[1].strip()
    raw = base64.b64decode(blob)
    # 68 bytes -> one padding character: the last data character has two unused
    # bits, which canonical base64 leaves zero; set one.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert blob.endswith("=") and not blob.endswith("==")
    stray = blob[:-2] + alphabet[alphabet.index(blob[-2]) + 1] + "="
    assert base64.b64decode(stray) == raw
    for bad in (line.replace(blob, blob.rstrip("=")), line.replace(blob, stray),
                line.replace(blob, blob[:10] + "\n" + blob[10:])):
        with pytest.raises(TesseraError):
            Note.parse(note.text + "\n" + bad)
    root = base64.b64encode(bytes(32)).decode()
    for text in (f"{ORIGIN}\n007\n{root}\n", f"{ORIGIN}\n+7\n{root}\n", f"{ORIGIN}\n7\n{root}",
                 f"{ORIGIN}\n7\n{root[:-1]}\n", f"{ORIGIN}\n7\n\n", f"\n7\n{root}\n",
                 f"{ORIGIN}\n7\n{root}\n\n", f"{ORIGIN}\n{2**63}\n{root}\n",
                 f"{ORIGIN}\n7\n{base64.b64encode(bytes(31)).decode()}\n"):
        with pytest.raises(TesseraError) as exc:
            Checkpoint.from_text(text)
        assert _code(exc) is ErrorCode.MALFORMED
    for body in (b"old 01\n\n", b"old -1\n\n", b"old 1 \n\n", b"old 1\nAAAA\n\n",
                 b"old 1\n" + b"".join(base64.b64encode(bytes(32)) + b"\n" for _ in range(64))
                 + b"\n"):
        with pytest.raises(TesseraError):
            AddCheckpoint.parse(body + bytes(note))


def test_control_characters_and_bad_utf8_are_refused() -> None:
    _, note = _signed()
    for data in (bytes(note).replace(b"hello", b"hel\rlo"), bytes(note).replace(b"hello", b"\xff"),
                 bytes(note).replace(b"hello", b"he\x00llo")):
        with pytest.raises(TesseraError) as exc:
            Note.parse(data)
        assert _code(exc) is ErrorCode.MALFORMED


def test_small_order_and_non_canonical_keys_are_refused() -> None:
    for y in (0, 1, 2**255 - 20, 2**255 - 19):
        blob = base64.b64encode(b"\x01" + y.to_bytes(32, "little")).decode()
        name = "example.com/bad"
        kid = tlog.key_id(name, 1, y.to_bytes(32, "little")).hex()
        with pytest.raises(TesseraError) as exc:
            Verifier.parse(f"{name}+{kid}+{blob}")
        assert _code(exc) is ErrorCode.MALFORMED


def test_vkey_mismatch_and_wrong_types() -> None:
    signer = _log()
    name, kid, blob = signer.vkey.split("+", 2)
    for bad in (f"{name}+{'0' * 8}+{blob}", f"{name}+{kid.upper()}+{blob}", f"{name}+{kid}",
                f"{name}+{kid}+{blob}+x", f"other.example+{kid}+{blob}"):
        with pytest.raises(TesseraError):
            Verifier.parse(bad)
    ecdsa = generate_signer("ES256")
    with pytest.raises(TesseraError) as exc:
        NoteSigner("example.com/p256", ecdsa)
    assert _code(exc) is ErrorCode.UNSUPPORTED_ALGORITHM


def test_open_checkpoint_checks_origin_quorum_and_future_cosignatures() -> None:
    log = _log()
    witnesses = [Cosigner(f"witness.example/w{i}", generate_signer()) for i in range(3)]
    note = Checkpoint(ORIGIN, 3, bytes(32)).sign([log])
    cosigned = note.with_signatures(w.cosign(note.text, timestamp=1000 + i)
                                    for i, w in enumerate(witnesses[:2]))
    keys = [w.verifier for w in witnesses]
    opened = open_checkpoint(cosigned, log.verifier, witnesses=keys, quorum=2)
    assert set(opened.cosignatures) == {"witness.example/w0", "witness.example/w1"}
    with pytest.raises(TesseraError) as exc:
        open_checkpoint(cosigned, log.verifier, witnesses=keys, quorum=3)
    assert _code(exc) is ErrorCode.INVALID_SIGNATURE
    with pytest.raises(TesseraError):
        open_checkpoint(cosigned, log.verifier, witnesses=keys, quorum=1, not_after=1000)
    with pytest.raises(TesseraError):  # the origin must be the log's
        open_checkpoint(cosigned, log.verifier, origin="other.example/log")
    # A cosignature is not a log signature, nor the other way round.
    impostor = Cosigner(ORIGIN, generate_signer())
    with pytest.raises(TesseraError):
        open_checkpoint(Note(note.text, (impostor.cosign(note.text, timestamp=1),)),
                        log.verifier)
    # A witness that signed a *different* checkpoint text does not count.
    other = Checkpoint(ORIGIN, 4, bytes(32)).sign([log])
    moved = Note(note.text, (*note.signatures,
                             NoteSignature(*_fields(witnesses[2].cosign(other.text, timestamp=5)))))
    with pytest.raises(TesseraError):
        open_checkpoint(moved, log.verifier, witnesses=keys, quorum=1)


def _fields(sig: NoteSignature) -> tuple[str, bytes, bytes]:
    return sig.name, sig.key_id, sig.signature


def test_cosigner_refuses_plain_signatures_and_bad_timestamps() -> None:
    witness = Cosigner("witness.example/w", generate_signer())
    with pytest.raises(TesseraError):
        witness.sign("x\n")
    with pytest.raises(TesseraError):
        witness.cosign("x\n", timestamp=2**63)
    with pytest.raises(TesseraError):
        witness.cosign("x\n", timestamp=-1)
