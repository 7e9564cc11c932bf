"""RFC 9162 Merkle trees: published vectors, an independent reference, tampering."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tessera.encoding import b64url_decode, b64url_encode
from tessera.errors import ErrorCode, TesseraError
from tessera.jose import decode_unverified, sign_compact
from tessera.keys import generate_signer
from tessera.merkle import (
    EMPTY_ROOT,
    CallbackSource,
    InclusionPromise,
    MemoryTree,
    SignedTreeHead,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

h = bytes.fromhex

# Published test data of the RFC 6962 / RFC 9162 hashing, from the
# Certificate Transparency reference code, transparency-dev/merkle:
# testonly/constants.go (LeafInputs, NodeHashes, RootHashes) and
# proof/verify_test.go (inclusionProofs, consistencyProofs). The same values
# appear in google/certificate-transparency's merkle_tree_test.cc.
LEAVES = [h(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                         "606162636465666768696a6b6c6d6e6f")]
ROOTS = [EMPTY_ROOT] + [h(x) for x in (
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
)]
NODE_HASHES = [
    [h(x) for x in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    )],
    [h(x) for x in (
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    )],
    [h(x) for x in (
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    )],
    [h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")],
]
# (leaf index, tree size, path). verify_test.go numbers leaves from 1; these
# are 0-based.
INCLUSION = [
    (0, 1, []),
    (0, 8, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (5, 8, [h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 3, [h("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (1, 5, [h("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
]
CONSISTENCY = [
    (1, 1, []),
    (1, 8, [h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4")]),
    (6, 8, [h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
    (2, 5, [h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b")]),
    (6, 7, [h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            h("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7")]),
]
SOME_HASH = h("abacaba000000000000000000000000000000000000000000060061e00123456")


# --------------------------------------------------------------------------
# An independent reference: RFC 9162 §2.1 written as its recursive
# definitions, over the raw leaves, sharing nothing with tessera.merkle.


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < len(d):
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def _tree(leaves: list[bytes]) -> MemoryTree:
    tree = MemoryTree()
    for i, leaf in enumerate(leaves):
        assert tree.append(leaf) == i
    return tree


def _raises(code: ErrorCode, call: Callable[[], object]) -> None:
    with pytest.raises(TesseraError) as err:
        call()
    assert err.value.code is code, err.value


# --------------------------------------------------------------------------
# Published vectors.


def test_roots_and_node_hashes_of_the_standard_leaves() -> None:
    tree = _tree(LEAVES)
    assert [tree.root_hash(n) for n in range(9)] == ROOTS
    for level, hashes in enumerate(NODE_HASHES):
        for j, expected in enumerate(hashes):
            size = 1 << level
            got = tree.get_leaf_hash(j) if size == 1 else tree.get_subtree_hash(j * size, size)
            assert got == expected
    assert [ref_mth(LEAVES[:n]) for n in range(9)] == ROOTS


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_published_inclusion_proofs(index: int, size: int, proof: list[bytes]) -> None:
    tree = _tree(LEAVES)
    assert tree.inclusion_proof(index, size) == proof
    verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, ROOTS[size])
    for probe in _corrupt_inclusion(index, size, proof, ROOTS[size], leaf_hash(LEAVES[index])):
        with pytest.raises(TesseraError) as err:
            verify_inclusion(*probe)
        assert err.value.code in (ErrorCode.INVALID_SIGNATURE, ErrorCode.MALFORMED)


@pytest.mark.parametrize(("size1", "size2", "proof"), CONSISTENCY)
def test_published_consistency_proofs(size1: int, size2: int, proof: list[bytes]) -> None:
    tree = _tree(LEAVES)
    assert tree.consistency_proof(size1, size2) == proof
    verify_consistency(size1, size2, proof, ROOTS[size1], ROOTS[size2])
    if proof:
        for probe in _corrupt_consistency(size1, size2, ROOTS[size1], ROOTS[size2], proof):
            with pytest.raises(TesseraError) as err:
                verify_consistency(*probe)
            assert err.value.code in (ErrorCode.INVALID_SIGNATURE, ErrorCode.MALFORMED)


# The probes of transparency-dev/merkle proof/verify_test.go
# (corruptInclusionProof / corruptConsistencyProof), in Python.


def _corrupt_inclusion(
    index: int, size: int, proof: list[bytes], root: bytes, leaf: bytes
) -> list[tuple[Any, ...]]:
    probes: list[tuple[Any, ...]] = [
        (leaf, index - 1, size, proof, root),
        (leaf, index + 1, size, proof, root),
        (leaf, index ^ 2, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (leaf, index, size // 2, proof, root),
        (leaf_hash(b"WrongLeaf"), index, size, proof, root),
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf, index, size, proof, SOME_HASH),
        (leaf, index, size, [*proof, b""], root),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [b"", *proof], root),
        (leaf, index, size, [root, *proof], root),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 8]) + flipped[i][1:]
        probes.append((leaf, index, size, flipped, root))
    if proof:
        probes.append((leaf, index, size, proof[:-1], root))
    if len(proof) > 1:
        probes.append((leaf, index, size, [proof[0], SOME_HASH, *proof[1:]], root))
    # Swapping two neighbours breaks the left/right order.
    if len(proof) > 1 and proof[0] != proof[1]:
        probes.append((leaf, index, size, [proof[1], proof[0], *proof[2:]], root))
    return [p for p in probes if p[1] >= 0]


def _corrupt_consistency(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> list[tuple[Any, ...]]:
    probes: list[tuple[Any, ...]] = [
        (size1 - 1, size2, proof, root1, root2),
        (size1 + 1, size2, proof, root1, root2),
        (size1 ^ 2, size2, proof, root1, root2),
        (size1, size2 * 2, proof, root1, root2),
        (size1, size2 // 2, proof, root1, root2),
        (size1, size2, proof, leaf_hash(b"WrongRoot"), root2),
        (size1, size2, proof, root1, leaf_hash(b"WrongRoot")),
        (size1, size2, proof, root2, root1),
        (size1, size2, [], root1, root2),
        (size1, size2, [*proof, b""], root1, root2),
        (size1, size2, [*proof, root1], root1, root2),
        (size1, size2, [*proof, root2], root1, root2),
        (size1, size2, [b"", *proof], root1, root2),
        (size1, size2, [root1, *proof], root1, root2),
        (size1, size2, [root2, *proof], root1, root2),
        (size1, size2, [proof[0], *proof], root1, root2),
        (size1, size2, proof[:-1], root1, root2),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        probes.append((size1, size2, flipped, root1, root2))
    return probes


# --------------------------------------------------------------------------
# Every size and pair, against the reference.


def test_every_inclusion_proof_up_to_40_leaves() -> None:
    leaves = [f"entry-{i}".encode() for i in range(40)]
    tree = _tree(leaves)
    for n in range(1, 41):
        root = tree.root_hash(n)
        assert root == ref_mth(leaves[:n])
        for m in range(n):
            proof = tree.inclusion_proof(m, n)
            assert proof == ref_path(m, leaves[:n])
            verify_inclusion(leaf_hash(leaves[m]), m, n, proof, root)
            for probe in _corrupt_inclusion(m, n, proof, root, leaf_hash(leaves[m])):
                with pytest.raises(TesseraError):
                    verify_inclusion(*probe)


def test_consistency_between_every_pair_up_to_40() -> None:
    leaves = [f"entry-{i}".encode() for i in range(40)]
    tree = _tree(leaves)
    roots = [tree.root_hash(n) for n in range(41)]
    for n in range(41):
        for m in range(n + 1):
            proof = tree.consistency_proof(m, n)
            expected = [] if m in (0, n) else ref_subproof(m, leaves[:n], True)
            assert proof == expected, (m, n)
            verify_consistency(m, n, proof, roots[m], roots[n])
            # A different history of the same length is refused.
            if 0 < m < n:
                forked = list(leaves[:n])
                forked[m - 1] = b"rewritten"
                with pytest.raises(TesseraError) as err:
                    verify_consistency(m, n, proof, roots[m], ref_mth(forked))
                assert err.value.code is ErrorCode.INVALID_SIGNATURE
                for probe in _corrupt_consistency(m, n, roots[m], roots[n], proof):
                    with pytest.raises(TesseraError) as err:
                        verify_consistency(*probe)
                    assert err.value.code in (ErrorCode.INVALID_SIGNATURE, ErrorCode.MALFORMED)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=12), max_size=70), st.data())
def test_hypothesis_trees_match_the_reference(leaves: list[bytes], data: st.DataObject) -> None:
    tree = _tree(leaves)
    n = len(leaves)
    assert tree.root_hash() == ref_mth(leaves)
    if n:
        m = data.draw(st.integers(0, n - 1))
        assert tree.inclusion_proof(m) == ref_path(m, leaves)
        verify_inclusion(leaf_hash(leaves[m]), m, n, tree.inclusion_proof(m), tree.root_hash())
        size1 = data.draw(st.integers(0, n))
        proof = tree.consistency_proof(size1)
        assert proof == ([] if size1 in (0, n) else ref_subproof(size1, leaves, True))
        verify_consistency(size1, n, proof, ref_mth(leaves[:size1]), ref_mth(leaves))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.data())
def test_hypothesis_tampered_proofs_refused(n: int, data: st.DataObject) -> None:
    leaves = [i.to_bytes(4, "big") for i in range(n)]
    tree = _tree(leaves)
    m = data.draw(st.integers(0, n - 1))
    proof = tree.inclusion_proof(m)
    root = tree.root_hash()
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, 255))
        tampered = list(proof)
        tampered[i] = bytes(
            b ^ (1 << (bit % 8)) if j == bit // 8 else b for j, b in enumerate(proof[i])
        )
        _raises(ErrorCode.INVALID_SIGNATURE,
                lambda: verify_inclusion(leaf_hash(leaves[m]), m, n, tampered, root))
    other = data.draw(st.integers(0, n - 1))
    if other != m:
        _raises(ErrorCode.INVALID_SIGNATURE,
                lambda: verify_inclusion(leaf_hash(leaves[other]), m, n, proof, root))


def test_edge_cases() -> None:
    one = leaf_hash(b"data")
    verify_inclusion(one, 0, 1, [], one)
    assert root_from_inclusion_proof(one, 0, 1, []) == one
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: verify_inclusion(one, 0, 0, [], EMPTY_ROOT))
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: verify_inclusion(one, 1, 1, [], one))
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: verify_inclusion(one, 0, 1, [], SOME_HASH))
    _raises(ErrorCode.MALFORMED, lambda: verify_inclusion(b"", 0, 1, [], one))
    _raises(ErrorCode.MALFORMED, lambda: verify_inclusion(one, 0, 1, [], b""))
    _raises(ErrorCode.MALFORMED, lambda: verify_inclusion(one, -1, 1, [], one))
    _raises(ErrorCode.MALFORMED, lambda: verify_inclusion(one, True, 2, [one], one))  # type: ignore[arg-type]
    _raises(ErrorCode.MALFORMED, lambda: verify_inclusion(one, 0, 2, one, one))  # type: ignore[arg-type]
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: verify_inclusion(one, 0, 2, [one] * 200, one))
    # Consistency: trivial cases (transparency-dev TestVerifyConsistency).
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    verify_consistency(0, 5, [], EMPTY_ROOT, ROOTS[5])
    verify_consistency(3, 3, [], ROOTS[3], ROOTS[3])
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: verify_consistency(3, 3, [], ROOTS[3], ROOTS[4]))
    _raises(ErrorCode.INVALID_SIGNATURE,
            lambda: verify_consistency(3, 3, [EMPTY_ROOT], ROOTS[3], ROOTS[3]))
    _raises(ErrorCode.INVALID_SIGNATURE,
            lambda: verify_consistency(0, 1, [EMPTY_ROOT], EMPTY_ROOT, ROOTS[1]))
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: verify_consistency(0, 1, [], SOME_HASH, ROOTS[1]))
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: verify_consistency(2, 1, [], ROOTS[2], ROOTS[1]))
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: verify_consistency(1, 2, [], ROOTS[1], ROOTS[2]))


def test_proof_requests_outside_the_tree() -> None:
    tree = _tree(LEAVES)
    _raises(ErrorCode.INVALID_REQUEST, lambda: tree.inclusion_proof(8))
    _raises(ErrorCode.INVALID_REQUEST, lambda: tree.inclusion_proof(0, 9))
    _raises(ErrorCode.INVALID_REQUEST, lambda: tree.consistency_proof(5, 4))
    _raises(ErrorCode.INVALID_REQUEST, lambda: tree.root_hash(9))
    _raises(ErrorCode.INVALID_REQUEST, lambda: tree.get_subtree_hash(2, 4))  # unaligned
    _raises(ErrorCode.INVALID_REQUEST, lambda: tree.get_subtree_hash(0, 3))  # not 2^k
    _raises(ErrorCode.INVALID_REQUEST, lambda: _tree(LEAVES[:7]).get_subtree_hash(4, 4))
    _raises(ErrorCode.MALFORMED, lambda: tree.append_leaf_hash(b"short"))


# --------------------------------------------------------------------------
# The storage interface: complete subtrees only, O(log n) look-ups.


def test_pure_core_over_callbacks_asks_only_for_complete_subtrees() -> None:
    leaves = [f"e{i}".encode() for i in range(1000)]
    tree = _tree(leaves)
    calls: list[tuple[int, int]] = []

    def subtree(start: int, size: int) -> bytes:
        assert size >= 2 and size & (size - 1) == 0 and start % size == 0
        calls.append((start, size))
        return tree.get_subtree_hash(start, size)

    def leaf(index: int) -> bytes:
        calls.append((index, 1))
        return tree.get_leaf_hash(index)

    source = CallbackSource(leaf, subtree)
    for n in (1, 2, 3, 100, 513, 999, 1000):
        calls.clear()
        assert root_hash(source, n) == ref_mth(leaves[:n])
        assert len(calls) <= n.bit_length()
        for m in (0, n // 3, n - 1):
            calls.clear()
            assert inclusion_proof(source, m, n) == ref_path(m, leaves[:n])
            # Each proof element is O(log n) complete subtrees; total O(log^2 n)
            # in the worst case, far below n.
            assert len(calls) <= n.bit_length() ** 2
        calls.clear()
        assert consistency_proof(source, n // 2, n) == (
            [] if n // 2 in (0, n) else ref_subproof(n // 2, leaves[:n], True)
        )
        assert len(calls) <= n.bit_length() ** 2 + 1


def test_memory_tree_appends_store_one_hash_per_complete_subtree() -> None:
    tree = MemoryTree()
    for n in range(1, 1025):
        tree.append(n.to_bytes(2, "big"))
        stored = sum(len(level) for level in tree._levels)
        # Leaves plus one node per completed pair: 2n - popcount(n).
        assert stored == 2 * n - bin(n).count("1")


def test_proofs_for_old_sizes_stay_valid_as_the_tree_grows() -> None:
    tree = MemoryTree()
    heads = []
    for i in range(70):
        tree.append(f"ledger entry {i}".encode())
        heads.append((tree.size, tree.root_hash()))
    for size, root in heads:
        assert tree.root_hash(size) == root
        verify_consistency(size, tree.size, tree.consistency_proof(size), root, tree.root_hash())
        verify_inclusion(leaf_hash(b"ledger entry 0"), 0, size, tree.inclusion_proof(0, size),
                         root)


# --------------------------------------------------------------------------
# Signed tree heads.

TS = datetime(2026, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_signed_tree_head_round_trip(alg: str) -> None:
    signer = generate_signer(alg, key_id="did:web:brand.example#log")
    tree = _tree(LEAVES)
    sth = SignedTreeHead.sign(8, tree.root_hash(), signer, timestamp=TS, log_id="points/acme")
    jws = decode_unverified(sth.signature)
    assert jws.header["typ"] == "tessera-sth+jwt"
    assert jws.payload == {
        "tree_size": 8, "root_hash": b64url_encode(ROOTS[8]), "timestamp": 1777636800123,
        "log_id": "points/acme",
    }
    got = SignedTreeHead.verify(sth.signature, signer.public_key, log_id="points/acme")
    assert got == sth
    got.verify_inclusion(leaf_hash(LEAVES[5]), 5, tree.inclusion_proof(5))
    old = SignedTreeHead.sign(6, tree.root_hash(6), signer, timestamp=TS, log_id="points/acme")
    old.verify_consistency(got, tree.consistency_proof(6, 8))
    _raises(ErrorCode.INVALID_SIGNATURE,
            lambda: old.verify_consistency(got, tree.consistency_proof(5, 8)))
    _raises(ErrorCode.INVALID_SIGNATURE,
            lambda: got.verify_inclusion(leaf_hash(LEAVES[4]), 5, tree.inclusion_proof(5)))


def test_signed_tree_head_refusals() -> None:
    signer = generate_signer("EdDSA")
    sth = SignedTreeHead.sign(8, ROOTS[8], signer, timestamp=TS, log_id="log-a")
    _raises(ErrorCode.INVALID_SIGNATURE,
            lambda: SignedTreeHead.verify(sth.signature, generate_signer("EdDSA").public_key))
    _raises(ErrorCode.INVALID_SIGNATURE,
            lambda: SignedTreeHead.verify(sth.signature, signer.public_key, log_id="log-b"))
    head, _, sig = sth.signature.split(".")
    claims = decode_unverified(sth.signature).payload
    forged = b64url_encode(
        json.dumps({**claims, "tree_size": 9}, separators=(",", ":")).encode()
    )
    _raises(ErrorCode.INVALID_SIGNATURE,
            lambda: SignedTreeHead.verify(f"{head}.{forged}.{sig}", signer.public_key))
    bad_payloads: list[tuple[dict[str, Any], ErrorCode]] = [
        ({"tree_size": "8", "root_hash": b64url_encode(ROOTS[8]), "timestamp": 1},
         ErrorCode.MALFORMED),
        ({"tree_size": -1, "root_hash": b64url_encode(ROOTS[8]), "timestamp": 1},
         ErrorCode.MALFORMED),
        ({"tree_size": 8, "root_hash": b64url_encode(ROOTS[8][:16]), "timestamp": 1},
         ErrorCode.MALFORMED),
        ({"tree_size": 8, "root_hash": ROOTS[8].hex(), "timestamp": 1}, ErrorCode.MALFORMED),
        ({"tree_size": 8, "root_hash": b64url_encode(ROOTS[8]), "timestamp": "now"},
         ErrorCode.MALFORMED),
        ({"tree_size": 8, "root_hash": b64url_encode(ROOTS[8]), "timestamp": 1, "log_id": 3},
         ErrorCode.MALFORMED),
        ({"tree_size": 0, "root_hash": b64url_encode(ROOTS[8]), "timestamp": 1},
         ErrorCode.INVALID_SIGNATURE),
    ]
    for payload_dict, code in bad_payloads:
        token = sign_compact({"typ": "tessera-sth+jwt"}, payload_dict, signer)
        _raises(code, lambda token=token: SignedTreeHead.verify(token, signer.public_key))
    wrong_typ = sign_compact(
        {"typ": "statuslist+jwt"},
        {"tree_size": 8, "root_hash": b64url_encode(ROOTS[8]), "timestamp": 1}, signer,
    )
    _raises(ErrorCode.MALFORMED, lambda: SignedTreeHead.verify(wrong_typ, signer.public_key))
    other_log = SignedTreeHead.sign(8, ROOTS[8], signer, timestamp=TS, log_id="log-b")
    older = SignedTreeHead.sign(6, ROOTS[6], signer, timestamp=TS, log_id="log-a")
    _raises(ErrorCode.INVALID_SIGNATURE,
            lambda: older.verify_consistency(other_log, CONSISTENCY[2][2]))
    _raises(ErrorCode.INVALID_REQUEST,
            lambda: SignedTreeHead.sign(0, ROOTS[8], signer, timestamp=TS))
    _raises(ErrorCode.INVALID_REQUEST,
            lambda: SignedTreeHead.sign(1, ROOTS[1], signer, timestamp=datetime(2026, 1, 1)))
    assert b64url_decode(claims["root_hash"]) == ROOTS[8]


# --------------------------------------------------------------------------
# Inclusion promises (SCT-like).


def test_inclusion_promise_round_trip() -> None:
    signer = generate_signer("EdDSA", key_id="did:web:brand.example#key-1")
    hashes = [leaf_hash(LEAVES[1]), leaf_hash(LEAVES[2])]
    promise = InclusionPromise.sign(hashes, signer, timestamp=TS, mmd_ms=1000,
                                    log_id="did:web:brand.example")
    jws = decode_unverified(promise.signature)
    assert jws.header["typ"] == "tessera-log-promise+jwt"
    assert jws.payload == {"log_id": "did:web:brand.example", "timestamp": 1777636800123,
                           "mmd": 1000, "leaf_hashes": [b64url_encode(h) for h in hashes]}
    got = InclusionPromise.verify(promise.signature, signer.public_key,
                                  log_id="did:web:brand.example")
    assert got == promise and got.deadline == 1777636801123
    # A head signed past the deadline must hold the leaves: here it does.
    tree = _tree(LEAVES)
    head = SignedTreeHead.sign(8, tree.root_hash(), signer,
                               timestamp=datetime.fromtimestamp(got.deadline / 1000, UTC),
                               log_id="did:web:brand.example")
    assert head.timestamp >= got.deadline
    head.verify_inclusion(got.leaf_hashes[1], 2, tree.inclusion_proof(2))


@pytest.mark.parametrize("key_id", [None, "did:web:brand.example#key-1"])
@pytest.mark.parametrize("log_id", ["did:web:brand.example", 'did:web:br\u00e4nd"\\.example'])
def test_inclusion_promise_is_the_compact_jws_sign_compact_makes(key_id: str | None,
                                                                  log_id: str) -> None:
    # InclusionPromise.sign assembles the JWS itself (it runs on every ledger write);
    # Ed25519 is deterministic, so the token must be sign_compact's to the byte.
    signer = generate_signer("EdDSA", key_id=key_id)
    hashes = [leaf_hash(LEAVES[i]) for i in range(1, 4)]
    for count in (1, 3):
        promise = InclusionPromise.sign(hashes[:count], signer, timestamp=TS, mmd_ms=1000,
                                        log_id=log_id)
        assert promise.signature == sign_compact({"typ": "tessera-log-promise+jwt"}, {
            "log_id": log_id, "timestamp": 1777636800123, "mmd": 1000,
            "leaf_hashes": [b64url_encode(h) for h in hashes[:count]]}, signer)
        assert InclusionPromise.verify(promise.signature, signer.public_key,
                                       log_id=log_id) == promise


def test_inclusion_promise_refusals() -> None:
    signer = generate_signer("ES256")
    one = [leaf_hash(b"x")]
    promise = InclusionPromise.sign(one, signer, timestamp=TS, mmd_ms=1000, log_id="log-a")
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: InclusionPromise.verify(
        promise.signature, generate_signer("ES256").public_key, log_id="log-a"))
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: InclusionPromise.verify(
        promise.signature, signer.public_key, log_id="log-b"))
    head, _, sig = promise.signature.split(".")
    claims = decode_unverified(promise.signature).payload
    forged = b64url_encode(json.dumps({**claims, "mmd": 86_400_000},
                                      separators=(",", ":")).encode())
    _raises(ErrorCode.INVALID_SIGNATURE, lambda: InclusionPromise.verify(
        f"{head}.{forged}.{sig}", signer.public_key, log_id="log-a"))
    good = {"log_id": "log-a", "timestamp": 1, "mmd": 1000,
            "leaf_hashes": [b64url_encode(one[0])]}
    for change in ({"timestamp": "1"}, {"timestamp": True}, {"mmd": -1}, {"leaf_hashes": []},
                   {"leaf_hashes": "abc"}, {"leaf_hashes": [b64url_encode(b"short")]},
                   {"leaf_hashes": [one[0].hex()]}, {"leaf_hashes": [1]},
                   {"leaf_hashes": [b64url_encode(one[0])] * 257}):
        token = sign_compact({"typ": "tessera-log-promise+jwt"}, {**good, **change}, signer)
        _raises(ErrorCode.MALFORMED, lambda token=token: InclusionPromise.verify(
            token, signer.public_key, log_id="log-a"))
    sth_typed = sign_compact({"typ": "tessera-sth+jwt"}, good, signer)
    _raises(ErrorCode.MALFORMED, lambda: InclusionPromise.verify(
        sth_typed, signer.public_key, log_id="log-a"))
    for bad in (lambda: InclusionPromise.sign([], signer, timestamp=TS, mmd_ms=1000,
                                              log_id="l"),
                lambda: InclusionPromise.sign(one, signer, timestamp=TS, mmd_ms=0, log_id="l"),
                lambda: InclusionPromise.sign(one, signer, timestamp=datetime(2026, 1, 1),
                                              mmd_ms=1000, log_id="l")):
        _raises(ErrorCode.INVALID_REQUEST, bad)
    _raises(ErrorCode.MALFORMED, lambda: InclusionPromise.sign(
        [b"short"], signer, timestamp=TS, mmd_ms=1000, log_id="l"))


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.sampled_from(["log_id", "timestamp", "mmd", "leaf_hashes", "x"]),
                       st.none() | st.booleans() | st.integers() | st.text(max_size=50)
                       | st.lists(st.text(max_size=50), max_size=3)))
def test_inclusion_promise_parser_never_crashes(payload: dict[str, Any]) -> None:
    signer = generate_signer("EdDSA")
    token = sign_compact({"typ": "tessera-log-promise+jwt"}, payload, signer)
    try:
        InclusionPromise.verify(token, signer.public_key, log_id="log-a")
    except TesseraError as exc:
        assert exc.code in (ErrorCode.MALFORMED, ErrorCode.INVALID_SIGNATURE)


def test_node_hash_domain_separation() -> None:
    # A two-leaf node is not the leaf hash of its children's concatenation.
    a, b = leaf_hash(b"a"), leaf_hash(b"b")
    assert node_hash(a, b) != leaf_hash(a + b)
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
