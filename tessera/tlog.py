"""C2SP transparency-log formats: signed notes, checkpoints, cosignatures, tiles.

What a brand's points log publishes so that anyone can audit it from a static
host, and what witnesses (the partner brands) sign to rule out split views:

* **signed-note** (c2sp.org/signed-note v1.0.0): a UTF-8 text, a blank line,
  then ``— <key name> base64(key ID || signature)`` lines. Ed25519 (type
  0x01) only, the type tlog-tiles requires of a log; verifier keys are
  ``<name>+<hex key ID>+base64(type || public key)``.
* **tlog-checkpoint** (c2sp.org/tlog-checkpoint v1.0.0): a note whose text is
  the origin line, the tree size and the base64 RFC 6962 root, then optional
  extension lines.
* **tlog-cosignature** (c2sp.org/tlog-cosignature, ``cosignature/v1``): a
  witness's note signature of type 0x04 over ``cosignature/v1\\ntime <t>\\n``
  and the checkpoint text; the signature carries the 8-byte timestamp.
* **tlog-witness** (c2sp.org/tlog-witness): the ``add-checkpoint`` request
  body (old size, consistency proof lines, blank line, checkpoint).
* **tlog-tiles** (c2sp.org/tlog-tiles): tile paths (``tile/<L>/<N>[.p/<W>]``,
  ``tile/entries/<N>[.p/<W>]``), hash tiles of height 8 built from any
  :class:`tessera.merkle.HashSource`, entry bundles (uint16 length-prefixed),
  and :class:`TileHashSource`, which turns fetched tiles back into a
  :class:`~tessera.merkle.HashSource` so a client computes roots and proofs
  from tiles with the same RFC 9162 code the log uses.

Every parser is strict: canonical base64 only, no leading zeros, sizes
bounded, no control characters, a note's signature count capped. Errors:
input that does not parse is ``malformed``; a note none of whose trusted
keys signed it, or whose trusted signature fails, is ``invalid_signature``;
tiles that do not hash to the checkpoint are ``invalid_signature`` (the
cryptographic evidence failing, as in :mod:`tessera.merkle`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from tessera import merkle
from tessera.errors import ErrorCode, TesseraError
from tessera.keys import PublicKey
from tessera.typing import Signer

__all__ = [
    "COSIGNATURE_V1",
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "SIG_COSIGNATURE_V1",
    "SIG_ED25519",
    "TILE_HEIGHT",
    "TILE_WIDTH",
    "AddCheckpoint",
    "Checkpoint",
    "Cosigner",
    "Note",
    "NoteSignature",
    "NoteSigner",
    "TileHashSource",
    "TileRef",
    "VerifiedCheckpoint",
    "Verifier",
    "b64_decode",
    "b64_encode",
    "check_key_name",
    "cosignature_message",
    "decode_bundle",
    "encode_bundle",
    "key_id",
    "open_checkpoint",
    "tile_hashes",
    "tiles_for_size",
    "verify_note",
]

SIG_ED25519: Final = 0x01
"""signed-note §Signature types: Ed25519 over the note text."""
SIG_COSIGNATURE_V1: Final = 0x04
"""signed-note §Signature types: timestamped Ed25519 checkpoint cosignature."""
COSIGNATURE_V1: Final = "cosignature/v1"
MAX_NOTE_BYTES: Final = 64 * 1024
"""A checkpoint with a hundred Ed25519 signature lines is ~12 KiB; anything
larger is refused before it is decoded (signed-note asks for a limit)."""
MAX_SIGNATURES: Final = 100
"""signed-note: verifiers SHOULD cap signatures and MUST accept at least 16."""
MAX_TIMESTAMP: Final = 2**63 - 1
MAX_PROOF_LINES: Final = 63
"""tlog-witness §add-checkpoint: a client MUST NOT send more than 63."""
TILE_HEIGHT: Final = 8
TILE_WIDTH: Final = 1 << TILE_HEIGHT
MAX_ENTRY_BYTES: Final = 0xFFFF
"""Entry bundles prefix each entry with a big-endian uint16 length."""
EM_DASH: Final = "\u2014"

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,18}")
_ED25519_P: Final = 2**255 - 19
# y-coordinates (sign bit cleared) of the eight small-order points of
# edwards25519 (libsodium's blocklist): under such a "public key" one forged
# signature verifies for every message, so no vkey may carry one.
_SMALL_ORDER_Y: Final = frozenset({
    0, 1, _ED25519_P - 1,
    2707385501144840649318225287225658788936804267575313519463743609750303402022,
    55188659117513257062467267217118295137698188065244968500265048394206261417927,
})


def _malformed(detail: str) -> TesseraError:
    return TesseraError(ErrorCode.MALFORMED, detail)


def _bad_signature(detail: str) -> TesseraError:
    return TesseraError(ErrorCode.INVALID_SIGNATURE, detail)


# -- encodings -------------------------------------------------------------------------------


def b64_encode(data: bytes) -> str:
    """Standard base64 with padding (RFC 4648 §4), as every C2SP text format uses."""
    return base64.b64encode(data).decode("ascii")


def b64_decode(text: str, *, what: str = "base64 value") -> bytes:
    """Strict RFC 4648 §4: padded, no whitespace, no stray bits (one encoding per value)."""
    if not text or len(text) % 4 or not text.isascii():
        raise _malformed(f"{what} is not canonical base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise _malformed(f"{what} is not canonical base64")
    return raw


def _decimal(text: str, what: str, *, limit: int = MAX_TIMESTAMP) -> int:
    """ASCII decimal with no leading zeros (tlog-checkpoint §Note text, tlog-witness)."""
    if not _DECIMAL.fullmatch(text) or int(text) > limit:
        raise _malformed(f"{what} is not a canonical decimal")
    return int(text)


def _is_space(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in ("Zs", "Zl", "Zp")


def check_key_name(name: str) -> str:
    """signed-note §Format: non-empty, no Unicode space, no ``+``, no control character."""
    if not isinstance(name, str) or not name:
        raise _malformed("a key name must be a non-empty string")
    if len(name.encode("utf-8")) > 255:
        raise _malformed("key name is longer than 255 bytes")
    if "+" in name or any(_is_space(ch) or ord(ch) < 0x20 or ch == "\x7f" for ch in name):
        raise _malformed("a key name has no spaces, '+' or control characters")
    return name


def _check_text(text: str) -> None:
    # signed-note §Format: valid UTF-8 (a str is), no ASCII control but newline.
    if any(ord(ch) < 0x20 and ch != "\n" for ch in text):
        raise _malformed("a note carries no control characters but newline")


def key_id(name: str, sig_type: int, public_key: bytes) -> bytes:
    """``SHA-256(key name || 0x0A || type || public key)[:4]`` (signed-note §Signatures)."""
    data = name.encode("utf-8") + b"\n" + bytes([sig_type]) + public_key
    return hashlib.sha256(data).digest()[:4]


def _ed25519(raw: bytes) -> PublicKey:
    if len(raw) != 32:
        raise _malformed("an Ed25519 key is 32 bytes")
    y = int.from_bytes(raw, "little") & ((1 << 255) - 1)
    if y >= _ED25519_P or y in _SMALL_ORDER_Y:
        raise _malformed("not a canonical Ed25519 key of large order")
    return PublicKey.from_raw("Ed25519", raw)


# -- signed notes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: the key name, the 4-byte key ID and the signature after it."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        return f"{EM_DASH} {self.name} {b64_encode(self.key_id + self.signature)}\n"


@dataclass(frozen=True)
class Note:
    """A parsed signed note; ``text`` includes its final newline (signed-note §Format)."""

    text: str
    signatures: tuple[NoteSignature, ...]

    @classmethod
    def parse(cls, data: bytes | str) -> Note:
        raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if len(raw) > MAX_NOTE_BYTES:
            raise TesseraError(ErrorCode.TOO_LARGE, f"a note is at most {MAX_NOTE_BYTES} bytes")
        try:
            message = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("a note is UTF-8") from None
        _check_text(message)
        # The text ends at the *last* blank line: the text itself may hold blank lines.
        cut = message.rfind("\n\n")
        if cut < 0 or not message.endswith("\n"):
            raise _malformed("a note is text, a blank line and signature lines")
        text, block = message[:cut + 1], message[cut + 2:]
        lines = block[:-1].split("\n")
        if len(lines) > MAX_SIGNATURES:
            raise TesseraError(ErrorCode.TOO_LARGE, f"more than {MAX_SIGNATURES} signatures")
        return cls(text, tuple(_parse_signature(line) for line in lines))

    def to_text(self) -> str:
        return self.text + "\n" + "".join(s.line() for s in self.signatures)

    def __bytes__(self) -> bytes:
        return self.to_text().encode("utf-8")

    def with_signatures(self, extra: Iterable[NoteSignature]) -> Note:
        """This note with more signature lines; a line already present is not repeated."""
        sigs = list(self.signatures)
        for sig in extra:
            if sig not in sigs:
                sigs.append(sig)
        if len(sigs) > MAX_SIGNATURES:
            raise TesseraError(ErrorCode.TOO_LARGE, f"more than {MAX_SIGNATURES} signatures")
        return Note(self.text, tuple(sigs))


def _parse_signature(line: str) -> NoteSignature:
    if not line.startswith(EM_DASH + " "):
        raise _malformed("a signature line starts with an em dash and a space")
    name, sep, blob = line[2:].partition(" ")
    if not sep:
        raise _malformed("a signature line is a key name and a signature")
    check_key_name(name)
    raw = b64_decode(blob, what="note signature")
    if len(raw) < 5:
        raise _malformed("a note signature is a key ID and at least one byte")
    return NoteSignature(name, raw[:4], raw[4:])


def parse_signature_lines(data: bytes | str) -> list[NoteSignature]:
    """Signature lines on their own, as a witness answers ``add-checkpoint``."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if len(text) > MAX_NOTE_BYTES:
        raise TesseraError(ErrorCode.TOO_LARGE, "too many signature lines")
    _check_text(text)
    if not text.endswith("\n"):
        raise _malformed("each signature line ends with a newline")
    lines = text[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise TesseraError(ErrorCode.TOO_LARGE, f"more than {MAX_SIGNATURES} signatures")
    return [_parse_signature(line) for line in lines]


@dataclass(frozen=True)
class Verifier:
    """A note verifier key (vkey): name, key ID, signature type and Ed25519 key.

    Type 0x01 verifies plain Ed25519 note signatures; type 0x04 verifies
    ``cosignature/v1`` (tlog-cosignature §Format) and yields its timestamp.
    """

    name: str
    key_id: bytes
    sig_type: int
    key: PublicKey = field(repr=False)

    @classmethod
    def for_key(cls, name: str, key: PublicKey, sig_type: int = SIG_ED25519) -> Verifier:
        if sig_type not in (SIG_ED25519, SIG_COSIGNATURE_V1):
            raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, f"note signature type {sig_type}")
        if key.alg != "EdDSA":
            raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM, "note keys are Ed25519")
        raw = key.raw()
        _ed25519(raw)
        return cls(check_key_name(name), key_id(name, sig_type, raw), sig_type, key)

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """``<name>+<hex key ID>+base64(type || key)`` (signed-note §Verifier keys)."""
        if not isinstance(vkey, str) or len(vkey) > 1024:
            raise _malformed("not a verifier key")
        parts = vkey.split("+", 2)  # the name and ID have no '+'; base64 may
        if len(parts) != 3:
            raise _malformed("a verifier key is name+keyid+key")
        name, hex_id, blob = parts
        check_key_name(name)
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
            raise _malformed("a verifier key's ID is 8 lowercase hex digits")
        raw = b64_decode(blob, what="verifier key")
        if len(raw) < 2:
            raise _malformed("a verifier key names a type and a key")
        if raw[0] not in (SIG_ED25519, SIG_COSIGNATURE_V1):
            raise TesseraError(ErrorCode.UNSUPPORTED_ALGORITHM,
                               f"note signature type 0x{raw[0]:02x}")
        verifier = cls(name, key_id(name, raw[0], raw[1:]), raw[0], _ed25519(raw[1:]))
        if verifier.key_id.hex() != hex_id:
            raise _malformed("a verifier key's ID does not match its name and key")
        return verifier

    def vkey(self) -> str:
        material = b64_encode(bytes([self.sig_type]) + self.key.raw())
        return f"{self.name}+{self.key_id.hex()}+{material}"

    def matches(self, sig: NoteSignature) -> bool:
        # signed-note §Signatures: name *and* ID identify a key; one alone is unknown.
        return sig.name == self.name and sig.key_id == self.key_id

    def verify(self, text: str, sig: NoteSignature) -> int | None:
        """Raise ``invalid_signature`` unless ``sig`` signs ``text``; a cosignature's time."""
        if not self.matches(sig):
            raise _bad_signature("signature is by another key")
        if self.sig_type == SIG_ED25519:
            if len(sig.signature) != 64:
                raise _bad_signature("an Ed25519 note signature is 64 bytes")
            self.key.verify(sig.signature, text.encode("utf-8"))
            return None
        if len(sig.signature) != 72:
            raise _bad_signature("a cosignature/v1 is a timestamp and 64 bytes")
        timestamp = int.from_bytes(sig.signature[:8], "big")
        if timestamp > MAX_TIMESTAMP:
            raise _bad_signature("cosignature timestamp exceeds 2^63 - 1")
        self.key.verify(sig.signature[8:], cosignature_message(text, timestamp))
        return timestamp


