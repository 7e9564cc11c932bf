"""Merkle tree math of RFC 9162 (Certificate Transparency 2.0), §2.1.

The points ledger appends every entry as a leaf; members audit it with
inclusion proofs (my entry is in the tree the brand signed) and consistency
proofs (the tree I saw earlier is a prefix of the tree I see now, so no
history was rewritten).

* ``leaf_hash(d) = SHA-256(0x00 || d)`` and
  ``node_hash(l, r) = SHA-256(0x01 || l || r)`` (§2.1.1); the distinct
  prefixes stop a leaf from posing as an inner node (second preimage).
* The tree over ``n`` leaves splits at the largest power of two ``k < n``.
  Every range the algorithms visit therefore breaks into *complete*,
  aligned subtrees (size a power of two, start a multiple of that size),
  and a complete subtree never changes once all its leaves exist.

So the core is a set of pure functions over a :class:`HashSource` that can
answer two questions: the hash of leaf ``i`` and the hash of the complete
subtree ``[start, start + size)``. Storage keeps those hashes (for example a
table per level); :class:`MemoryTree` is the in-memory version, with O(log n)
appends and O(log n) hash look-ups per proof.

Error codes, chosen once for the whole module: a proof or root that does not
check out, for whatever reason (tampered, truncated, padded, wrong index or
size, impossible sizes), is ``invalid_signature``, since it is the
cryptographic evidence failing, like a bad signature; a value of the wrong
*type or shape* (not bytes, a hash that is not 32 bytes, a negative size) is
``malformed``; asking a tree for a proof it cannot produce (an index past its
size) is ``invalid_request``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol, runtime_checkable

from tessera.encoding import b64url_decode, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import sign_compact, verify_compact
from tessera.keys import SUPPORTED_ALGS, PublicKey
from tessera.typing import Signer

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "PROMISE_TYP",
    "STH_TYP",
    "CallbackSource",
    "HashSource",
    "InclusionPromise",
    "MemoryTree",
    "SignedTreeHead",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "root_hash",
    "subtree_hash",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() (§2.1.1)."""
STH_TYP: Final = "tessera-sth+jwt"
PROMISE_TYP: Final = "tessera-log-promise+jwt"
MAX_PROMISED_LEAVES: Final = 256
MAX_TREE_SIZE: Final = 2**63  # a 64-bit tree size, as in RFC 9162's TLS structures


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


@runtime_checkable
class HashSource(Protocol):
    """What the proof algorithms need from storage.

    ``get_subtree_hash(start, size)`` is only ever called for a complete
    subtree: ``size`` a power of two >= 2, ``start`` a multiple of ``size``,
    and ``start + size`` within the tree. Size-1 subtrees are leaves and go to
    ``get_leaf_hash``.
    """

    def get_leaf_hash(self, index: int) -> bytes: ...

    def get_subtree_hash(self, start: int, size: int) -> bytes: ...


@dataclass(frozen=True)
class CallbackSource:
    """A :class:`HashSource` made of two plain functions."""

    leaf: Callable[[int], bytes]
    subtree: Callable[[int, int], bytes]

    def get_leaf_hash(self, index: int) -> bytes:
        return self.leaf(index)

    def get_subtree_hash(self, start: int, size: int) -> bytes:
        return self.subtree(start, size)


