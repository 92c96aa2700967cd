"""Admission end to end over the pure domain: each attack on `mlw.serving.admit` is denied."""

from __future__ import annotations

import math

import pytest

from services.serving_monitor.admission import Admission, AdmitReason
from services.serving_monitor.auth import ApiKeyStore, AuthReason
from services.serving_monitor.ratelimit import GcraLimiter
from services.serving_monitor.validation import FeatureSchema, FeatureSpec, SchemaRegistry
from shared.events import AdmitRequest

GOOD_ROW: dict[str, float | None] = {"age": 40.0, "income": 1000.0}


class World:
    def __init__(self) -> None:
        self.keys = ApiKeyStore(ApiKeyStore.generate_pepper())
        self.limiter = GcraLimiter(rate_per_second=1.0, burst=5)
        schema = FeatureSchema(
            model="churn",
            features=[FeatureSpec(name="age", min=18, max=100), FeatureSpec(name="income", min=0)],
        )
        self.admission = Admission(self.keys, self.limiter, SchemaRegistry([schema]))
        self.key, _ = self.keys.issue("acme", ["churn", "pricing"])

    def ask(
        self,
        key: str | None = None,
        model: str = "churn",
        rows: list[dict[str, float | None]] | None = None,
        now: float = 0.0,
    ) -> tuple[bool, str, list[str], float | None, str | None]:
        request = AdmitRequest(api_key=key or self.key, model=model, inputs=rows or [GOOD_ROW])
        reply = self.admission.decide(request, now)
        return reply.allowed, reply.reason, reply.problems, reply.retry_after, reply.client


@pytest.fixture
def world() -> World:
    return World()


def test_good_request_is_allowed(world: World) -> None:
    assert world.ask() == (True, "ok", [], None, "acme")


def test_unauthenticated_calls_are_denied(world: World) -> None:
    assert world.ask(key="not-a-key")[:2] == (False, AuthReason.MALFORMED_KEY)
    assert world.ask(key=" ")[:2] == (False, AuthReason.MISSING_KEY)
    key_id = world.key.split("_")[1]
    assert world.ask(key=f"mlw_{key_id}_{'A' * 43}")[:2] == (False, AuthReason.BAD_SECRET)


def test_revoked_key_is_denied(world: World) -> None:
    world.keys.revoke(world.key.split("_")[1])
    assert world.ask()[:2] == (False, AuthReason.REVOKED)


def test_key_cannot_call_a_model_outside_its_scope(world: World) -> None:
    assert world.ask(model="fraud")[:2] == (False, AuthReason.SCOPE)


def test_model_without_registered_schema_is_denied(world: World) -> None:
    # "pricing" is in the key's scope but nobody registered its inputs: fail closed.
    assert world.ask(model="pricing")[:2] == (False, AdmitReason.UNKNOWN_MODEL)


@pytest.mark.parametrize(
    "row",
    [
        {"age": math.nan, "income": 1.0},
        {"age": math.inf, "income": 1.0},
        {"age": None, "income": 1.0},
        {"age": 400.0, "income": 1.0},
        {"age": 40.0, "income": 1.0, "is_admin": 1.0},
        {"age": 40.0},
    ],
)
def test_invalid_inputs_are_denied_with_problems(world: World, row: dict[str, float | None]) -> None:
    allowed, reason, problems, _, _ = world.ask(rows=[GOOD_ROW, row])
    assert (allowed, reason) == (False, AdmitReason.INVALID_INPUTS)
    assert len(problems) == 1
    assert problems[0].startswith("row 1:")


def test_burst_is_rate_limited_then_allowed_after_retry_after(world: World) -> None:
    for _ in range(5):
        assert world.ask(now=10.0)[0]
    allowed, reason, _, retry_after, _ = world.ask(now=10.0)
    assert (allowed, reason) == (False, AdmitReason.RATE_LIMITED)
    assert retry_after == pytest.approx(1.0)
    assert world.ask(now=11.0)[0]


def test_rows_are_charged_against_the_rate_limit(world: World) -> None:
    assert world.ask(rows=[GOOD_ROW] * 5, now=0.0)[0]
    assert world.ask(now=0.0)[1] == AdmitReason.RATE_LIMITED
    allowed, reason, problems, retry_after, _ = world.ask(rows=[GOOD_ROW] * 6, now=100.0)
    assert (allowed, reason, retry_after) == (False, AdmitReason.REQUEST_TOO_LARGE, None)
    assert problems == ["6 rows exceed the client's burst of 5"]


def test_invalid_requests_still_spend_the_budget(world: World) -> None:
    bad: list[dict[str, float | None]] = [{"age": math.nan, "income": 1.0}]
    for _ in range(5):
        assert world.ask(rows=bad, now=0.0)[1] == AdmitReason.INVALID_INPUTS
    assert world.ask(now=0.0)[1] == AdmitReason.RATE_LIMITED


def test_denied_authentication_does_not_spend_a_clients_budget(world: World) -> None:
    # Someone guessing at acme's key id must not be able to lock acme out.
    key_id = world.key.split("_")[1]
    for _ in range(50):
        world.ask(key=f"mlw_{key_id}_{'A' * 43}", now=0.0)
    assert world.ask(now=0.0)[0]


def test_clients_have_separate_budgets(world: World) -> None:
    other, _ = world.keys.issue("other", ["churn"])
    for _ in range(6):
        world.ask(now=0.0)
    assert world.ask(now=0.0)[1] == AdmitReason.RATE_LIMITED
    assert world.ask(key=other, now=0.0)[0]
