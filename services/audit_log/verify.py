"""Verify the audit trail, streaming, and name the first bad entry.

`verify_trail` is what `mlwarden audit verify` runs: the hash chain, the RFC 9162 tree
recomputed from the entries (and compared with the stored nodes), and every signed checkpoint
(signature, root against the entries, consistency with the previous one). `verify_chain` is the
chain alone.

What a chain alone detects: a changed field of any entry (its recomputed hash differs), a
deleted entry other than the newest (a seq gap), entries swapped or moved (seq is hashed, and
`prev_hash` no longer matches), and an entry inserted between others (the next entry's link
breaks). What it cannot detect: the newest entries removed, or the chain recomputed from the
first changed entry on by someone who controls the database. Pass a trusted earlier head as
`anchor` (later: every signed RFC 9162 checkpoint, issue 3) to detect those too.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.audit_log import merkle
from services.audit_log.checkpoint import AuditKey, CheckpointError, verify_checkpoint
from services.audit_log.errors import TreeError
from services.audit_log.merkle import CompactTree, NodeKey, ProofError
from services.audit_log.store import GENESIS_HASH, AuditStore, ChainHead, StoredEntry, chain_hash
from shared.errors import InvalidMessage
from shared.events import AuditCheckpoint


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Outcome of `verify_chain`."""

    ok: bool
    #: Entries checked and found good before the first problem (all of them when ok).
    entries: int
    #: seq of the first position where the chain is wrong (a missing seq for a deletion).
    first_bad_seq: int | None = None
    #: Why it is wrong; empty when ok.
    reason: str = ""
    #: The last good entry's seq and hash (what a later run can pass as `anchor`).
    head: ChainHead = field(default_factory=lambda: ChainHead(0, GENESIS_HASH))


def verify_chain(store: AuditStore, *, chunk: int = 1000, anchor: ChainHead | None = None) -> ChainReport:
    """Recompute every link in seq order, `chunk` rows at a time (constant memory).

    `anchor` is a head recorded earlier and kept outside the database: the chain must still
    contain exactly that entry at that seq.
    """
    expected_seq, prev = 1, GENESIS_HASH
    good = 0

    def bad(seq: int, reason: str) -> ChainReport:
        return ChainReport(False, good, seq, reason, ChainHead(expected_seq - 1, prev))

    for entry in store.iter_entries(chunk):
        # (1) dense seq: a gap is a deleted entry, a repeat or a step back cannot be stored
        # under the primary key, a jump from the start means the first entries are gone.
        if entry.seq != expected_seq:
            return bad(
                expected_seq,
                f"entry seq {expected_seq} is missing (next is {entry.seq})",
            )
        # (2) the link: this entry must name its predecessor's hash.
        if entry.prev_hash != prev:
            return bad(entry.seq, "prev_hash does not match the previous entry's entry_hash")
        # (3) the content: the stored hash must be the hash of the stored fields.
        if entry.computed_hash() != entry.entry_hash:
            return bad(entry.seq, "entry_hash does not match the entry's fields")
        # (4) the trusted head: the entry at its seq must be the one seen then.
        if anchor is not None and entry.seq == anchor.seq and entry.entry_hash != anchor.entry_hash:
            return bad(entry.seq, "entry differs from the trusted head recorded at this seq")
        prev = entry.entry_hash
        expected_seq += 1
        good += 1
    if anchor is not None and anchor.seq > good:
        return bad(
            good + 1,
            f"chain ends at seq {good} but a trusted head at seq {anchor.seq} was recorded: "
            "the newest entries were removed",
        )
    return ChainReport(True, good, None, "", ChainHead(good, prev))


@dataclass(frozen=True, slots=True)
class TrailReport:
    """Outcome of `verify_trail`."""

    ok: bool
    #: Entries checked and found good before the first problem (all of them when ok).
    entries: int
    #: Signed checkpoints checked.
    checkpoints: int
    #: seq of the first bad entry (or of the first entry of the smallest range known to hold it).
    first_bad_seq: int | None = None
    #: Why the trail is not intact; empty when ok.
    reason: str = ""
    #: Tree size of the newest checkpoint that matched the entries (0 when none).
    verified_size: int = 0
    #: RFC 9162 root of the good entries, hex.
    root_hash: str = merkle.EMPTY_ROOT.hex()


class _Bad(Exception):
    def __init__(self, seq: int | None, reason: str) -> None:
        self.seq = seq
        self.reason = reason


def verify_trail(
    store: AuditStore,
    checkpoints: Sequence[AuditCheckpoint],
    public: AuditKey | None,
    *,
    chunk: int = 1000,
) -> TrailReport:
    """Check chain, tree and checkpoints in one pass over the entries (constant memory).

    `checkpoints` in the order they were published (stream or mirror order); `public` is
    audit-log's public key (needed when there are checkpoints). Detects a changed field, a
    deleted, swapped or inserted entry, and the newest entries removed, even when the
    attacker recomputed the chain and the tree, for everything a checkpoint covers.
    """
    state = _Pass(store, chunk)
    try:
        # (1) every checkpoint is audit-log's, and they only ever grow.
        _check_checkpoints(checkpoints, public)
        state.expected = {cp.tree_size: cp for cp in checkpoints}
        # (2) chain, tree and checkpoint roots, entry by entry.
        state.run()
        # (3) nothing the checkpoints cover, and no tree node, is missing at the end.
        covered = store.tree_size()
        if covered > state.good:
            # Every stored node up to here matched: exactly the entries after `good` are gone.
            raise _Bad(
                state.good + 1,
                f"the Merkle tree covers {covered} entries but only {state.good} are stored: "
                f"entries {state.good + 1}..{covered} were removed",
            )
        newest = max((cp.tree_size for cp in checkpoints), default=0)
        if newest > state.good:
            # Entries after the last matching checkpoint cannot be told apart from each other
            # any more: the first one not vouched for is named.
            first = state.verified_size + 1
            raise _Bad(
                first,
                f"a checkpoint was signed for {newest} entries but the trail holds {state.good}: "
                f"the newest entries were removed (entries {first}..{newest} are not proven; the last "
                f"matching checkpoint covers {state.verified_size})",
            )
        # (4) each checkpoint is consistent with the previous one (RFC 9162 section 2.1.4.2).
        _check_consistency(store, checkpoints)
    except _Bad as bad:
        return TrailReport(False, state.good, len(checkpoints), bad.seq, bad.reason, state.verified_size, state.root())
    return TrailReport(True, state.good, len(checkpoints), None, "", state.verified_size, state.root())


