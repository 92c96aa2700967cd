"""Errors of the serving-monitor domain: all subclass `shared.errors.MlwardenError`."""

from __future__ import annotations

from shared.errors import MlwardenError


class ServingMonitorError(MlwardenError):
    """Base of every error the serving-monitor domain raises on purpose."""


class KeyStoreError(ServingMonitorError, ValueError):
    """An API key record that is unknown, malformed or fails its integrity check."""

    def __init__(self, reason: str, *, key_id: str | None = None) -> None:
        super().__init__(f"{reason} (key_id={key_id})" if key_id else reason)
        self.reason = reason
        self.key_id = key_id


class LimitConfigError(ServingMonitorError, ValueError):
    """A rate or burst that no limiter can enforce (zero, negative, non-finite)."""

    def __init__(self, reason: str, *, rate_per_second: float, burst: float) -> None:
        super().__init__(f"{reason} (rate_per_second={rate_per_second}, burst={burst})")
        self.reason = reason
        self.rate_per_second = rate_per_second
        self.burst = burst


class SchemaError(ServingMonitorError, ValueError):
    """A feature schema that cannot be built or loaded."""

    def __init__(self, reason: str, *, model: str | None = None, feature: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.model = model
        self.feature = feature


class ObservationError(ServingMonitorError, ValueError):
    """Counts handed to the abuse monitor that cannot be true (negative, invalid > records)."""

    def __init__(self, reason: str, *, client: str, records: int, invalid: int) -> None:
        super().__init__(f"{reason} (client={client}, records={records}, invalid={invalid})")
        self.reason = reason
        self.client = client
        self.records = records
        self.invalid = invalid


class ConfigError(ServingMonitorError, ValueError):
    """A parameter outside the range where the algorithm means anything."""

    def __init__(self, parameter: str, value: float, requirement: str) -> None:
        super().__init__(f"{parameter} must be {requirement}, got {value}")
        self.parameter = parameter
        self.value = value
        self.requirement = requirement