class NoteSigner:
    """An Ed25519 :class:`~tessera.typing.Signer` under a note key name (type 0x01)."""

    sig_type: int = SIG_ED25519

    def __init__(self, name: str, signer: Signer) -> None:
        self.verifier = Verifier.for_key(name, signer.public_key, self.sig_type)
        self.name = self.verifier.name
        self._signer = signer

    @property
    def vkey(self) -> str:
        return self.verifier.vkey()

    def sign(self, text: str) -> NoteSignature:
        _check_text(text)
        return NoteSignature(self.name, self.verifier.key_id,
                             self._signer.sign(text.encode("utf-8")))


class Cosigner(NoteSigner):
    """A witness key: ``cosignature/v1`` signatures (type 0x04) with a timestamp."""

    sig_type = SIG_COSIGNATURE_V1

    def cosign(self, text: str, *, timestamp: int) -> NoteSignature:
        message = cosignature_message(text, timestamp)
        return NoteSignature(self.name, self.verifier.key_id,
                             timestamp.to_bytes(8, "big") + self._signer.sign(message))

    def sign(self, text: str) -> NoteSignature:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "a cosigner signs with a timestamp: cosign")


def cosignature_message(text: str, timestamp: int) -> bytes:
    """tlog-cosignature §Ed25519 signed message: header, time line, checkpoint text."""
    if isinstance(timestamp, bool) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise _malformed("a cosignature timestamp is 0 to 2^63 - 1")
    return f"{COSIGNATURE_V1}\ntime {timestamp}\n{text}".encode()


