"""audit-log's own settings (`MLW_AUDIT_*`), beside the shared `shared.settings.Settings`."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.audit_log.checkpoint import DEFAULT_ORIGIN, CheckpointPolicy
from shared.lease import LeaseTimings

#: File name of the local checkpoint mirror, in the data directory.
MIRROR_FILE = "audit-checkpoints.jsonl"


class AuditSettings(BaseSettings):
    """How often audit-log signs checkpoints, and under which origin."""

    model_config = SettingsConfigDict(env_prefix="MLW_AUDIT_", extra="ignore", frozen=True)

    checkpoint_every: int = Field(default=1000, ge=1, description="sign after this many new entries")
    checkpoint_interval_s: float = Field(default=5.0, gt=0, description="or this long after new entries arrived")
    origin: str = Field(default=DEFAULT_ORIGIN, description="the checkpoints' origin line (names this log)")
    lease_ttl_s: float = Field(
        default=10.0, gt=0, description="a standby takes the writer lease after this long without a renewal"
    )
    lease_renew_s: float = Field(default=2.0, gt=0, description="the writer renews its lease this often")

    @property
    def policy(self) -> CheckpointPolicy:
        """The checkpoint policy these settings describe."""
        return CheckpointPolicy(self.checkpoint_every, self.checkpoint_interval_s)

    @property
    def lease(self) -> LeaseTimings:
        """The writer lease's timings (`services.audit_log.app`, `shared.lease`)."""
        return LeaseTimings(ttl_s=self.lease_ttl_s, renew_s=self.lease_renew_s)


def mirror_path(data_dir: Path) -> Path:
    """Where audit-log mirrors its checkpoints under a data directory."""
    return data_dir / MIRROR_FILE
