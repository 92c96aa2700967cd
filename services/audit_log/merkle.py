"""The RFC 9162 Merkle tree over the audit entries: hashes, proofs and their verification.

Pure functions over bytes (no SQL, no NATS). Definitions follow RFC 9162 section 2.1
(the same as RFC 6962's):

    MTH({})       = SHA-256()
    MTH({d(0)})   = SHA-256(0x00 || d(0))                     leaf hash
    MTH(D[n])     = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  node hash,
                    k the largest power of two smaller than n

Storage model
-------------
The tree is kept as its *perfect subtrees*: every node whose leaves form an aligned block of
2**level leaves. Such a node is named by `NodeKey(tree_size, level)`: the tree size at which it
becomes complete (its exclusive end) and its height. Appending leaf i completes exactly the nodes
`(i + 1, 0 .. trailing_ones(i))`, so an append writes O(1) nodes amortised (2 per leaf) and needs
only the *frontier* (the perfect subtrees of the binary decomposition of the size, at most
log2(n) of them). Any subtree hash MTH(D[a:b]) that a proof needs is the right fold of at most
log2(n) stored perfect nodes, so a proof reads O(log^2 n) nodes in one query, whatever n is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from shared.errors import InputError, MlwardenError

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
#: MTH of the empty tree: SHA-256 of the empty string (RFC 9162 section 2.1.1).
EMPTY_ROOT = hashlib.sha256(b"").digest()
HASH_SIZE = 32


class ProofError(MlwardenError, ValueError):
    """A Merkle proof that does not verify, or that is malformed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NodeKey(NamedTuple):
    """A perfect subtree: it covers leaves [tree_size - 2**level, tree_size)."""

    tree_size: int
    level: int

    @property
    def start(self) -> int:
        """Index of its first leaf."""
        return self.tree_size - (1 << self.level)


def leaf_hash(leaf_input: bytes) -> bytes:
    """SHA-256(0x00 || leaf_input): the RFC 9162 leaf hash."""
    return hashlib.sha256(LEAF_PREFIX + leaf_input).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the RFC 9162 interior node hash."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _largest_power_of_two_below(n: int) -> int:
    """k with k < n <= 2k (n > 1): the RFC 9162 split point."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_nodes(start: int, end: int) -> list[NodeKey]:
    """The perfect subtrees whose right fold is MTH(D[start:end]), left to right.

    Follows the RFC split rule: a range that is a whole aligned block is one node; otherwise its
    left part (k leaves) and its right part are decomposed in turn.
    """
    if not 0 <= start < end:
        raise InputError(f"empty or negative leaf range [{start}, {end})")
    keys: list[NodeKey] = []
    while True:
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            keys.append(NodeKey(end, n.bit_length() - 1))
            return keys
        k = _largest_power_of_two_below(n)
        keys.extend(perfect_nodes(start, start + k))
        start += k


def fold(hashes: Sequence[bytes]) -> bytes:
    """Combine perfect-subtree hashes (left to right) into the hash of the range they cover."""
    if not hashes:
        return EMPTY_ROOT
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def frontier(tree_size: int) -> list[NodeKey]:
    """The perfect subtrees a tree of `tree_size` leaves consists of, largest first."""
    keys: list[NodeKey] = []
    end = 0
    for level in range(tree_size.bit_length() - 1, -1, -1):
        if tree_size >> level & 1:
            end += 1 << level
            keys.append(NodeKey(end, level))
    return keys


# --- proofs as lists of leaf ranges ----------------------------------------------------------
# Proof generation first names the ranges whose MTH the proof holds (pure arithmetic), so a
# store can fetch every node they need in one query and then hash.


def inclusion_ranges(index: int, tree_size: int) -> list[tuple[int, int]]:
    """The ranges of PATH(index, D[tree_size]) (RFC 9162 section 2.1.3.1), leaf upwards."""
    if not 0 <= index < tree_size:
        raise InputError(f"leaf index {index} is outside a tree of size {tree_size}")
    ranges: list[tuple[int, int]] = []
    start, end, m = 0, tree_size, index
    while end - start > 1:
        n = end - start
        k = _largest_power_of_two_below(n)
        if m < k:
            # PATH(m, D[0:k]) : MTH(D[k:n])
            ranges.append((start + k, end))
            end = start + k
        else:
            # PATH(m - k, D[k:n]) : MTH(D[0:k])
            ranges.append((start, start + k))
            start, m = start + k, m - k
    ranges.reverse()
    return ranges


def consistency_ranges(first: int, second: int) -> list[tuple[int, int]]:
    """The ranges of PROOF(first, D[second]) (RFC 9162 section 2.1.4.1); 0 < first <= second."""
    if not 0 < first <= second:
        raise InputError(f"no consistency proof from size {first} to size {second}")
    ranges: list[tuple[int, int]] = []
    start, end, m, whole = 0, second, first, True
    # SUBPROOF(m, D[n], b), unrolled; the outer nodes are collected bottom-up at the end.
    outer: list[tuple[int, int]] = []
    while True:
        n = end - start
        if m == n:
            if not whole:
                ranges.append((start, end))
            break
        k = _largest_power_of_two_below(n)
        if m <= k:
            # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            outer.append((start + k, end))
            end = start + k
        else:
            # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            outer.append((start, start + k))
            start, m, whole = start + k, m - k, False
    return ranges + outer[::-1]


def needed_nodes(ranges: Iterable[tuple[int, int]]) -> set[NodeKey]:
    """Every stored node the hashes of `ranges` are folded from."""
    keys: set[NodeKey] = set()
    for start, end in ranges:
        keys.update(perfect_nodes(start, end))
    return keys


def range_hashes(ranges: Sequence[tuple[int, int]], nodes: Mapping[NodeKey, bytes]) -> list[bytes]:
    """MTH of each range, from the stored perfect nodes (KeyError names a missing node)."""
    return [fold([nodes[key] for key in perfect_nodes(start, end)]) for start, end in ranges]


# --- verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2) ------------------------------------


def root_from_inclusion_proof(index: int, tree_size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof of leaf hash `leaf` (RFC 9162 section 2.1.3.2)."""
    # (1) the index must be inside the tree.
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is outside a tree of size {tree_size}")
    _check_sizes([leaf, *path])
    # (2)-(3)
    fn, sn, r = index, tree_size - 1, leaf
    # (4)
    for p in path:
        # (4a)
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        # (4b)
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        # (4c)
        fn >>= 1
        sn >>= 1
    # (5) sn must be 0 (the comparison with the root is the caller's).
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


