"""serving-monitor's own knobs (`MLW_SERVING_*`), shared by the service and `mlwarden check traffic`."""

from __future__ import annotations

from enum import StrEnum

from pydantic_settings import BaseSettings, SettingsConfigDict


class FlagPolicy(StrEnum):
    """What admission does with a client the detectors flagged (`services.serving_monitor.flags`)."""

    DENY = "deny"
    SLOW = "slow"


class ServingSettings(BaseSettings):
    """serving-monitor's own knobs (`MLW_SERVING_*`)."""

    model_config = SettingsConfigDict(env_prefix="MLW_SERVING_", extra="ignore", frozen=True)

    rate_per_second: float = 20.0
    burst: float = 40.0
    abuse_volume_per_minute: float = 600.0
    abuse_invalid_rate: float = 0.2
    abuse_min_records: int = 20
    abuse_cooldown_s: float = 60.0
    denial_flush_s: float = 0.5
    ood_rate_floor: float = 0.1
    ood_alpha: float = 1e-4
    ood_min_records: int = 30
    detector_cooldown_s: float = 300.0
    # Issue 9: a client under a fail-level extraction or OOD alert is denied, or (`slow`) held
    # to this rate until an operator clears it (`mlwarden serving clear CLIENT`).
    flagged_policy: FlagPolicy = FlagPolicy.DENY
    flagged_rate_per_second: float = 0.2
    flagged_burst: float = 5.0