def _check_checkpoints(checkpoints: Sequence[AuditCheckpoint], public: AuditKey | None) -> None:
    if checkpoints and public is None:
        raise _Bad(None, "checkpoints found but no public key of audit-log to check them with")
    previous: AuditCheckpoint | None = None
    for cp in checkpoints:
        assert public is not None
        try:
            verify_checkpoint(cp, public)
        except CheckpointError as exc:
            raise _Bad(None, f"forged checkpoint: {exc.reason}") from exc
        if previous is not None:
            if cp.tree_size < previous.tree_size:
                raise _Bad(
                    cp.tree_size + 1,
                    f"checkpoint for {cp.tree_size} entries signed after one for {previous.tree_size}: "
                    "the trail shrank",
                )
            if cp.tree_size == previous.tree_size and cp.root_hash != previous.root_hash:
                raise _Bad(None, f"two checkpoints for {cp.tree_size} entries with different roots: a forked trail")
        previous = cp


def _check_consistency(store: AuditStore, checkpoints: Sequence[AuditCheckpoint]) -> None:
    ordered = sorted({cp.tree_size: cp for cp in checkpoints}.values(), key=lambda cp: cp.tree_size)
    for older, newer in itertools.pairwise(ordered):
        try:
            path = store.consistency_proof(older.tree_size, newer.tree_size)
            merkle.verify_consistency(
                older.tree_size,
                newer.tree_size,
                bytes.fromhex(older.root_hash),
                bytes.fromhex(newer.root_hash),
                path,
            )
        except (ProofError, TreeError) as exc:
            raise _Bad(
                older.tree_size + 1,
                f"checkpoint for {newer.tree_size} entries is not consistent with the one for {older.tree_size}: {exc}",
            ) from exc


class _Pass:
    """One streaming pass: chain links, recomputed tree, stored nodes and checkpoint roots."""

    def __init__(self, store: AuditStore, chunk: int) -> None:
        self.store = store
        self.chunk = chunk
        self.expected: dict[int, AuditCheckpoint] = {}
        self.tree = CompactTree()
        self.good = 0
        self.prev = GENESIS_HASH
        self.verified_size = 0

    def root(self) -> str:
        return self.tree.root().hex()

    def run(self) -> None:
        table = self.store.table
        while True:
            rows = self.store.select_entries(table.c.seq > self.good, limit=self.chunk)
            if not rows:
                return
            stored = dict(self.store.iter_tree_nodes(self.good, rows[-1].seq))
            for entry in rows:
                self._entry(entry, stored)
            if len(rows) < self.chunk:
                return

    def _entry(self, entry: StoredEntry, stored: dict[NodeKey, bytes]) -> None:
        expected_seq = self.good + 1
        # (a) dense seq: a gap is a deleted entry.
        if entry.seq != expected_seq:
            raise _Bad(expected_seq, f"entry seq {expected_seq} is missing (next is {entry.seq})")
        # (b) the chain link and (c) the entry's own hash.
        if entry.prev_hash != self.prev:
            raise _Bad(entry.seq, "prev_hash does not match the previous entry's entry_hash")
        try:
            leaf = entry.leaf_input()
        except InvalidMessage as exc:
            raise _Bad(entry.seq, f"entry cannot be hashed: {exc}") from exc
        if chain_hash(entry.prev_hash, leaf) != entry.entry_hash:
            raise _Bad(entry.seq, "entry_hash does not match the entry's fields")
        # (d) the stored tree nodes this leaf completes equal the recomputed ones.
        for key, value in self.tree.append(merkle.leaf_hash(leaf)):
            if stored.get(key) != value:
                what = "missing" if key not in stored else "different"
                raise _Bad(
                    entry.seq if key.level == 0 else key.start + 1,
                    f"stored Merkle node {tuple(key)} is {what} (recomputed from entries "
                    f"{key.start + 1}..{key.tree_size})",
                )
        # (e) a signed checkpoint for this size has this root.
        cp = self.expected.get(self.tree.size)
        if cp is not None:
            if self.tree.root().hex() != cp.root_hash:
                first = self.verified_size + 1
                raise _Bad(
                    first,
                    f"entries {first}..{cp.tree_size} do not match the checkpoint signed for {cp.tree_size} "
                    "entries: one of them was changed, removed, reordered or inserted (and the chain "
                    "and tree recomputed to hide it)",
                )
            self.verified_size = cp.tree_size
        self.prev = entry.entry_hash
        self.good += 1