def _split(n: int) -> int:
    """The largest power of two strictly smaller than ``n`` (n >= 2), §2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def _check_hash(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray) or len(value) != HASH_SIZE:
        raise TesseraError(ErrorCode.MALFORMED, f"{what} must be a {HASH_SIZE}-byte hash")
    return bytes(value)


def _check_size(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MAX_TREE_SIZE:
        raise TesseraError(ErrorCode.MALFORMED, f"{what} must be a non-negative integer")
    return value


def subtree_hash(source: HashSource, start: int, size: int) -> bytes:
    """MTH(D[start:start+size]) for a range the recursion of §2.1.1 produces.

    Decomposes the range into its complete subtrees (at most log2(size) + 1
    look-ups) and folds them right to left.
    """
    if size == 1:
        return source.get_leaf_hash(start)
    if size & (size - 1) == 0:
        return source.get_subtree_hash(start, size)
    k = _split(size)
    return node_hash(subtree_hash(source, start, k), subtree_hash(source, start + k, size - k))


def root_hash(source: HashSource, size: int) -> bytes:
    """The Merkle Tree Hash of the first ``size`` leaves (§2.1.1)."""
    _check_size(size, "tree size")
    return EMPTY_ROOT if size == 0 else subtree_hash(source, 0, size)


def inclusion_proof(source: HashSource, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) of §2.1.3.1, leaf-side hash first."""
    _check_size(index, "leaf index")
    _check_size(size, "tree size")
    if index >= size:
        raise TesseraError(ErrorCode.INVALID_REQUEST, f"leaf {index} is not in a tree of {size}")
    path: list[bytes] = []
    start, m, n = 0, index, size
    # The recursion appends on the way back up, so walk down collecting the
    # siblings and reverse at the end.
    while n > 1:
        k = _split(n)
        if m < k:
            path.append(subtree_hash(source, start + k, n - k))
            n = k
        else:
            path.append(subtree_hash(source, start, k))
            start, m, n = start + k, m - k, n - k
    path.reverse()
    return path


def consistency_proof(source: HashSource, size1: int, size2: int) -> list[bytes]:
    """PROOF(size1, D[0:size2]) of §2.1.4.1; empty when size1 is 0 or size2."""
    _check_size(size1, "first tree size")
    _check_size(size2, "second tree size")
    if size1 > size2:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "the first tree is larger than the second")
    if size1 in (0, size2):
        return []
    proof: list[bytes] = []
    start, m, n, complete = 0, size1, size2, True
    # SUBPROOF(m, D[start:start+n], complete), unrolled as in inclusion_proof.
    while m != n:
        k = _split(n)
        if m <= k:
            proof.append(subtree_hash(source, start + k, n - k))
            n = k
        else:
            proof.append(subtree_hash(source, start, k))
            start, m, n, complete = start + k, m - k, n - k, False
    if not complete:
        # SUBPROOF(m, D[m], false) = {MTH(D[m])}: the old tree is not a
        # subtree already known to the verifier, so it must be sent.
        proof.append(subtree_hash(source, start, n))
    proof.reverse()
    return proof


def _fail(detail: str) -> TesseraError:
    return TesseraError(ErrorCode.INVALID_SIGNATURE, detail)


def _check_proof(proof: Any) -> list[bytes]:
    if not isinstance(proof, Sequence) or isinstance(proof, str | bytes | bytearray):
        raise TesseraError(ErrorCode.MALFORMED, "a proof is a list of hashes")
    if len(proof) > 128:
        raise _fail("proof is longer than any tree of 2^63 leaves needs")
    return [_check_hash(p, "proof element") for p in proof]


