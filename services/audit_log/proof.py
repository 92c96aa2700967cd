"""Inclusion proofs a third party checks offline with only audit-log's public key.

A proof (`shared.events.AuditInclusionProof`, format in docs/audit-proofs.md) carries the entry's
exact leaf bytes, its RFC 9162 inclusion path and the signed checkpoint it leads to.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson

from services.audit_log import merkle
from services.audit_log.checkpoint import AuditKey, CheckpointError, verify_checkpoint
from services.audit_log.merkle import ProofError
from services.audit_log.store import AuditStore
from shared.errors import InputError
from shared.events import AuditCheckpoint, AuditInclusionProof


class EntryNotFoundError(InputError):
    """No entry with this event id or leaf index, or it is not covered by the checkpoint yet."""

    def __init__(self, reason: str, *, event_id: str | None = None, leaf_index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event_id = event_id
        self.leaf_index = leaf_index


def build_inclusion_proof(
    store: AuditStore,
    checkpoint: AuditCheckpoint,
    *,
    event_id: str | None = None,
    leaf_index: int | None = None,
) -> AuditInclusionProof:
    """The inclusion proof of one entry (by event id or leaf index) against `checkpoint`."""
    if (event_id is None) == (leaf_index is None):
        raise InputError("give exactly one of event_id and leaf_index")
    if event_id is not None:
        entry = store.find(event_id)
    else:
        assert leaf_index is not None
        rows = store.select_entries(store.table.c.seq == leaf_index + 1, limit=1)
        entry = rows[0] if rows else None
    if entry is None:
        raise EntryNotFoundError("no such entry in the audit trail", event_id=event_id, leaf_index=leaf_index)
    if entry.leaf_index >= checkpoint.tree_size:
        raise EntryNotFoundError(
            f"entry {entry.leaf_index} is newer than the checkpoint (tree size {checkpoint.tree_size})",
            event_id=entry.event_id,
            leaf_index=entry.leaf_index,
        )
    path = store.inclusion_proof(entry.leaf_index, checkpoint.tree_size)
    return AuditInclusionProof(
        event_id=entry.event_id,
        leaf_index=entry.leaf_index,
        tree_size=checkpoint.tree_size,
        leaf_input=base64.b64encode(entry.leaf_input()).decode(),
        inclusion_path=[h.hex() for h in path],
        checkpoint=checkpoint,
    )


@dataclass(frozen=True, slots=True)
class CheckedProof:
    """A proof that verified: the entry it proves, as stored and hashed."""

    event_id: str
    leaf_index: int
    tree_size: int
    root_hash: str
    #: The leaf's fields (canonical JSON parsed), including `body`, the event as received.
    entry: dict[str, Any]
    #: The event itself (`body` parsed).
    event: dict[str, Any]


def check_inclusion_proof(proof: AuditInclusionProof, public: AuditKey) -> CheckedProof:
    """Verify a proof offline; raise ProofError (or CheckpointError) at the first failing step."""
    cp = proof.checkpoint
    # (1) the checkpoint was signed by audit-log's key.
    verify_checkpoint(cp, public)
    # (2) the proof is against that checkpoint's tree.
    if proof.tree_size != cp.tree_size:
        raise ProofError(f"proof is for tree size {proof.tree_size}, the checkpoint for {cp.tree_size}")
    # (3) the leaf bytes are what the entry says: its seq is leaf_index + 1, its event the one named.
    try:
        leaf = base64.b64decode(proof.leaf_input, validate=True)
        entry: Any = orjson.loads(leaf)
        event: Any = orjson.loads(entry["body"]) if isinstance(entry, dict) else None
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise ProofError(f"leaf_input is not an audit entry: {exc}") from exc
    if not isinstance(entry, dict) or not isinstance(event, dict):
        raise ProofError("leaf_input is not an audit entry")
    if entry.get("seq") != proof.leaf_index + 1:
        raise ProofError(f"leaf_input is entry seq {entry.get('seq')}, not leaf index {proof.leaf_index}")
    if entry.get("event_id") != proof.event_id or event.get("id") != proof.event_id:
        raise ProofError(f"leaf_input is not the entry of event {proof.event_id!r}")
    # (4) RFC 9162 section 2.1.3.2: the path leads from the leaf hash to the signed root.
    path = [bytes.fromhex(h) for h in proof.inclusion_path]
    merkle.verify_inclusion(
        proof.leaf_index, proof.tree_size, merkle.leaf_hash(leaf), path, bytes.fromhex(cp.root_hash)
    )
    return CheckedProof(
        event_id=proof.event_id,
        leaf_index=proof.leaf_index,
        tree_size=proof.tree_size,
        root_hash=cp.root_hash,
        entry=entry,
        event=event,
    )


__all__ = [
    "CheckedProof",
    "CheckpointError",
    "EntryNotFoundError",
    "ProofError",
    "build_inclusion_proof",
    "check_inclusion_proof",
]
