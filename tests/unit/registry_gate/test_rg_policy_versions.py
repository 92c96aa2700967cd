"""Registry policy versions (issue 11): the file is version 1, each signed change the next one or
a refusal listing every problem; the state keeps every version and decisions name theirs."""

from __future__ import annotations

import pytest
import yaml

from services.registry_gate.gate import ConflictingEvent, RegistryState, StageChange, closing_fact, evaluate
from services.registry_gate.policy import (
    FROM_FILE,
    AppliedPolicy,
    PolicyError,
    RegistryPolicy,
    change_policy,
    document_sha256,
    initial_policy,
    render_policy,
)
from shared.events import PromotionRequested

T0 = 1_800_000_000.0
FILE = render_policy({})


def _with(**production: object) -> str:
    data = yaml.safe_load(FILE)
    data["stages"]["production"].update(production)
    return yaml.safe_dump(data)


def _change(current: AppliedPolicy, document: str, *, expected: int | None = None) -> AppliedPolicy:
    return change_policy(
        current, document, signer="paula", request_id="chg-1", reason="tighten", expected_version=expected, at=T0 + 1
    )


def test_the_file_is_version_one_with_its_sha256() -> None:
    first = initial_policy(FILE, at=T0)
    assert (first.version, first.applied_by, first.request_id) == (1, FROM_FILE, None)
    assert first.sha256 == document_sha256(FILE)
    assert first.rules().version == 1 and first.in_force().version == 1


def test_a_valid_change_is_the_next_version_signed_by_its_verified_signer() -> None:
    first = initial_policy(FILE, at=T0)
    second = _change(first, _with(approvals=3), expected=1)
    assert (second.version, second.applied_by, second.request_id, second.reason) == (2, "paula", "chg-1", "tighten")
    assert second.rules().stages["production"].approvals == 3
    assert second.rules().version == 2
    assert _change(second, FILE).version == 3  # going back to the old rules is a new version too


def test_a_malformed_change_is_refused_with_every_problem() -> None:
    first = initial_policy(FILE, at=T0)
    data = yaml.safe_load(FILE)
    data["stages"]["production"].update(approvals=0, request_ttl_s=-5)
    data["stages"]["qa"] = {"approver_roles": ["reviwer"]}
    data["actors"] = {"mallory": {"public_key": "not a key", "roles": ["reviewer"]}}
    data["bogus"] = True
    with pytest.raises(PolicyError) as info:
        _change(first, yaml.safe_dump(data), expected=7)
    problems = " | ".join(info.value.problems)
    for expected in (
        "expected_version",  # a stale change
        "a published policy names no actors",  # roles come from the trust store
        "actors.mallory.public_key",  # field errors ...
        "stages.production.request_ttl_s",
        "bogus",
        "undeclared role 'reviwer'",  # ... and the cross-field rules, at once
        "two-person rule",
    ):
        assert expected in problems, (expected, problems)


@pytest.mark.parametrize(("document", "why"), [("{roles: [", "not valid YAML"), ("- a list", "YAML mapping")])
def test_a_document_that_is_no_policy_is_refused(document: str, why: str) -> None:
    with pytest.raises(PolicyError) as info:
        _change(initial_policy(FILE, at=T0), document)
    assert any(why in p for p in info.value.problems)


def test_a_version_is_never_rewritten_and_the_highest_is_in_force() -> None:
    state = RegistryState()
    first = initial_policy(FILE, at=T0)
    second = _change(first, _with(approvals=3))
    state.record_policy(second)
    state.record_policy(first)  # replay order does not matter
    state.record_policy(second)  # a redelivery is a no-op
    assert state.policy() == second and state.policy_applied_by("chg-1") == second
    rival = change_policy(first, FILE, signer="mallory", request_id="chg-2", reason="x", expected_version=None, at=T0)
    with pytest.raises(ConflictingEvent):
        state.record_policy(rival)
    assert RegistryState.from_dict(state.to_dict()).policies() == [first, second]


def test_decisions_and_stage_changes_name_the_policy_version() -> None:
    state = RegistryState()
    staging = RegistryPolicy.from_yaml(FILE).model_copy()
    # Staging needs one approval; with none it stays pending under version 4.
    body = PromotionRequested(model="m", version="1", stage="staging", requester="alice", root_digest="ab" * 32)
    state.record_request("r1", body, "alice", opened_at=T0)
    decision = evaluate("r1", state, staging.at_version(4), now=T0)
    assert decision.policy_version == 4 and decision.to_verdict(in_reply_to="r1").policy_version == 4
    done = decision.model_copy(update={"decision": "promoted"})
    change = closing_fact(done, state, T0)
    assert isinstance(change, StageChange) and change.policy_version == 4
    assert change.current().policy_version == 4


def test_a_malformed_roles_list_is_one_problem_not_one_per_role() -> None:
    with pytest.raises(PolicyError) as info:
        RegistryPolicy.from_dict({"roles": "reviewer"})
    assert [p.split(":")[0] for p in info.value.problems] == ["roles"]
