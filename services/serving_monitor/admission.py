"""The admission decision for `mlw.serving.admit`: authenticate, scope, rate-limit, validate.

The order is deliberate: the cheapest checks that need no trust come first, the rate limit runs
before input validation so that a flood of invalid requests still spends the client's budget, and
a model without a registered schema is denied (fail closed) rather than served unchecked.
"""

from __future__ import annotations

from enum import StrEnum

from services.serving_monitor.auth import ApiKeyStore
from services.serving_monitor.ratelimit import GcraLimiter
from services.serving_monitor.validation import SchemaRegistry
from shared.events import AdmitReply, AdmitRequest


class AdmitReason(StrEnum):
    """Reasons `Admission.decide` gives besides the authentication ones (see `AuthReason`)."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    REQUEST_TOO_LARGE = "request_too_large"
    UNKNOWN_MODEL = "unknown_model"
    INVALID_INPUTS = "invalid_inputs"


class Admission:
    """Combines the key store, the rate limiter and the schema registry into one decision."""

    def __init__(self, keys: ApiKeyStore, limiter: GcraLimiter, schemas: SchemaRegistry) -> None:
        self.keys = keys
        self.limiter = limiter
        self.schemas = schemas

    def decide(self, request: AdmitRequest, now: float) -> AdmitReply:
        """Allow or deny one request at time `now` (seconds on the limiter's clock)."""
        # (1) + (2): who is calling, and may this key call this model.
        auth = self.keys.authenticate(request.api_key, request.model)
        if not auth.ok or auth.client is None:
            return AdmitReply(allowed=False, reason=auth.reason.value, client=auth.client)
        client = auth.client

        # (3) the rate limit, per client (all of a client's keys share one budget) and charged per
        # row: a batch of 1000 rows is 1000 predictions, which is what an extraction attack needs.
        rows = len(request.inputs)
        rate = self.limiter.check(client, now, cost=rows)
        if not rate.allowed:
            if rate.retry_after is None:
                burst = self.limiter.limit_for(client).burst
                return AdmitReply(
                    allowed=False,
                    reason=AdmitReason.REQUEST_TOO_LARGE.value,
                    client=client,
                    problems=[f"{rows} rows exceed the client's burst of {burst:g}"],
                )
            return AdmitReply(
                allowed=False,
                reason=AdmitReason.RATE_LIMITED.value,
                client=client,
                retry_after=rate.retry_after,
            )

        # (4) the inputs, against the model's registered schema; no schema, no service.
        schema = self.schemas.get(request.model)
        if schema is None:
            return AdmitReply(allowed=False, reason=AdmitReason.UNKNOWN_MODEL.value, client=client)
        problems = schema.validate_rows(request.inputs)
        if problems:
            return AdmitReply(
                allowed=False,
                reason=AdmitReason.INVALID_INPUTS.value,
                client=client,
                problems=problems,
            )
        return AdmitReply(allowed=True, reason=AdmitReason.OK.value, client=client)
