"""Dataset access requests: who may read which dataset version, and reads that look like
exfiltration.

`decide_access` applies the sensitivity policy (`policy.AccessPolicy`) to one request, default
deny, and gives every reason: the principal's role must be cleared for the level and on the
dataset's allow-list; levels in `approval_required` need a signed approval by an actor holding
an approver role who is not the requester; levels in `mfa_required` need a signed MFA assertion
from the identity provider; a dataset data-guard never judged, or failed, is not readable at all
(quarantine). Approvals and MFA reach this module as `AccessEvidence`: verified signers only,
never a field the requester wrote.

`ReadVolumeMonitor` keeps, per principal, an exponentially weighted mean and variance of the log
of bytes read (West, "Updating mean and variance estimates", CACM 1979, in its exponentially
weighted form): constant state per principal, however many reads, and a read far above the
principal's own history is an anomaly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.data_guard.policy import AccessPolicy, check_read
from shared.events import DataAccessRequested, Decision, Sensitivity


@dataclass(frozen=True)
class DatasetRecord:
    """What data-guard knows about a dataset version it judged."""

    dataset: str
    version: str
    sensitivity: Sensitivity
    allowed_readers: tuple[str, ...]
    uploader: str
    decision: Decision
    sha256: str
    size: int = 0
    label_checked: bool = False


@dataclass(frozen=True)
class AccessEvidence:
    """What verified, signed events say about one request: who approved it, who asserted MFA."""

    approvers: frozenset[str] = frozenset()
    mfa_asserted_by: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AccessOutcome:
    """Allowed or not, with every reason (audited as an `AccessVerdict`)."""

    allowed: bool
    reasons: tuple[str, ...]


def decide_access(
    request: DataAccessRequested,
    record: DatasetRecord | None,
    policy: AccessPolicy,
    evidence: AccessEvidence = AccessEvidence(),
) -> AccessOutcome:
    """Decide one read request; deny unless every rule holds."""
    if record is None:
        return AccessOutcome(False, (f"unknown dataset {request.dataset}:{request.version}: nothing to read",))
    denied: list[str] = []
    level = record.sensitivity
    # (1) role clearance and allow-list
    read = check_read(request.principal, level, list(record.allowed_readers), policy)
    if not read.allowed:
        denied.append(read.reason)
    # (2) approvals: signed by an approver role, never by the requester to themself
    if level in policy.approval_required:
        valid = sorted(
            a for a in evidence.approvers if a != request.principal and policy.roles_of(a) & policy.approver_roles
        )
        if not valid:
            roles = ", ".join(sorted(policy.approver_roles))
            denied.append(f"{level.value} data needs a signed approval by another actor holding {roles}")
    # (3) MFA: asserted by the identity provider's signed event, not claimed by the requester
    if level in policy.mfa_required and not any(
        policy.roles_of(a) & policy.mfa_roles for a in evidence.mfa_asserted_by
    ):
        denied.append(f"{level.value} data needs multi-factor authentication asserted by the identity provider")
    # (4) quarantine: only data that passed (or warned) may be read
    if record.decision not in (Decision.PASS, Decision.WARN):
        denied.append(f"dataset verdict is {record.decision.value}: quarantined")
    if denied:
        return AccessOutcome(False, tuple(denied))
    return AccessOutcome(True, (read.reason, f"purpose: {request.purpose}"))


@dataclass
class VolumeState:
    """Per-principal running statistics of log(1 + bytes) per read."""

    reads: int = 0
    mean: float = 0.0
    var: float = 0.0


@dataclass(frozen=True)
class VolumeAnomaly:
    """A read whose volume is far above the principal's own history."""

    principal: str
    bytes: int
    z: float
    """standardised distance above the principal's mean, on the log scale."""
    typical_bytes: float
    """exp(mean) - 1: the principal's typical read."""
    reads: int
    """reads in the history before this one."""


class ReadVolumeMonitor:
    """Flags reads far above one principal's own history; O(1) state and time per principal."""

    def __init__(
        self, *, alpha: float = 0.1, z_threshold: float = 4.0, min_reads: int = 5, min_std: float = 0.5
    ) -> None:
        if not 0 < alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        self.alpha = alpha
        self.z_threshold = z_threshold
        self.min_reads = min_reads
        # log-scale floor: a principal who always reads the same size must still not alarm on 1.5x
        self.min_std = min_std
        self.states: dict[str, VolumeState] = {}

    def observe(self, principal: str, size: int) -> VolumeAnomaly | None:
        """Record one read of `size` bytes; return an anomaly when it stands out."""
        state = self.states.setdefault(principal, VolumeState())
        x = math.log1p(max(size, 0))
        anomaly = None
        if state.reads >= self.min_reads:
            std = max(math.sqrt(state.var), self.min_std)
            z = (x - state.mean) / std
            if z > self.z_threshold:
                anomaly = VolumeAnomaly(principal, size, z, math.expm1(state.mean), state.reads)
        if anomaly is None:
            # An anomalous read is not learned from: a thief must not teach the baseline.
            if state.reads == 0:
                state.mean, state.var = x, 0.0
            else:
                diff = x - state.mean
                incr = self.alpha * diff
                state.mean += incr
                state.var = (1 - self.alpha) * (state.var + diff * incr)
            state.reads += 1
        return anomaly
