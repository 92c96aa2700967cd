"""Sensitivity-level access policy for datasets: who may upload and who may read, default deny.

A policy maps each `Sensitivity` level to the roles allowed to upload and to read data of that
level, and principals to roles. Anything not granted is denied: an unknown principal, a level the
policy does not mention, a role with no grant. Confidential and restricted data additionally
need an explicit allow-list of readers on the upload (least privilege, DESIGN.md principle 5);
when an upload carries an allow-list, only the principals on it may read, whatever the level.
The same file may pin reference digests per dataset (`pinned_references`): the only references
data-guard uses besides those it judged pass itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import MlwardenError
from shared.events import DatasetUploaded, Finding, Name, Sensitivity, Severity, Sha256Hex


class PolicyError(MlwardenError, ValueError):
    """A policy document that cannot be used (bad YAML, unknown level, wrong shape)."""

    def __init__(self, reason: str, *, source: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.source = source


class LevelGrant(BaseModel):
    """The roles allowed to upload and to read data of one sensitivity level."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    upload: frozenset[str] = Field(default=frozenset(), description="roles that may upload")
    read: frozenset[str] = Field(default=frozenset(), description="roles that may read")


class AccessPolicy(BaseModel):
    """Per-level grants, principals' roles, and the levels that need an explicit allow-list."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    levels: dict[Sensitivity, LevelGrant] = Field(
        default_factory=dict, description="grants per level; a missing level grants nothing"
    )
    principals: dict[str, frozenset[str]] = Field(
        default_factory=dict, description="principal -> roles; an unknown principal has none"
    )
    allow_list_required: frozenset[Sensitivity] = Field(
        default=frozenset({Sensitivity.CONFIDENTIAL, Sensitivity.RESTRICTED}),
        description="levels whose uploads must name their readers",
    )
    approval_required: frozenset[Sensitivity] = Field(
        default=frozenset({Sensitivity.CONFIDENTIAL, Sensitivity.RESTRICTED}),
        description="levels whose reads need at least one approval",
    )
    mfa_required: frozenset[Sensitivity] = Field(
        default=frozenset({Sensitivity.RESTRICTED}), description="levels whose reads need an MFA assertion"
    )
    approver_roles: frozenset[str] = Field(
        default=frozenset({"data-steward"}), description="roles whose signed approval of a read counts"
    )
    mfa_roles: frozenset[str] = Field(
        default=frozenset({"identity-provider"}), description="roles whose signed MFA assertion counts"
    )
    pinned_references: dict[Name, frozenset[Sha256Hex]] = Field(
        default_factory=dict,
        description="dataset -> sha256 digests trusted as its reference without a pass from data-guard"
        " (any other reference must be one data-guard judged pass)",
    )

    def pinned_for(self, dataset: str) -> frozenset[str]:
        """The reference digests the policy pins for `dataset`."""
        return self.pinned_references.get(dataset, frozenset())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "") -> AccessPolicy:
        """Validate a parsed policy document (see `DEFAULT_POLICY_YAML` for the shape)."""
        try:
            return cls.model_validate(dict(data))
        except (ValidationError, TypeError) as exc:
            raise PolicyError(f"invalid access policy: {exc}", source=source) from exc

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "") -> AccessPolicy:
        """Parse a YAML policy (safe loader only: a policy file must not construct objects)."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PolicyError(f"policy is not valid YAML: {exc}", source=source) from exc
        if not isinstance(data, Mapping):
            raise PolicyError("policy YAML must be a mapping", source=source)
        return cls.from_dict(data, source=source)

    @classmethod
    def from_file(cls, path: Path) -> AccessPolicy:
        """Read a YAML policy file."""
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"cannot read policy file: {exc}", source=str(path)) from exc
        return cls.from_yaml(text, source=str(path))

    def with_roles(self, extra: Mapping[str, frozenset[str]]) -> AccessPolicy:
        """This policy with more role assignments (the root-signed trust store's) added."""
        merged = dict(self.principals)
        for principal, roles in extra.items():
            merged[principal] = merged.get(principal, frozenset()) | roles
        return self.model_copy(update={"principals": merged})

    def roles_of(self, principal: str) -> frozenset[str]:
        """The principal's roles (empty when unknown)."""
        return self.principals.get(principal, frozenset())

    def may_upload(self, principal: str, level: Sensitivity) -> bool:
        """True when one of the principal's roles may upload data of `level`."""
        grant = self.levels.get(level)
        return grant is not None and bool(self.roles_of(principal) & grant.upload)

    def cleared_to_read(self, principal: str, level: Sensitivity) -> bool:
        """True when one of the principal's roles may read data of `level` (allow-lists aside)."""
        grant = self.levels.get(level)
        return grant is not None and bool(self.roles_of(principal) & grant.read)


