"""Re-checking signed builds' locked dependencies when the OSV database changes (issue 11).

A build that passed last month may lock a version that an advisory published today affects.
artifact-signer keeps what it checked in its signed checks statement (the lock file's packages and
the vulnerabilities known then); after its OSV database is replaced it looks every locked
package up again, and for a build with a vulnerability it did not know, publishes a new signed
artifact verdict: `fail`, same root digest and bundles, one finding per new advisory. registry-gate
keeps the worse verdict and recalls the promoted version.

Pure: statements in (already verified), findings and verdicts out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from shared.events import ArtifactVerdict, DatasetRef, Decision, Finding, Frozen, Severity

from .dependencies import vulnerability_finding
from .lockfile import LockedPackage
from .osv import OsvDatabase, Vulnerability

#: The finding that says why a verdict was published again.
CHECK_RECHECK = "dependencies.recheck"
_DATASET_URI = "mlwarden:dataset/"


class BuildFacts(Frozen):
    """What a signed provenance statement says about one build."""

    model: str
    version: str
    builder: str
    datasets: list[DatasetRef] = Field(default_factory=list)


def newly_vulnerable(checks: Mapping[str, Any], database: OsvDatabase) -> list[Vulnerability]:
    """The vulnerabilities `database` knows in the packages a checks statement's predicate locked,
    minus those the statement already recorded (sorted by package, then id)."""
    deps = checks.get("dependencies")
    lock = deps.get("lock") if isinstance(deps, dict) else None
    if not isinstance(lock, dict):
        return []
    known = {
        (str(v.get("id")), str(v.get("package")), str(v.get("version")))
        for v in (deps or {}).get("vulnerabilities") or []
        if isinstance(v, dict)
    }
    found: list[Vulnerability] = []
    for raw in lock.get("packages") or []:
        if not isinstance(raw, dict):
            continue
        package = LockedPackage.model_validate(raw)
        if package.version is None:
            continue
        found += [
            v for v in database.lookup(package.name, package.version) if (v.id, v.package, v.version) not in known
        ]
    return sorted(found, key=lambda v: (v.package, v.id))


def build_facts(provenance: Mapping[str, Any]) -> BuildFacts:
    """Model, version, builder and training datasets from a verified SLSA provenance predicate
    (`attest.provenance_statement` wrote it)."""
    definition = provenance.get("buildDefinition") or {}
    params = definition.get("externalParameters") or {}
    datasets = []
    for dep in definition.get("resolvedDependencies") or []:
        uri = str(dep.get("uri", ""))
        digest = (dep.get("digest") or {}).get("sha256")
        if uri.startswith(_DATASET_URI) and isinstance(digest, str):
            name, _, version = uri.removeprefix(_DATASET_URI).rpartition("@")
            datasets.append(DatasetRef(dataset=name, version=version, sha256=digest))
    builder = ((provenance.get("runDetails") or {}).get("builder") or {}).get("id", "")
    return BuildFacts(
        model=str(params.get("model", "")),
        version=str(params.get("version", "")),
        builder=str(builder),
        datasets=datasets,
    )


def recheck_verdict(
    facts: BuildFacts,
    root_digest: str,
    new: list[Vulnerability],
    *,
    keys: Mapping[str, str],
    in_reply_to: str,
) -> ArtifactVerdict:
    """The `fail` verdict for a signed build whose locked dependencies have new advisories."""
    note = Finding(
        check=CHECK_RECHECK,
        severity=Severity.INFO,
        message=f"re-checked against an updated OSV database: {len(new)} new known vulnerabilit"
        + ("y" if len(new) == 1 else "ies"),
        count=len(new),
    )
    return ArtifactVerdict(
        model=facts.model,
        version=facts.version,
        root_digest=root_digest,
        decision=Decision.FAIL,
        findings=[*(vulnerability_finding(v) for v in new), note],
        manifest_key=keys.get("model"),
        datasets=facts.datasets,
        builder=facts.builder,
        in_reply_to=in_reply_to,
        provenance_key=keys.get("provenance"),
        checks_key=keys.get("checks"),
    )


def database_fingerprint(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """What changes when the OSV database at `path` is replaced: (files, total bytes, newest
    mtime in ns) of the zip, or of the folder's JSON records."""
    root = Path(path)
    files = [p for p in root.rglob("*.json") if p.is_file()] if root.is_dir() else [root]
    stats = [p.stat() for p in files if p.exists()]
    return len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
