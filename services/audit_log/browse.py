"""What the auditors' web page shows, computed with audit-log's own checks (no second verifier).

- `check_entry`: an entry's inclusion proof against the latest signed checkpoint, built by
  `proof.build_inclusion_proof` and checked by `proof.check_inclusion_proof`, failing closed
  (no key, no checkpoint, a bad signature or a path that does not lead to the signed root: "NOT
  verified" with the reason).
- `verified_signer`: who signed an entry, as audit-log established it at ingestion
  (`provenance.py`: the labels exist only when the signature verified against the trust store).
- `check_checkpoints`: the signature of each checkpoint, by `checkpoint.verify_checkpoint`.
- `model_timeline`: one model version's story, from `export.subject_history`.

Plain functions over an `AuditStore`; no web framework here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

from services.audit_log.checkpoint import AuditKey, CheckpointError, verify_checkpoint
from services.audit_log.equivocation import EQUIVOCATION_TYPE
from services.audit_log.errors import TreeError
from services.audit_log.export import subject_history
from services.audit_log.merkle import ProofError
from services.audit_log.proof import EntryNotFoundError, build_inclusion_proof, check_inclusion_proof
from services.audit_log.store import AuditStore, StoredEntry
from shared.errors import InputError
from shared.events import AuditCheckpoint
from shared.topology import Subjects, expected_signer


@dataclass(frozen=True, slots=True)
class ProofCheck:
    """Whether one entry is proven included in the trail audit-log signed."""

    #: True only when every step verified; anything missing or wrong is False.
    verified: bool
    #: Why it is not verified (empty when it is).
    reason: str
    #: The checkpoint the proof was checked against (None when there was none).
    checkpoint: AuditCheckpoint | None = None
    #: RFC 9162 inclusion path, hex, leaf upwards (empty when no proof was built).
    path: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Signer:
    """Who signed an entry, as audit-log verified it when it recorded the entry."""

    #: The signer that audit-log verified against the trust store, or None.
    verified: str | None
    #: The `signer` the envelope names (what it claims, verified or not).
    claimed: str | None
    #: One line for a person: verified, unsigned, or why not verified.
    note: str


def parse_body(entry: StoredEntry) -> dict[str, Any] | None:
    """The stored envelope as a JSON object, or None when the body is not one (corruption)."""
    try:
        event = orjson.loads(entry.body)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def verified_signer(entry: StoredEntry) -> Signer:
    """The entry's signer: the labels audit-log set only after the signature verified (issue 8).

    A service's verdict earns `service` (its expected signer), a producer's event earns `actor`
    (the signing actor); an entry with neither label was unsigned or did not verify.
    """
    event = parse_body(entry) or {}
    claimed = event.get("signer") if isinstance(event.get("signer"), str) else None
    service = expected_signer(entry.type)
    label = entry.service if service is not None else entry.actor
    if label is not None and label == claimed:
        return Signer(label, claimed, "signature verified by audit-log against the trust store when recorded")
    if entry.type == EQUIVOCATION_TYPE and entry.service == "audit-log":
        return Signer("audit-log", claimed, "written by audit-log itself; covered by its signed checkpoints")
    if claimed is None:
        return Signer(None, None, "unsigned: nobody vouches for this event")
    return Signer(None, claimed, f"NOT verified: the signature of {claimed!r} did not verify when recorded")


def check_entry(
    store: AuditStore, entry: StoredEntry, checkpoint: AuditCheckpoint | None, key: AuditKey | None
) -> ProofCheck:
    """Prove `entry` against `checkpoint` and check the proof with audit-log's public `key`.

    Fails closed: without a key or a checkpoint, or when any step fails, the entry is "NOT
    verified" and the reason says which step.
    """
    # (1) the checker needs audit-log's key, and a signed checkpoint to check against.
    if key is None:
        return ProofCheck(False, "no public key of audit-log to check the checkpoint with (pass --key)", checkpoint)
    if checkpoint is None:
        return ProofCheck(False, "no signed checkpoint yet: nothing vouches for this entry")
    if entry.leaf_index >= checkpoint.tree_size:
        return ProofCheck(
            False,
            f"entry {entry.seq} is newer than the latest signed checkpoint ({checkpoint.tree_size} entries)",
            checkpoint,
        )
    # (2) RFC 9162 PATH from the stored tree, and (3) the offline check: checkpoint signature,
    # leaf bytes, path to the signed root (`proof.check_inclusion_proof`).
    try:
        proof = build_inclusion_proof(store, checkpoint, leaf_index=entry.leaf_index)
        checked = check_inclusion_proof(proof, key)
    except (CheckpointError, ProofError, TreeError, EntryNotFoundError) as exc:
        return ProofCheck(False, getattr(exc, "reason", str(exc)), checkpoint)
    path = tuple(proof.inclusion_path)
    # (4) what the page shows is what was proven: the displayed row hashes to the proven leaf.
    if checked.entry != orjson.loads(entry.leaf_input()):
        return ProofCheck(False, "the entry shown differs from the entry proven", checkpoint, path)
    return ProofCheck(True, "", checkpoint, path)


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    """One signed checkpoint and whether its signature verifies."""

    checkpoint: AuditCheckpoint
    verified: bool
    reason: str


def check_checkpoints(checkpoints: Iterable[AuditCheckpoint], key: AuditKey | None) -> list[CheckpointRow]:
    """Each checkpoint's signature checked with audit-log's key (fails closed without one)."""
    rows: list[CheckpointRow] = []
    for cp in checkpoints:
        if key is None:
            rows.append(CheckpointRow(cp, False, "no public key of audit-log"))
            continue
        try:
            verify_checkpoint(cp, key)
        except CheckpointError as exc:
            rows.append(CheckpointRow(cp, False, exc.reason))
        else:
            rows.append(CheckpointRow(cp, True, ""))
    return rows


# --- one model version's story ---------------------------------------------------------------

#: What each recorded type is in a model version's story.
STEP_NAMES: Final = {
    Subjects.VERDICT_DATASET: "dataset verdict",
    Subjects.MODEL_BUILT: "model built",
    Subjects.VERDICT_ARTIFACT: "artifact verdict",
    Subjects.PROMOTION_REQUESTED: "promotion requested",
    Subjects.APPROVAL_GIVEN: "approval",
    Subjects.DEMOTION_REQUESTED: "demotion requested",
    Subjects.ROLLBACK_REQUESTED: "rollback requested",
}


@dataclass(frozen=True, slots=True)
class TimelineStep:
    """One recorded event in a model version's story."""

    entry: StoredEntry
    #: What happened, for a person: "dataset verdict", "approval", "promotion verdict", ...
    step: str
    #: The decision, or the stage changed, in a few words.
    outcome: str
    signer: Signer