def verify_note(note: Note, verifiers: Sequence[Verifier]) -> list[tuple[Verifier, int | None]]:
    """The trusted keys that signed ``note``, each with its cosignature time (or None).

    signed-note §Signatures: unknown keys are ignored; a known key's failing
    signature rejects the whole note (tlog-witness treats it as malformed);
    a known key signing twice is refused too (a duplicate cannot add weight
    to a quorum); no trusted signature at all rejects the note.
    """
    found: list[tuple[Verifier, int | None]] = []
    for sig in note.signatures:
        for verifier in verifiers:
            if verifier.matches(sig):
                if any(v.matches(sig) for v, _ in found):
                    raise _bad_signature(f"two signatures by {sig.name}")
                found.append((verifier, verifier.verify(note.text, sig)))
                break
    if not found:
        raise _bad_signature("no signature by a trusted key")
    return found


# -- checkpoints -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """tlog-checkpoint §Note text: origin, size, root hash, extension lines."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise _malformed("a checkpoint origin is one non-empty line")
        _check_text(self.origin)
        if isinstance(self.size, bool) or not 0 <= self.size < merkle.MAX_TREE_SIZE:
            raise _malformed("a tree size is 0 to 2^63 - 1")
        if len(self.root_hash) != merkle.HASH_SIZE:
            raise _malformed("a root hash is 32 bytes")
        for line in self.extensions:
            if not line or "\n" in line:
                raise _malformed("an extension line is one non-empty line")
            _check_text(line)

    def text(self) -> str:
        lines = [self.origin, str(self.size), b64_encode(self.root_hash), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def from_text(cls, text: str) -> Checkpoint:
        if not text.endswith("\n"):
            raise _malformed("checkpoint text ends with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise _malformed("a checkpoint has an origin, a size and a root hash")
        origin, size, root, *extensions = lines
        root_hash = b64_decode(root, what="checkpoint root hash")
        return cls(origin, _decimal(size, "tree size", limit=merkle.MAX_TREE_SIZE - 1),
                   root_hash, tuple(extensions))

    def sign(self, signers: Sequence[NoteSigner]) -> Note:
        if not signers:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "a checkpoint needs a signer")
        text = self.text()
        return Note(text, tuple(s.sign(text) for s in signers))


@dataclass(frozen=True)
class VerifiedCheckpoint:
    """A checkpoint whose log signature verified, and the witnesses that cosigned it."""

    checkpoint: Checkpoint
    note: Note
    cosignatures: Mapping[str, int]
    """Cosigner name -> cosignature timestamp (POSIX seconds)."""


def open_checkpoint(data: bytes | str | Note, log: Verifier | Sequence[Verifier], *,
                    origin: str | None = None, witnesses: Sequence[Verifier] = (),
                    quorum: int = 0, not_after: int | None = None) -> VerifiedCheckpoint:
    """Verify a checkpoint note: the log's signature, then ``quorum`` distinct witnesses.

    ``origin`` (default: the log key's name, which tlog-checkpoint says
    SHOULD match) must be the checkpoint's origin line. Cosignatures from
    ``witnesses`` count once per key; one dated after ``not_after`` (POSIX
    seconds, tlog-cosignature: verifiers MAY reject future timestamps) is
    refused. Fewer than ``quorum`` valid cosignatures is ``invalid_signature``.
    """
    note = data if isinstance(data, Note) else Note.parse(data)
    logs = [log] if isinstance(log, Verifier) else list(log)
    if any(v.sig_type != SIG_ED25519 for v in logs) or any(
            w.sig_type != SIG_COSIGNATURE_V1 for w in witnesses):
        raise TesseraError(ErrorCode.INVALID_REQUEST, "log keys are type 0x01, witnesses 0x04")
    checkpoint = Checkpoint.from_text(note.text)
    expected = origin if origin is not None else logs[0].name if logs else None
    if checkpoint.origin != expected:
        raise _bad_signature("checkpoint is for another log")
    verify_note(Note(note.text, tuple(s for s in note.signatures
                                      if any(v.matches(s) for v in logs))), logs)
    cosigned: dict[str, int] = {}
    if witnesses:
        mine = tuple(s for s in note.signatures if any(w.matches(s) for w in witnesses))
        if mine:
            for verifier, timestamp in verify_note(Note(note.text, mine), witnesses):
                assert timestamp is not None
                if not_after is not None and timestamp > not_after:
                    raise _bad_signature(f"cosignature by {verifier.name} is from the future")
                cosigned[verifier.name] = timestamp
    # Counted by name: two keys under one witness name are one witness.
    if len(cosigned) < quorum:
        raise _bad_signature(f"{len(cosigned)} witness cosignatures, {quorum} required")
    return VerifiedCheckpoint(checkpoint, note, cosigned)


# -- the witness protocol ----------------------------------------------------------------------


@dataclass(frozen=True)
class AddCheckpoint:
    """The body of a tlog-witness ``add-checkpoint`` request."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: Note

    def to_bytes(self) -> bytes:
        head = f"old {self.old_size}\n" + "".join(b64_encode(p) + "\n" for p in self.proof)
        return (head + "\n").encode() + bytes(self.checkpoint)

    @classmethod
    def parse(cls, body: bytes) -> AddCheckpoint:
        if len(body) > MAX_NOTE_BYTES + 64 * (MAX_PROOF_LINES + 2):
            raise TesseraError(ErrorCode.TOO_LARGE, "add-checkpoint body too large")
        head, sep, rest = body.partition(b"\n\n")
        if not sep:
            raise _malformed("add-checkpoint is a size line, proof lines, a blank line, a note")
        try:
            lines = head.decode("ascii").split("\n")
        except UnicodeDecodeError:
            raise _malformed("add-checkpoint head is ASCII") from None
        first = lines[0]
        if not first.startswith("old "):
            raise _malformed("add-checkpoint starts with 'old <size>'")
        old = _decimal(first[4:], "old size", limit=merkle.MAX_TREE_SIZE - 1)
        if len(lines) - 1 > MAX_PROOF_LINES:
            raise _malformed(f"more than {MAX_PROOF_LINES} consistency proof lines")
        proof = []
        for line in lines[1:]:
            digest = b64_decode(line, what="consistency proof line")
            if len(digest) != merkle.HASH_SIZE:
                raise _malformed("a consistency proof line is a 32-byte hash")
            proof.append(digest)
        return cls(old, tuple(proof), Note.parse(rest))


# -- tiles (c2sp.org/tlog-tiles) -----------------------------------------------------------------


@dataclass(frozen=True, order=True)
class TileRef:
    """A hash tile (``level`` 0-63) or, with ``level`` None, an entry bundle."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    def __post_init__(self) -> None:
        if self.level is not None and not 0 <= self.level <= 63:
            raise _malformed("a tile level is 0 to 63")
        if not 0 <= self.index < merkle.MAX_TREE_SIZE or not 1 <= self.width <= TILE_WIDTH:
            raise _malformed("a tile index is non-negative and its width 1 to 256")

    @property
    def partial(self) -> bool:
        return self.width < TILE_WIDTH

    @property
    def path(self) -> str:
        """``tile/<L>/<N>[.p/<W>]`` with N in 3-digit ``x``-prefixed elements (§Merkle Tree)."""
        digits = f"{self.index:03d}"
        groups: list[str] = []
        while len(digits) > 3:
            groups.insert(0, digits[-3:])
            digits = digits[:-3]
        groups.insert(0, digits.rjust(3, "0"))
        n = "/".join([*("x" + g for g in groups[:-1]), groups[-1]])
        level = "entries" if self.level is None else str(self.level)
        return f"tile/{level}/{n}" + (f".p/{self.width}" if self.partial else "")

    @classmethod
    def parse(cls, path: str) -> TileRef:
        """The tile a path names; only the one canonical spelling of each tile is accepted."""
        match = re.fullmatch(r"tile/(entries|0|[1-9][0-9]?)/((?:x[0-9]{3}/){0,6}[0-9]{3})"
                             r"(?:\.p/([1-9][0-9]{0,2}))?", path)
        if match is None:
            raise TesseraError(ErrorCode.NOT_FOUND, "not a tile path")
        level = None if match[1] == "entries" else int(match[1])
        index = int(match[2].replace("x", "").replace("/", ""))
        width = int(match[3]) if match[3] else TILE_WIDTH
        if (match[3] and width >= TILE_WIDTH) or (level is not None and level > 63):
            raise TesseraError(ErrorCode.NOT_FOUND, "not a tile path")
        ref = cls(level, index, width)
        if ref.path != path:  # a leading "x000/" element: not the canonical name
            raise TesseraError(ErrorCode.NOT_FOUND, "not a tile path")
        return ref

    def start(self) -> int:
        """Index of the first leaf this tile spans."""
        return self.index << (TILE_HEIGHT * ((self.level or 0) + 1))

    def exists_at(self, size: int) -> bool:
        """Whether a tree of ``size`` leaves has every hash of this tile (§Partial Tiles)."""
        level = self.level or 0
        return (self.index * TILE_WIDTH + self.width) << (TILE_HEIGHT * level) <= size


def tiles_for_size(size: int) -> list[TileRef]:
    """Every hash tile of a tree of ``size`` leaves, full tiles then the partial one per level."""
    refs: list[TileRef] = []
    level = 0
    while size >> (TILE_HEIGHT * level):
        width_total = size >> (TILE_HEIGHT * level)  # hashes at this level
        refs.extend(TileRef(level, n) for n in range(width_total // TILE_WIDTH))
        if width_total % TILE_WIDTH:
            refs.append(TileRef(level, width_total // TILE_WIDTH, width_total % TILE_WIDTH))
        level += 1
    return refs


def tile_hashes(source: merkle.HashSource, ref: TileRef) -> bytes:
    """The tile's bytes: ``MTH(D[(n*256+i)*256**l : (n*256+i+1)*256**l])`` for each i."""
    if ref.level is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "an entry bundle is not a hash tile")
    span = 1 << (TILE_HEIGHT * ref.level)
    first = ref.index * TILE_WIDTH
    if ref.level == 0:
        return b"".join(source.get_leaf_hash(first + i) for i in range(ref.width))
    return b"".join(source.get_subtree_hash((first + i) * span, span) for i in range(ref.width))


def encode_bundle(entries: Iterable[bytes]) -> bytes:
    """An entry bundle: big-endian uint16 length, then the entry, for each entry."""
    out = bytearray()
    for entry in entries:
        if len(entry) > MAX_ENTRY_BYTES:
            raise TesseraError(ErrorCode.TOO_LARGE, "a log entry is at most 65535 bytes")
        out += len(entry).to_bytes(2, "big") + entry
    return bytes(out)


def decode_bundle(data: bytes, *, count: int | None = None) -> list[bytes]:
    """The entries of a bundle; ``count`` (its tile's width) must match when given."""
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data) or len(entries) >= TILE_WIDTH:
            raise _malformed("entry bundle is truncated or over-long")
        length = int.from_bytes(data[at:at + 2], "big")
        if at + 2 + length > len(data):
            raise _malformed("entry bundle is truncated")
        entries.append(data[at + 2:at + 2 + length])
        at += 2 + length
    if count is not None and len(entries) != count:
        raise _malformed(f"entry bundle holds {len(entries)} entries, not {count}")
    return entries


class TileHashSource:
    """A :class:`tessera.merkle.HashSource` over the tiles of a tree of ``size`` leaves.

    ``fetch(ref)`` returns a tile's bytes (from a static host, a CDN, a
    directory). Each tile is fetched once, checked for its exact length, and
    every stored hash within it above the tile's base level is recomputed from
    the tile, so a forged tile shows up as a root that does not match the
    checkpoint: verify with :meth:`root_hash` against a verified checkpoint
    before trusting any proof computed from it.
    """

    def __init__(self, fetch: Callable[[TileRef], bytes], size: int) -> None:
        if isinstance(size, bool) or not 0 <= size < merkle.MAX_TREE_SIZE:
            raise _malformed("a tree size is 0 to 2^63 - 1")
        self.size = size
        self._fetch = fetch
        self._tiles: dict[tuple[int, int], list[bytes]] = {}

    def _tile(self, level: int, index: int) -> list[bytes]:
        key = (level, index)
        if key not in self._tiles:
            available = self.size >> (TILE_HEIGHT * level)
            width = min(TILE_WIDTH, available - index * TILE_WIDTH)
            if width <= 0:
                raise TesseraError(ErrorCode.INVALID_REQUEST, "tile beyond the tree")
            data = self._fetch(TileRef(level, index, width))
            if len(data) != width * merkle.HASH_SIZE:
                raise _bad_signature(f"tile {TileRef(level, index, width).path} has the "
                                     "wrong length")
            self._tiles[key] = [data[i:i + merkle.HASH_SIZE]
                                for i in range(0, len(data), merkle.HASH_SIZE)]
        return self._tiles[key]

    def _hash(self, height: int, node: int) -> bytes:
        """The hash of node ``node`` at ``height`` (a complete subtree of 2**height leaves)."""
        level, below = divmod(height, TILE_HEIGHT)
        first = node << below  # index of its first hash in the level's tiles
        tile = self._tile(level, first // TILE_WIDTH)
        offset = first % TILE_WIDTH
        hashes = tile[offset:offset + (1 << below)]
        if len(hashes) != 1 << below:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "subtree is not complete yet")
        while len(hashes) > 1:
            hashes = [merkle.node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
        return hashes[0]

    def get_leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise TesseraError(ErrorCode.INVALID_REQUEST, f"no leaf {index}")
        return self._hash(0, index)

    def get_subtree_hash(self, start: int, size: int) -> bytes:
        height = size.bit_length() - 1
        if size < 2 or size != 1 << height or start % size or start + size > self.size:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "not a complete, aligned subtree")
        return self._hash(height, start >> height)

    def root_hash(self) -> bytes:
        return merkle.root_hash(self, self.size)

    def verify(self, checkpoint: Checkpoint) -> None:
        """Raise ``invalid_signature`` unless these tiles hash to ``checkpoint``'s root."""
        if checkpoint.size != self.size:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "tiles of another tree size")
        if self.root_hash() != checkpoint.root_hash:
            raise _bad_signature("the tiles do not hash to the checkpoint's root")

    def entries(self, bundle_index: int, fetch: Callable[[TileRef], bytes]) -> list[bytes]:
        """An entry bundle, checked entry by entry against the level-0 tile."""
        tile = self._tile(0, bundle_index)
        ref = TileRef(None, bundle_index, len(tile))
        entries = decode_bundle(fetch(ref), count=len(tile))
        for i, entry in enumerate(entries):
            if merkle.leaf_hash(entry) != tile[i]:
                raise _bad_signature(f"entry {ref.start() + i} does not hash to its leaf")
        return entries
