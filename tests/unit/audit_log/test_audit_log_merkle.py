"""RFC 9162 Merkle tree: published vectors, an independent naive implementation, and attacks."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.audit_log.merkle import (
    EMPTY_ROOT,
    CompactTree,
    NodeKey,
    ProofError,
    consistency_ranges,
    fold,
    frontier,
    inclusion_ranges,
    leaf_hash,
    needed_nodes,
    range_hashes,
    root_from_inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# The RFC 6962 reference data of certificate-transparency (merkle_tree_test.cc), reused by
# certificate-transparency-go and transparency-dev/merkle (proof/verify_test.go).
CT_LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index 0-based, tree size, path)
CT_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CT_CONSISTENCY = [
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


# --- an independent, naive implementation: the RFC's recursive definitions, verbatim -------


def naive_mth(leaves: list[bytes]) -> bytes:
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(leaves[:k]) + naive_mth(leaves[k:])).digest()


def naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, leaves[:k]), naive_mth(leaves[k:])]
    return [*naive_path(m - k, leaves[k:]), naive_mth(leaves[:k])]


def naive_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [naive_mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, leaves[:k], whole), naive_mth(leaves[k:])]
    return [*naive_subproof(m - k, leaves[k:], False), naive_mth(leaves[:k])]


class StoredTree:
    """What the store keeps: every completed perfect node, built with CompactTree."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.nodes: dict[NodeKey, bytes] = {}
        self.tree = CompactTree()
        for leaf in leaves:
            self.nodes.update(self.tree.append(leaf_hash(leaf)))

    def inclusion(self, index: int, size: int) -> list[bytes]:
        ranges = inclusion_ranges(index, size)
        return range_hashes(ranges, {k: self.nodes[k] for k in needed_nodes(ranges)})

    def consistency(self, first: int, second: int) -> list[bytes]:
        ranges = consistency_ranges(first, second)
        return range_hashes(ranges, {k: self.nodes[k] for k in needed_nodes(ranges)})

    def root(self, size: int) -> bytes:
        return fold([self.nodes[k] for k in frontier(size)])


def leaves_of(n: int) -> list[bytes]:
    return [f"entry-{i}".encode() for i in range(n)]


# --- published vectors ------------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert root_of([]) == EMPTY_ROOT


def test_roots_match_the_published_rfc6962_vectors() -> None:
    stored = StoredTree(CT_LEAVES)
    for size in range(1, 9):
        assert root_of([leaf_hash(x) for x in CT_LEAVES[:size]]).hex() == CT_ROOTS[size - 1]
        assert stored.root(size).hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_inclusion_proofs_match_the_published_vectors(index: int, size: int, path: list[str]) -> None:
    stored = StoredTree(CT_LEAVES)
    assert [h.hex() for h in stored.inclusion(index, size)] == path
    root = bytes.fromhex(CT_ROOTS[size - 1])
    verify_inclusion(index, size, leaf_hash(CT_LEAVES[index]), [bytes.fromhex(p) for p in path], root)


@pytest.mark.parametrize(("first", "second", "path"), CT_CONSISTENCY)
def test_consistency_proofs_match_the_published_vectors(first: int, second: int, path: list[str]) -> None:
    stored = StoredTree(CT_LEAVES)
    assert [h.hex() for h in stored.consistency(first, second)] == path
    r1, r2 = bytes.fromhex(CT_ROOTS[first - 1]), bytes.fromhex(CT_ROOTS[second - 1])
    verify_consistency(first, second, r1, r2, [bytes.fromhex(p) for p in path])


# --- against the naive implementation, every shape up to 70 leaves ---------------------------


def test_roots_and_proofs_equal_the_naive_recursion_for_every_size() -> None:
    leaves = leaves_of(70)
    stored = StoredTree(leaves)
    for size in range(1, 71):
        root = naive_mth(leaves[:size])
        assert stored.root(size) == root
        for index in range(size):
            path = stored.inclusion(index, size)
            assert path == naive_path(index, leaves[:size])
            verify_inclusion(index, size, leaf_hash(leaves[index]), path, root)
        for first in range(1, size + 1):
            proof = stored.consistency(first, size)
            assert proof == naive_subproof(first, leaves[:size], True)
            verify_consistency(first, size, naive_mth(leaves[:first]), root, proof)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 5000), data=st.data())