def root_from_inclusion_proof(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes]
) -> bytes:
    """Recompute the root from a leaf hash and its path (§2.1.3.2 steps 1-4)."""
    r = _check_hash(leaf, "leaf hash")
    _check_size(index, "leaf index")
    _check_size(size, "tree size")
    path = _check_proof(proof)
    if index >= size:
        raise _fail(f"leaf {index} cannot be in a tree of {size}")
    fn, sn = index, size - 1
    for p in path:
        if sn == 0:
            raise _fail("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise _fail("inclusion proof is too short")
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Raise ``invalid_signature`` unless ``leaf`` is leaf ``index`` of the tree ``root``.

    ``leaf`` is the *leaf hash* (use :func:`leaf_hash` on the entry bytes).
    """
    expected = _check_hash(root, "root hash")
    if not hmac.compare_digest(root_from_inclusion_proof(leaf, index, size, proof), expected):
        raise _fail("inclusion proof does not lead to the root")


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> None:
    """Raise ``invalid_signature`` unless tree ``(size1, root1)`` is a prefix of ``(size2, root2)``.

    §2.1.4.2, plus the trivial cases it leaves out: equal sizes need equal
    roots and an empty proof; the empty tree (root SHA-256 of nothing) is a
    prefix of every tree, with an empty proof.
    """
    first, second = _check_hash(root1, "first root"), _check_hash(root2, "second root")
    _check_size(size1, "first tree size")
    _check_size(size2, "second tree size")
    path = _check_proof(proof)
    if size1 > size2:
        raise _fail("a log never shrinks: first tree is larger than the second")
    if size1 == size2:
        if path or not hmac.compare_digest(first, second):
            raise _fail("trees of the same size must have the same root and an empty proof")
        if size1 == 0 and first != EMPTY_ROOT:
            raise _fail("the empty tree has a fixed root")
        return
    if size1 == 0:
        if path or first != EMPTY_ROOT:
            raise _fail("the empty tree is consistent with an empty proof only")
        return
    # Step 1.
    if not path:
        raise _fail("consistency proof is empty")
    # Step 2: a power-of-two first tree is itself a node of the second one.
    if size1 & (size1 - 1) == 0:
        path = [first, *path]
    # Steps 3-4.
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Steps 5-6.
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise _fail("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise _fail("consistency proof is too short")
    if not hmac.compare_digest(fr, first) or not hmac.compare_digest(sr, second):
        raise _fail("consistency proof does not match the roots")


class MemoryTree:
    """An append-only tree that keeps every complete subtree hash.

    ``levels[h][j]`` is the hash of leaves ``[j * 2**h, (j + 1) * 2**h)``;
    appending a leaf adds at most one hash per level (O(log n)), and each
    proof reads O(log n) stored hashes, never rehashing leaves. Proofs for
    any earlier size stay available, since complete subtrees never change.
    Not thread-safe: serialise appends as the ledger already does.
    """

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, entry: bytes) -> int:
        """Add an entry (its leaf hash is computed here); return its index."""
        return self.append_leaf_hash(leaf_hash(entry))

    def append_leaf_hash(self, digest: bytes) -> int:
        digest = _check_hash(digest, "leaf hash")
        index = self.size
        self._levels[0].append(digest)
        level = 0
        while len(self._levels[level]) % 2 == 0:
            row = self._levels[level]
            if level + 1 == len(self._levels):
                self._levels.append([])
            self._levels[level + 1].append(node_hash(row[-2], row[-1]))
            level += 1
        return index

    def get_leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise TesseraError(ErrorCode.INVALID_REQUEST, f"no leaf {index}")
        return self._levels[0][index]

    def get_subtree_hash(self, start: int, size: int) -> bytes:
        height = size.bit_length() - 1
        if size < 1 or size != 1 << height or start % size or start < 0:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "not a complete, aligned subtree")
        if height >= len(self._levels) or start // size >= len(self._levels[height]):
            raise TesseraError(ErrorCode.INVALID_REQUEST, "subtree is not complete yet")
        return self._levels[height][start // size]

    def _size(self, size: int | None) -> int:
        if size is None:
            return self.size
        _check_size(size, "tree size")
        if size > self.size:
            raise TesseraError(ErrorCode.INVALID_REQUEST, f"the tree has only {self.size} leaves")
        return size

    def root_hash(self, size: int | None = None) -> bytes:
        return root_hash(self, self._size(size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(self, index, self._size(size))

    def consistency_proof(self, size1: int, size2: int | None = None) -> list[bytes]:
        return consistency_proof(self, size1, self._size(size2))


def _timestamp_ms(value: datetime) -> int:
    if value.tzinfo is None:
        raise TesseraError(ErrorCode.INVALID_REQUEST, "timestamp must be timezone-aware")
    return int(value.timestamp() * 1000)


@dataclass(frozen=True)
class SignedTreeHead:
    """A tree head signed by the log's key, as a compact JWS.

    ``signature`` holds the whole compact JWS (``typ`` ``tessera-sth+jwt``),
    which is what travels; the other fields are its verified payload.
    ``timestamp`` is milliseconds since the epoch, as in RFC 9162 §4.10.
    ``log_id`` names the log so that a head from one brand's log cannot be
    passed off as another's when both share a key.
    """

    tree_size: int
    root_hash: bytes
    timestamp: int
    signature: str
    log_id: str | None = None

    @classmethod
    def sign(
        cls,
        tree_size: int,
        root: bytes,
        signer: Signer,
        *,
        timestamp: datetime,
        log_id: str | None = None,
    ) -> SignedTreeHead:
        _check_size(tree_size, "tree size")
        root = _check_hash(root, "root hash")
        if tree_size == 0 and root != EMPTY_ROOT:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "the empty tree has a fixed root")
        ms = _timestamp_ms(timestamp)
        payload: dict[str, Any] = {
            "tree_size": tree_size, "root_hash": b64url_encode(root), "timestamp": ms,
        }
        if log_id is not None:
            payload["log_id"] = log_id
        token = sign_compact({"typ": STH_TYP}, payload, signer)
        return cls(tree_size, root, ms, token, log_id)

    @classmethod
    def verify(
        cls,
        token: str,
        key: PublicKey,
        *,
        log_id: str | None = None,
        allowed_algs: Collection[str] = SUPPORTED_ALGS,
    ) -> SignedTreeHead:
        """Check the signature and the payload; with ``log_id``, that it names this log."""
        claims = verify_compact(token, key, allowed_algs=allowed_algs, typ=STH_TYP).payload
        size, ts = claims.get("tree_size"), claims.get("timestamp")
        if not isinstance(size, int) or isinstance(size, bool):
            raise TesseraError(ErrorCode.MALFORMED, "tree head tree_size must be an integer")
        _check_size(size, "tree size")
        if not isinstance(ts, int) or isinstance(ts, bool) or ts < 0:
            raise TesseraError(ErrorCode.MALFORMED, "tree head timestamp must be an integer")
        raw_root = claims.get("root_hash")
        if not isinstance(raw_root, str):
            raise TesseraError(ErrorCode.MALFORMED, "tree head root_hash must be base64url")
        root = _check_hash(b64url_decode(raw_root), "root hash")
        if size == 0 and root != EMPTY_ROOT:
            raise TesseraError(ErrorCode.INVALID_SIGNATURE, "the empty tree has a fixed root")
        claimed_log = claims.get("log_id")
        if claimed_log is not None and not isinstance(claimed_log, str):
            raise TesseraError(ErrorCode.MALFORMED, "tree head log_id must be a string")
        if log_id is not None and claimed_log != log_id:
            raise TesseraError(ErrorCode.INVALID_SIGNATURE, "tree head is for another log")
        return cls(size, root, ts, token, claimed_log)

    def verify_inclusion(self, leaf: bytes, index: int, proof: Sequence[bytes]) -> None:
        """``leaf`` (a leaf hash) is entry ``index`` of the tree this head signs."""
        verify_inclusion(leaf, index, self.tree_size, proof, self.root_hash)

    def verify_consistency(self, newer: SignedTreeHead, proof: Sequence[bytes]) -> None:
        """This head's tree is a prefix of ``newer``'s: history was not rewritten."""
        if newer.log_id != self.log_id:
            raise TesseraError(ErrorCode.INVALID_SIGNATURE, "tree heads of different logs")
        verify_consistency(self.tree_size, newer.tree_size, proof, self.root_hash,
                           newer.root_hash)


_promise_headers: dict[tuple[str, str | None], str] = {}
_promise_fixed: dict[tuple[str, str | None, str, int], tuple[str, str, str]] = {}


def _promise_parts(alg: str, key_id: str | None, log_id: str, mmd_ms: int
                   ) -> tuple[str, str, str]:
    """A promise's encoded header with its dot, and its payload's JSON before and after
    the timestamp up to the leaf hashes: fixed for a key, a log and a delay."""
    key = (alg, key_id, log_id, mmd_ms)
    parts = _promise_fixed.get(key)
    if parts is None:
        parts = (_promise_header(alg, key_id) + ".",
                 f'{{"log_id":{json.dumps(log_id)},"timestamp":',
                 f',"mmd":{mmd_ms},"leaf_hashes":[')
        if len(_promise_fixed) >= 1000:
            _promise_fixed.clear()
        _promise_fixed[key] = parts
    return parts


def _promise_header(alg: str, key_id: str | None) -> str:
    """The encoded JWS header of a promise signed by a key (sign_compact's header)."""
    header = _promise_headers.get((alg, key_id))
    if header is None:
        fields = {"alg": alg, "typ": PROMISE_TYP} | ({"kid": key_id} if key_id else {})
        header = b64url_encode(json.dumps(fields, separators=(",", ":")).encode())
        if len(_promise_headers) >= 1000:
            _promise_headers.clear()
        _promise_headers[(alg, key_id)] = header
    return header


@dataclass(frozen=True)
class InclusionPromise:
    """The log's signed promise to include leaves within its maximum merge delay.

    The counterpart of a Certificate Transparency SCT (RFC 6962 §3.2, RFC 9162
    §4.8): handed out when a leaf is *accepted*, before it is in the tree,
    so the write that produced it need not wait for the tree. A compact JWS,
    ``typ`` ``tessera-log-promise+jwt``, payload ``{"log_id", "timestamp"
    (ms since the epoch), "mmd" (the maximum merge delay, ms), "leaf_hashes"
    (base64url RFC 9162 leaf hashes)}``. Any signed tree head of the log with
    a ``timestamp`` at or after ``timestamp + mmd`` must include every one of
    the leaves; a head that does not is the log breaking its word, which the
    holder of the promise can show to anyone (it is signed).
    """

    leaf_hashes: tuple[bytes, ...]
    timestamp: int
    mmd: int
    signature: str
    log_id: str

    @property
    def deadline(self) -> int:
        """The latest head timestamp (ms) by which every leaf must be in the tree."""
        return self.timestamp + self.mmd

    @classmethod
    def sign(cls, leaf_hashes: Sequence[bytes], signer: Signer, *, timestamp: datetime,
             mmd_ms: int, log_id: str) -> InclusionPromise:
        hashes = tuple(_check_hash(h, "leaf hash") for h in leaf_hashes)
        if not 0 < len(hashes) <= MAX_PROMISED_LEAVES:
            raise TesseraError(ErrorCode.INVALID_REQUEST,
                               f"a promise covers 1 to {MAX_PROMISED_LEAVES} leaves")
        if not 0 < mmd_ms <= 86_400_000:
            raise TesseraError(ErrorCode.INVALID_REQUEST, "mmd must be 1 ms to 1 day")
        ms = _timestamp_ms(timestamp)
        # Signed on every ledger write: the compact JWS is put together here, byte for
        # byte what sign_compact makes of {"typ": PROMISE_TYP} and the payload dict
        # (tests/tessera/test_merkle.py compares the two), with the header and the
        # payload's fixed parts made once per key, log and delay (_promise_parts).
        header, head, tail = _promise_parts(signer.alg, signer.key_id, log_id, mmd_ms)
        # base64url has no characters JSON escapes.
        listed = (f'"{b64url_encode(hashes[0])}"' if len(hashes) == 1 else
                  ",".join([f'"{b64url_encode(h)}"' for h in hashes]))
        signing_input = header + b64url_encode(f"{head}{ms}{tail}{listed}]}}".encode())
        token = f"{signing_input}.{b64url_encode(signer.sign(signing_input.encode('ascii')))}"
        return cls(hashes, ms, mmd_ms, token, log_id)

    @classmethod
    def verify(cls, token: str, key: PublicKey, *, log_id: str,
               allowed_algs: Collection[str] = SUPPORTED_ALGS) -> InclusionPromise:
        """Check the signature, the payload, and that the promise is this log's."""
        claims = verify_compact(token, key, allowed_algs=allowed_algs, typ=PROMISE_TYP).payload
        ts, mmd, raw = claims.get("timestamp"), claims.get("mmd"), claims.get("leaf_hashes")
        for value, what in ((ts, "timestamp"), (mmd, "mmd")):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise TesseraError(ErrorCode.MALFORMED, f"promise {what} must be an integer")
        assert isinstance(ts, int) and isinstance(mmd, int)
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_PROMISED_LEAVES \
                or not all(isinstance(h, str) for h in raw):
            raise TesseraError(ErrorCode.MALFORMED, "promise leaf_hashes must be a list of hashes")
        hashes = tuple(_check_hash(b64url_decode(h, max_len=64), "leaf hash") for h in raw)
        if claims.get("log_id") != log_id:
            raise TesseraError(ErrorCode.INVALID_SIGNATURE, "promise is for another log")
        return cls(hashes, ts, mmd, token, log_id)
