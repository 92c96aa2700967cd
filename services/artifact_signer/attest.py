"""Companion statements about a signed model: SLSA-style provenance, and the check results.

Each is an in-toto Statement v1 whose subject is the same `{name, sha256: root digest}` as the
model's OMS bundle (`oms.ModelManifest.statement`), signed the same way (a Sigstore bundle v0.3
with a DSSE envelope, `oms.sign_statement`). A consumer that trusts the signer and holds the
root digest can therefore tie "what was built, from what, by whom" and "what the scans found"
to exactly the bytes the OMS bundle covers, without trusting the bus.

- provenance: SLSA Provenance v1 (https://slsa.dev/spec/v1.0/provenance): builder id and its
  isolation, the source commit, the lock file's digest and the training datasets' digests
  (with data-guard's decision on each when known) as resolved dependencies;
- checks: mlwarden's own predicate with the serialized-model scan and the dependency gate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from shared.events import DatasetRef, Decision

from .oms import STATEMENT_TYPE, BundleError, PublicKey, verify_statement

SLSA_PROVENANCE_V1: Final = "https://slsa.dev/provenance/v1"
CHECKS_PREDICATE: Final = "https://mlwarden.dev/attestations/checks/v1"
BUILD_TYPE: Final = "https://mlwarden.dev/model-build/v1"


def _subject(name: str, root_digest: str) -> list[dict[str, Any]]:
    return [{"name": name, "digest": {"sha256": root_digest}}]


def provenance_statement(
    *,
    name: str,
    root_digest: str,
    model: str,
    version: str,
    builder: str,
    builder_isolation: str | None = None,
    source_commit: str | None = None,
    lockfile_name: str | None = None,
    lockfile_sha256: str | None = None,
    datasets: Sequence[DatasetRef] = (),
    dataset_decisions: Mapping[str, Decision] | None = None,
    invocation_id: str | None = None,
    started: datetime | None = None,
    finished: datetime | None = None,
) -> dict[str, Any]:
    """SLSA Provenance v1 statement about the model with OMS subject (`name`, `root_digest`).

    `dataset_decisions` maps a dataset's sha256 to data-guard's decision on it; datasets it
    does not cover are recorded with decision `unknown` (never assumed to have passed).
    """
    decisions = dataset_decisions or {}
    dependencies: list[dict[str, Any]] = []
    if lockfile_sha256 is not None:
        dependencies.append({"name": lockfile_name or "lockfile", "digest": {"sha256": lockfile_sha256}})
    for ref in datasets:
        decision = decisions.get(ref.sha256)
        dependencies.append(
            {
                "uri": f"mlwarden:dataset/{ref.dataset}@{ref.version}",
                "digest": {"sha256": ref.sha256},
                "annotations": {"dataGuardDecision": decision.value if decision else "unknown"},
            }
        )
    if source_commit is not None:
        dependencies.append({"uri": "git+source", "digest": {"gitCommit": source_commit}})
    metadata: dict[str, Any] = {}
    if invocation_id is not None:
        metadata["invocationId"] = invocation_id
    if started is not None:
        metadata["startedOn"] = started.isoformat()
    if finished is not None:
        metadata["finishedOn"] = finished.isoformat()
    return {
        "_type": STATEMENT_TYPE,
        "subject": _subject(name, root_digest),
        "predicateType": SLSA_PROVENANCE_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"model": model, "version": version, "sourceCommit": source_commit},
                "internalParameters": {"builderIsolation": builder_isolation or "unspecified"},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {"builder": {"id": builder}, "metadata": metadata},
        },
    }


def checks_statement(
    *,
    name: str,
    root_digest: str,
    decision: Decision,
    scan: Mapping[str, Any],
    dependencies: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """mlwarden's checks statement: the scan report and the dependency report (their JSON)."""
    return {
        "_type": STATEMENT_TYPE,
        "subject": _subject(name, root_digest),
        "predicateType": CHECKS_PREDICATE,
        "predicate": {"decision": decision.value, "scan": dict(scan), "dependencies": dependencies},
    }


def verify_companion(bundle: bytes, public: PublicKey, *, root_digest: str, predicate_type: str) -> dict[str, Any]:
    """Verify a companion bundle and check it speaks about `root_digest`; return its predicate.

    Raises `BundleError` if the signature fails, the predicate type differs, or the subject is
    another model (a valid statement about other bytes must not vouch for these).
    """
    statement = verify_statement(bundle, public)
    if statement.get("predicateType") != predicate_type:
        raise BundleError(
            f"predicate type {statement.get('predicateType')!r}, expected {predicate_type}", step="statement"
        )
    subjects = statement.get("subject")
    digests = (
        [s.get("digest", {}).get("sha256") for s in subjects if isinstance(s, dict)]
        if isinstance(subjects, list)
        else []
    )
    if digests != [root_digest]:
        raise BundleError("the statement is about another model (subject digest differs)", step="statement")
    predicate = statement.get("predicate")
    if not isinstance(predicate, dict):
        raise BundleError("predicate is not an object", step="statement")
    return predicate