def test_large_random_trees_agree_with_the_naive_recursion(size: int, data: st.DataObject) -> None:
    leaves = leaves_of(size)
    stored = StoredTree(leaves)
    index = data.draw(st.integers(0, size - 1))
    first = data.draw(st.integers(1, size))
    root = naive_mth(leaves)
    assert stored.root(size) == root
    assert stored.inclusion(index, size) == naive_path(index, leaves)
    assert stored.consistency(first, size) == naive_subproof(first, leaves, True)


def test_an_append_writes_two_nodes_amortised() -> None:
    stored = StoredTree(leaves_of(1024))
    assert len(stored.nodes) == 2 * 1024 - 1


# --- attacks on proofs ------------------------------------------------------------------------


def _flip(h: bytes) -> bytes:
    return bytes([h[0] ^ 8]) + h[1:]


def test_every_corrupted_inclusion_proof_is_refused() -> None:
    leaves = leaves_of(13)
    stored = StoredTree(leaves)
    root = stored.root(13)
    index, leaf = 6, leaf_hash(leaves[6])
    path = stored.inclusion(index, 13)
    verify_inclusion(index, 13, leaf, path, root)
    probes = [
        (index - 1, 13, leaf, path, root),
        (index + 1, 13, leaf, path, root),
        (index ^ 2, 13, leaf, path, root),
        (index, 26, leaf, path, root),
        (index, 6 + 1, leaf, path, root),
        (index, 13, leaf_hash(b"forged entry"), path, root),
        (index, 13, leaf, path, EMPTY_ROOT),
        (index, 13, leaf, [*path, root], root),
        (index, 13, leaf, [root, *path], root),
        (index, 13, leaf, path[:-1], root),
        (index, 13, leaf, [path[0], EMPTY_ROOT, *path[1:]], root),
        *[(index, 13, leaf, [*path[:i], _flip(path[i]), *path[i + 1 :]], root) for i in range(len(path))],
    ]
    for idx, size, lf, p, r in probes:
        with pytest.raises(ProofError):
            verify_inclusion(idx, size, lf, p, r)


def test_every_corrupted_consistency_proof_is_refused() -> None:
    leaves = leaves_of(21)
    stored = StoredTree(leaves)
    r1, r2 = stored.root(6), stored.root(21)
    proof = stored.consistency(6, 21)
    verify_consistency(6, 21, r1, r2, proof)
    probes = [
        (5, 21, r1, r2, proof),
        (7, 21, r1, r2, proof),
        (6, 42, r1, r2, proof),
        (6, 10, r1, r2, proof),
        (6, 21, EMPTY_ROOT, r2, proof),
        (6, 21, r1, EMPTY_ROOT, proof),
        (6, 21, r2, r1, proof),
        (6, 21, r1, r2, []),
        (6, 21, r1, r2, [*proof, r1]),
        (6, 21, r1, r2, [r2, *proof]),
        (6, 21, r1, r2, proof[:-1]),
        *[(6, 21, r1, r2, [*proof[:i], _flip(proof[i]), *proof[i + 1 :]]) for i in range(len(proof))],
    ]
    for first, second, a, b, p in probes:
        with pytest.raises(ProofError):
            verify_consistency(first, second, a, b, p)


def test_a_rewritten_history_has_no_consistency_proof() -> None:
    # The operator rewrites entry 3 after signing size 8: no proof from the new tree links the
    # signed root to the new one.
    leaves = leaves_of(12)
    signed = StoredTree(leaves[:8]).root(8)
    forged = StoredTree([*leaves[:3], b"rewritten", *leaves[4:]])
    with pytest.raises(ProofError):
        verify_consistency(8, 12, signed, forged.root(12), forged.consistency(8, 12))


def test_edge_cases_of_consistency() -> None:
    r = leaf_hash(b"x")
    verify_consistency(0, 5, EMPTY_ROOT, r, [])
    verify_consistency(3, 3, r, r, [])
    for args in [(3, 3, r, EMPTY_ROOT, []), (3, 3, r, r, [r]), (4, 3, r, r, [r]), (0, 3, r, r, [r])]:
        with pytest.raises(ProofError):
            verify_consistency(*args)  # type: ignore[arg-type]


def test_malformed_hash_sizes_are_refused() -> None:
    with pytest.raises(ProofError):
        root_from_inclusion_proof(0, 2, b"short", [EMPTY_ROOT])
    with pytest.raises(ProofError):
        root_from_inclusion_proof(0, 2, EMPTY_ROOT, [b"short"])
