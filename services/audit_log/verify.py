"""Verify the hash chain of the audit trail, streaming, and name the first bad entry.

What a chain alone detects: a changed field of any entry (its recomputed hash differs), a
deleted entry other than the newest (a seq gap), entries swapped or moved (seq is hashed, and
`prev_hash` no longer matches), and an entry inserted between others (the next entry's link
breaks). What it cannot detect: the newest entries removed, or the chain recomputed from the
first changed entry on by someone who controls the database. Pass a trusted earlier head as
`anchor` (later: every signed RFC 9162 checkpoint, issue 3) to detect those too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.audit_log.store import GENESIS_HASH, AuditStore, ChainHead


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