def _outcome(entry: StoredEntry, data: dict[str, Any]) -> str:
    stage = data.get("stage")
    decision = entry.decision or ""
    if entry.type == Subjects.VERDICT_PROMOTION:
        return f"{decision} ({stage})" if stage else decision
    if entry.type in (Subjects.PROMOTION_REQUESTED, Subjects.DEMOTION_REQUESTED, Subjects.ROLLBACK_REQUESTED):
        return f"to {stage}" if entry.type == Subjects.PROMOTION_REQUESTED else f"stage {stage}"
    if entry.type == Subjects.APPROVAL_GIVEN:
        return f"for {stage}" if stage else ""
    if entry.type == Subjects.VERDICT_DATASET:
        return f"{decision}: {data.get('dataset')}:{data.get('version')}"
    return decision


def _step(entry: StoredEntry) -> TimelineStep:
    event = parse_body(entry) or {}
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    assert isinstance(data, dict)
    name = STEP_NAMES.get(entry.type, entry.type)
    if entry.type == Subjects.VERDICT_PROMOTION:
        name = f"{data.get('action', 'promotion')} verdict"
    return TimelineStep(entry, name, _outcome(entry, data), verified_signer(entry))


def _datasets(entries: Sequence[StoredEntry]) -> list[tuple[str, str]]:
    """(dataset, version) the model was trained on, from its build and artifact verdict."""
    found: dict[tuple[str, str], None] = {}
    for entry in entries:
        if entry.type not in (Subjects.MODEL_BUILT, Subjects.VERDICT_ARTIFACT):
            continue
        data = (parse_body(entry) or {}).get("data")
        cited = data.get("datasets") if isinstance(data, dict) else None
        for ref in cited if isinstance(cited, list) else []:
            if isinstance(ref, dict) and isinstance(ref.get("dataset"), str) and isinstance(ref.get("version"), str):
                found[(ref["dataset"], ref["version"])] = None
    return list(found)


#: How many datasets of one model version the timeline follows (a build names a handful).
MAX_DATASETS: Final = 20


def model_timeline(store: AuditStore, model: str, version: str) -> list[TimelineStep]:
    """Everything recorded about `model` `version`, oldest first: the verdicts on the datasets it
    was built from, its build and artifact verdict, promotion requests, approvals and registry
    verdicts (promotion, demotion, rollback, recall)."""
    if not model or not version or ":" in model or ":" in version:
        raise InputError("a model version is a name and a version, neither empty nor holding ':'")
    own = list(subject_history(store, "model", f"{model}:{version}"))
    steps = [e for e in own if e.type != Subjects.PREDICTION_LOGGED]
    for dataset, dataset_version in _datasets(own)[:MAX_DATASETS]:
        if ":" in dataset or ":" in dataset_version:
            continue
        history = subject_history(store, "dataset", f"{dataset}:{dataset_version}")
        steps += [e for e in history if e.type == Subjects.VERDICT_DATASET]
    steps.sort(key=lambda e: (e.time, e.seq))
    return [_step(e) for e in steps]
