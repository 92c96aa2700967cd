"""data-guard decides from what it judged, not from what it is told (issue 8).

Three rules, each a pure function over the records of earlier judgements:

- `reference_problem`: the reference that calibrates the detectors is never the uploader's free
  choice. Its digest must be one data-guard itself judged `pass` under every name it judged it
  (poison found under one name is poison under every name), with its label checks run when the
  upload's labels are to be checked against it, and the uploader must be allowed to read it; or the
  digest is pinned for the dataset in the policy file. Otherwise a poisoned reference makes the
  poison it carries look normal (measured: a 10 % label-flipped upload went from fail to pass).
- `equivocation`: a judged (dataset, version) is immutable. Other bytes, another sensitivity,
  another allow-list or another uploader under a judged version is refused, never recorded (it
  overwrote the access record and could downgrade restricted data to public); a new version is how
  data changes. The same again is a retry and is judged again, idempotently.
- `label_coverage`: an upload whose label checks did not run says so in its verdict, so that
  registry-gate can refuse to promote a model trained on it (a backdoor needs labels to be seen).
- `laundering`: bytes data-guard judged under one name keep that name's protection under every
  other name. An upload may point its `location` at any object (or copy the bytes): without this
  rule, restricted data re-announced as a public dataset with the uploader on its allow-list was
  decrypted, judged and recorded as readable by them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from services.data_guard.access import DatasetRecord
from services.data_guard.policy import AccessPolicy, check_read
from shared.events import DatasetUploaded, Decision, Finding, Sensitivity, Severity

#: The checks that need a label column, by the finding each one emits (see `detect.analyze`).
LABEL_CHECKS: Mapping[str, str] = {
    "label_noise.confident_learning": "label noise (confident learning)",
    "backdoor.trigger": "backdoor triggers",
    "duplicates.conflicting_labels": "label-conflicting duplicates",
}
#: Also label-dependent, but only with a reference: listed as skipped, not required to have run.
REFERENCE_LABEL_CHECKS: Mapping[str, str] = {
    "class_balance.tvd": "class balance against the reference",
    "duplicates.reference_copies": "relabelled copies of reference rows",
}


def label_coverage(label_column: str | None, findings: Iterable[Finding]) -> tuple[bool, Finding | None]:
    """Whether the label checks ran (each emits its finding), and a `checks.skipped` finding
    naming those that did not, when any did not."""
    seen = {f.check for f in findings}
    missing = [name for check, name in LABEL_CHECKS.items() if check not in seen]
    if not missing:
        return True, None
    why = "the upload names no label column" if label_column is None else "the labels could not be checked"
    skipped = missing + [name for check, name in REFERENCE_LABEL_CHECKS.items() if check not in seen]
    return False, Finding(
        check="checks.skipped",
        severity=Severity.INFO,
        message=f"{why}: {', '.join(skipped)} did not run; nothing here shows the labels are not poisoned,"
        " and registry-gate's default policy refuses production for a model trained on it",
        count=len(skipped),
        evidence={"label_checked": False, "skipped": ",".join(skipped)},
    )


def equivocation(record: DatasetRecord, upload: DatasetUploaded) -> list[str]:
    """What an upload of a judged (dataset, version) changes; empty for a faithful retry."""
    changed: list[str] = []
    if upload.sha256 != record.sha256:
        changed.append("bytes")
    if upload.sensitivity != record.sensitivity:
        changed.append("sensitivity")
    if sorted(set(upload.allowed_readers)) != sorted(set(record.allowed_readers)):
        changed.append("allowed readers")
    if upload.uploader != record.uploader:
        changed.append("uploader")
    return changed


def reference_problem(
    upload: DatasetUploaded,
    judged: Iterable[DatasetRecord],
    *,
    policy: AccessPolicy,
    pinned: frozenset[str] = frozenset(),
) -> str | None:
    """Why the upload's reference must not be used (None when it may).

    `judged` are data-guard's records of the reference's digest, under every name it judged it;
    `pinned` the digests the policy file pins for this dataset.
    """
    if upload.reference is None and upload.reference_sha256 is None:
        return None
    where = upload.reference.describe() if upload.reference is not None else "(no location)"
    sha = upload.reference_sha256
    if upload.reference is None or sha is None:
        return f"reference {where} needs both a location and its sha256; the sha256 is what data-guard trusts"
    name = f"reference {where} (sha256 {sha[:12]}…)"
    if sha in pinned:
        return None  # (1) the operator pinned it in the policy file: trusted as given
    records = list(judged)
    if not records:
        return f"{name} was never judged by data-guard and is not pinned in its policy"
    # (2) judged pass under every name: one fail anywhere is enough to distrust the bytes.
    worse = sorted({r.decision.value for r in records if r.decision is not Decision.PASS})
    if worse:
        return f"{name}: data-guard judged it {' and '.join(worse)}; only a reference it passed calibrates checks"
    # (3) its labels are trusted only if data-guard checked them.
    if upload.label_column is not None and not any(r.label_checked for r in records):
        return f"{name}: data-guard never checked its labels, so they cannot calibrate the label checks"
    # (4) judging against it reveals things about it (copies, drift): the uploader must be
    # allowed to read it, under at least one name (approvals aside: no bytes leave data-guard).
    readable = [check_read(upload.uploader, r.sensitivity, list(r.allowed_readers), policy) for r in records]
    if not any(d.allowed for d in readable):
        return f"{name}: {readable[0].reason}, so it may not serve as their reference"
    return None


#: Sensitivity levels from least to most protected (the enum's order).
_LEVELS: tuple[Sensitivity, ...] = tuple(Sensitivity)


def laundering(upload: DatasetUploaded, same_bytes: Iterable[DatasetRecord], *, policy: AccessPolicy) -> str | None:
    """Why these bytes may not be recorded under the upload's name and access metadata (None when
    they may): every earlier name of the same bytes must be at most as sensitive as the upload,
    and the uploader (unless it uploaded them before) and every allowed reader must be allowed
    to read each earlier name."""
    for earlier in same_bytes:
        if (earlier.dataset, earlier.version) == (upload.dataset, upload.version):
            continue
        name = f"{earlier.dataset}:{earlier.version}"
        if _LEVELS.index(upload.sensitivity) < _LEVELS.index(earlier.sensitivity):
            return (
                f"these bytes were judged as {earlier.sensitivity.value} data ({name});"
                f" they cannot be published again as {upload.sensitivity.value}"
            )
        who = set(upload.allowed_readers) | ({upload.uploader} if upload.uploader != earlier.uploader else set())
        for principal in sorted(who):
            if not check_read(principal, earlier.sensitivity, list(earlier.allowed_readers), policy).allowed:
                return f"{principal!r} may not read {name}, which holds these bytes"
    return None