def verify_inclusion(index: int, tree_size: int, leaf: bytes, path: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `path` proves leaf hash `leaf` at `index` in the tree `root`."""
    if root_from_inclusion_proof(index, tree_size, leaf, path) != root:
        raise ProofError("inclusion proof does not lead to the root hash")


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes, path: Sequence[bytes]) -> None:
    """Raise ProofError unless `path` proves tree `first_root` (size `first`) is a prefix of
    tree `second_root` (size `second`) (RFC 9162 section 2.1.4.2)."""
    _check_sizes([first_root, second_root, *path])
    if first < 0 or second < first:
        raise ProofError(f"no consistency from size {first} to size {second}")
    if first == second:
        # Same size: the same tree, and nothing to prove with.
        if path:
            raise ProofError("consistency proof between equal sizes must be empty")
        if first_root != second_root:
            raise ProofError("two different roots for the same tree size")
        return
    if first == 0:
        # The empty tree is a prefix of every tree.
        if path:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    # (1)
    if not path:
        raise ProofError("consistency proof is empty")
    # (2) a first tree that is a perfect subtree is itself the first node of the proof.
    nodes = [first_root, *path] if first & (first - 1) == 0 else list(path)
    # (3)-(4)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # (5)
    fr = sr = nodes[0]
    # (6)
    for c in nodes[1:]:
        # (6a)
        if sn == 0:
            raise ProofError("consistency proof is longer than needed")
        # (6b)
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        # (6c)
        fn >>= 1
        sn >>= 1
    # (7)
    if sn != 0:
        raise ProofError("consistency proof is shorter than needed")
    if fr != first_root:
        raise ProofError("consistency proof does not lead to the first root")
    if sr != second_root:
        raise ProofError("consistency proof does not lead to the second root")


def _check_sizes(hashes: Iterable[bytes]) -> None:
    if any(len(h) != HASH_SIZE for h in hashes):
        raise ProofError(f"every hash must be {HASH_SIZE} bytes")


# --- building the tree incrementally ---------------------------------------------------------


@dataclass
class CompactTree:
    """The frontier of a growing tree: append leaves, learn each completed node, read roots.

    Memory is O(log n). `append` returns the perfect nodes completed by the leaf, which the
    store persists and the verifier compares with what is stored.
    """

    size: int = 0
    #: (level, hash) of the frontier's perfect subtrees, largest (leftmost) first.
    stack: list[tuple[int, bytes]] | None = None

    @classmethod
    def from_frontier(cls, tree_size: int, nodes: Mapping[NodeKey, bytes]) -> CompactTree:
        """Resume at `tree_size` from its frontier nodes (KeyError names a missing one)."""
        return cls(tree_size, [(key.level, nodes[key]) for key in frontier(tree_size)])

    def append(self, leaf: bytes) -> list[tuple[NodeKey, bytes]]:
        """Add one leaf hash; the nodes it completes, lowest first."""
        stack = self.stack if self.stack is not None else []
        self.stack = stack
        self.size += 1
        completed = [(NodeKey(self.size, 0), leaf)]
        stack.append((0, leaf))
        while len(stack) >= 2 and stack[-1][0] == stack[-2][0]:
            level, right = stack.pop()
            _, left = stack.pop()
            merged = node_hash(left, right)
            stack.append((level + 1, merged))
            completed.append((NodeKey(self.size, level + 1), merged))
        return completed

    def root(self) -> bytes:
        """MTH of the leaves appended so far."""
        return fold([h for _, h in self.stack or []])


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, streaming (for tests and small trees)."""
    tree = CompactTree()
    for leaf in leaves:
        tree.append(leaf)
    return tree.root()
