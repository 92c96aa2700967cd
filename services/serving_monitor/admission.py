"""The admission decision for `mlw.serving.admit`: authenticate, scope, flags, rate-limit, validate.

The order is deliberate: the cheapest checks that need no trust come first, a client flagged by
the detectors (`flags.py`) is denied or slowed before it spends anything, the rate limit runs
before input validation so that a flood of invalid requests still spends the client's budget, and
a model without a registered schema is denied (fail closed) rather than served unchecked.
"""

from __future__ import annotations

from enum import StrEnum

from services.serving_monitor.auth import ApiKeyStore
from services.serving_monitor.flags import FlagTable
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
    """Combines the key store, the flags, the rate limiter and the schema registry into one decision.

    A flagged client is denied; with a `slow_limiter` (`FlagPolicy.SLOW`) it is slowed instead:
    it (or all the keys of a flagged owner, together) gets that limiter's budget on top of its own.
    """

    def __init__(
        self,
        keys: ApiKeyStore,
        limiter: GcraLimiter,
        schemas: SchemaRegistry,
        flags: FlagTable | None = None,
        *,
        slow_limiter: GcraLimiter | None = None,
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.schemas = schemas
        self.flags = flags if flags is not None else FlagTable()
        self.slow_limiter = slow_limiter

    def decide(self, request: AdmitRequest, now: float) -> AdmitReply:
        """Allow or deny one request at time `now` (seconds on the limiter's clock)."""
        # (1) + (2): who is calling, and may this key call this model.
        auth = self.keys.authenticate(request.api_key, request.model)
        if not auth.ok or auth.client is None:
            return AdmitReply(allowed=False, reason=auth.reason.value, client=auth.client)
        client = auth.client
        rows = len(request.inputs)

        # (2b) a client under a fail-level extraction or OOD alert (issue 9).
        flag = self.flags.for_client(client)
        if flag is not None:
            if self.slow_limiter is None:
                return AdmitReply(allowed=False, reason=flag.reason.value, client=client)
            # Keyed by the flag's subject: an owner's keys share one slow budget.
            slow = self.slow_limiter.check(flag.client, now, cost=rows)
            if not slow.allowed:
                return AdmitReply(allowed=False, reason=flag.reason.value, client=client, retry_after=slow.retry_after)

        # (3) the rate limit, per client (all of a client's keys share one budget) and charged per
        # row: a batch of 1000 rows is 1000 predictions, which is what an extraction attack needs.
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
