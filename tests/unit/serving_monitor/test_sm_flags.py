"""Admission acts on detection (issue 9): fail-level extraction and OOD alerts flag a client, and
admission denies or slows it with the flag's reason."""

from __future__ import annotations

import pytest

from services.serving_monitor.abuse import KIND_VOLUME, AlertSpec
from services.serving_monitor.admission import Admission
from services.serving_monitor.auth import ApiKeyStore
from services.serving_monitor.extraction import KIND_BOUNDARY_WALK, KIND_EXTRACTION
from services.serving_monitor.flags import (
    FLAG_PREFIX,
    Flag,
    FlagReason,
    FlagTable,
    NotAClient,
    client_of_key,
    flag_from_alert,
    flag_key,
    replaces,
)
from services.serving_monitor.ood import KIND_OOD
from services.serving_monitor.ratelimit import GcraLimiter
from services.serving_monitor.validation import FeatureSchema, FeatureSpec, SchemaRegistry
from shared.events import AdmitRequest, Severity

ROW: dict[str, float | None] = {"age": 40.0}


def alert(kind: str, client: str = "thief", severity: Severity = Severity.FAIL) -> AlertSpec:
    return AlertSpec(kind=kind, severity=severity, message="m", client=client, model="churn")


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (KIND_EXTRACTION, FlagReason.SUSPECTED_EXTRACTION),
        (KIND_BOUNDARY_WALK, FlagReason.SUSPECTED_EXTRACTION),
        (KIND_OOD, FlagReason.OUT_OF_DISTRIBUTION),
    ],
)
def test_fail_level_detection_alerts_flag_their_client_with_a_reason(kind: str, reason: FlagReason) -> None:
    flag = flag_from_alert(alert(kind), now=5.0)
    assert flag is not None and (flag.client, flag.reason, flag.kind, flag.since) == ("thief", reason, kind, 5.0)


def test_extraction_outranks_ood_whatever_order_the_alerts_come_in() -> None:
    # A boundary walk that ends far out raises both; the flag (and admission's reason) must not
    # depend on which alert of a batch came last (a loaded CI run denied with the OOD reason).
    ood = flag_from_alert(alert(KIND_OOD), now=1.0)
    walk = flag_from_alert(alert(KIND_BOUNDARY_WALK), now=2.0)
    later_walk = flag_from_alert(alert(KIND_EXTRACTION), now=3.0)
    assert ood is not None and walk is not None and later_walk is not None
    assert replaces(ood, None) and replaces(walk, None)
    assert replaces(walk, ood)
    assert not replaces(ood, walk)
    assert not replaces(later_walk, walk)  # the first alert of a reason keeps its record
    for order in ([ood, walk], [walk, ood]):
        table = FlagTable()
        for flag in order:
            if replaces(flag, table.get(flag.client)):
                table.set(flag)
        kept = table.for_client("thief")
        assert kept is not None and kept.reason == FlagReason.SUSPECTED_EXTRACTION


def test_warnings_abuse_alerts_and_impossible_client_ids_flag_nobody() -> None:
    assert flag_from_alert(alert(KIND_EXTRACTION, severity=Severity.WARN), 0.0) is None
    assert flag_from_alert(alert(KIND_VOLUME), 0.0) is None
    assert flag_from_alert(alert(KIND_OOD, client="no spaces>"), 0.0) is None


def test_flag_keys_round_trip_for_clients_and_owners_and_refuse_wildcards() -> None:
    for client in ("webapp", "acme.k1", "acme.*"):
        key = flag_key(client)
        assert key.startswith(FLAG_PREFIX) and client_of_key(key) == client
    assert flag_key("acme.*") != flag_key("acme")
    for bad in ("*", "a b", "acme.k1.*", ">", ""):
        with pytest.raises(NotAClient):
            flag_key(bad)
    assert client_of_key("serving-monitor.other") is None


def test_an_owner_flag_covers_every_key_of_the_owner() -> None:
    table = FlagTable()
    table.set(Flag(client="acme.*", reason=FlagReason.SUSPECTED_EXTRACTION, kind="k", model="m", message="", since=0))
    assert table.for_client("acme.k1") is not None and table.for_client("acme.k2") is not None
    assert table.for_client("acme") is None and table.for_client("other.k1") is None
    table.remove("acme.*")
    assert table.for_client("acme.k1") is None and len(table) == 0


class World:
    def __init__(self, *, slow: bool) -> None:
        self.keys = ApiKeyStore(ApiKeyStore.generate_pepper())
        self.flags = FlagTable()
        schema = FeatureSchema(model="churn", features=[FeatureSpec(name="age", min=0, max=120)])
        self.admission = Admission(
            self.keys,
            GcraLimiter(rate_per_second=100.0, burst=100),
            SchemaRegistry([schema]),
            self.flags,
            slow_limiter=GcraLimiter(rate_per_second=1.0, burst=2) if slow else None,
        )
        self.thief, _ = self.keys.issue("thief", ["churn"])
        self.user, _ = self.keys.issue("user", ["churn"])

    def flag(self, client: str) -> None:
        flag = flag_from_alert(alert(KIND_EXTRACTION, client), 0.0)
        assert flag is not None
        self.flags.set(flag)

    def ask(self, key: str, now: float = 0.0) -> tuple[bool, str, float | None]:
        reply = self.admission.decide(AdmitRequest(api_key=key, model="churn", inputs=[ROW]), now)
        return reply.allowed, reply.reason, reply.retry_after


def test_a_flagged_client_is_denied_with_the_reason_and_others_are_not() -> None:
    world = World(slow=False)
    assert world.ask(world.thief)[0]
    world.flag("thief")
    assert world.ask(world.thief) == (False, "suspected_extraction", None)
    assert world.ask(world.user) == (True, "ok", None)
    world.flags.remove("thief")
    assert world.ask(world.thief) == (True, "ok", None)


def test_the_slow_policy_holds_a_flagged_client_to_the_slow_rate() -> None:
    world = World(slow=True)
    world.flag("thief")
    replies = [world.ask(world.thief, now=0.0) for _ in range(5)]
    assert [allowed for allowed, _, _ in replies] == [True, True, False, False, False]
    _, reason, retry_after = replies[-1]
    assert reason == "suspected_extraction" and retry_after is not None and retry_after > 0
    assert world.ask(world.thief, now=1.0)[0]  # one more slow token a second later
    assert all(world.ask(world.user)[0] for _ in range(5))