@dataclass(frozen=True)
class AccessDecision:
    """Whether a read is allowed, and why, in one sentence."""

    allowed: bool
    reason: str


DEFAULT_POLICY_YAML = """\
# mlwarden demo access policy. Roles:
#   data-engineer: produces datasets of every level and may read them all
#   ml-engineer:   trains models: reads everything up to restricted (allow-list still applies)
#   analyst:       reads public and internal data only
#   auditor:       reads up to confidential for reviews; never restricted data
# Confidential and restricted uploads must name their readers (allowed_readers).
levels:
  public:       {upload: [data-engineer], read: [data-engineer, ml-engineer, analyst, auditor]}
  internal:     {upload: [data-engineer], read: [data-engineer, ml-engineer, analyst, auditor]}
  confidential: {upload: [data-engineer], read: [data-engineer, ml-engineer, auditor]}
  restricted:   {upload: [data-engineer], read: [data-engineer, ml-engineer]}
principals:
  alice: [data-engineer]
  bob: [ml-engineer]
  carol: [analyst]
  dave: [auditor]
  pipeline: [data-engineer]
allow_list_required: [confidential, restricted]
"""

DEFAULT_POLICY: AccessPolicy = AccessPolicy.from_yaml(DEFAULT_POLICY_YAML, source="default")
"""The demo policy above: four roles, five principals, allow-lists for confidential/restricted."""


def check_upload(upload: DatasetUploaded, policy: AccessPolicy) -> list[Finding]:
    """Policy findings for an upload: empty-handed uploader, missing allow-list, uncleared readers.

    Returns one `fail` finding per breach, or a single `info` finding when the upload complies.
    """
    level = upload.sensitivity
    findings: list[Finding] = []
    if not policy.may_upload(upload.uploader, level):
        roles = sorted(policy.roles_of(upload.uploader))
        findings.append(
            Finding(
                check="policy.uploader",
                severity=Severity.FAIL,
                message=f"{upload.uploader!r} may not upload {level.value} data",
                count=1,
                evidence={"uploader": upload.uploader, "roles": ",".join(roles), "level": level.value},
            )
        )
    if level in policy.allow_list_required and not upload.allowed_readers:
        findings.append(
            Finding(
                check="policy.allow_list",
                severity=Severity.FAIL,
                message=f"{level.value} data needs an explicit list of allowed readers",
                count=1,
                evidence={"level": level.value},
            )
        )
    uncleared = sorted({r for r in upload.allowed_readers if not policy.cleared_to_read(r, level)})
    if uncleared:
        findings.append(
            Finding(
                check="policy.readers",
                severity=Severity.FAIL,
                message=f"allowed readers not cleared for {level.value} data: {', '.join(uncleared)}",
                count=len(uncleared),
                evidence={"readers": ",".join(uncleared), "level": level.value},
            )
        )
    if not findings:
        findings.append(
            Finding(
                check="policy.access",
                severity=Severity.INFO,
                message=f"upload complies with the {level.value} access policy",
                evidence={"uploader": upload.uploader, "level": level.value},
            )
        )
    return findings


def check_read(
    principal: str,
    sensitivity: Sensitivity,
    allowed_readers: list[str] | None,
    policy: AccessPolicy,
) -> AccessDecision:
    """Decide one read: the principal's role must be cleared for the level, and it must be on
    the dataset's allow-list when there is one (always, for levels that require one)."""
    if not policy.cleared_to_read(principal, sensitivity):
        roles = ", ".join(sorted(policy.roles_of(principal))) or "no roles"
        return AccessDecision(False, f"{principal!r} ({roles}) is not cleared for {sensitivity.value} data")
    readers = allowed_readers or []
    if sensitivity in policy.allow_list_required and not readers:
        return AccessDecision(False, f"{sensitivity.value} data without an allow-list is readable by no one")
    if readers and principal not in readers:
        return AccessDecision(False, f"{principal!r} is not on the dataset's allow-list")
    return AccessDecision(True, f"{principal!r} is cleared for {sensitivity.value} data")
