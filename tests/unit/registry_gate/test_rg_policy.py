"""registry-gate policy: loading, rendering, and refusing policies that would disable a control."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from services.registry_gate.policy import (
    DEMO_ACTOR_ROLES,
    PolicyError,
    RegistryPolicy,
    load_policy,
    policy_for_actors,
    render_policy,
)
from shared.errors import SignatureError
from shared.signing import SigningKey


@pytest.fixture(scope="module")
def demo_keys() -> dict[str, SigningKey]:
    return {actor: SigningKey.generate(actor) for actor in DEMO_ACTOR_ROLES}


@pytest.fixture
def demo_yaml(demo_keys: dict[str, SigningKey]) -> str:
    return render_policy({a: (k.public_b64(), DEMO_ACTOR_ROLES[a]) for a, k in demo_keys.items()})


def as_dict(policy_yaml: str) -> dict[str, Any]:
    return RegistryPolicy.from_yaml(policy_yaml).model_dump(mode="json")


def test_rendered_demo_policy_reads_back_equal(demo_yaml: str, tmp_path: Path) -> None:
    path = tmp_path / "registry-policy.yaml"
    path.write_text(demo_yaml)
    policy = load_policy(path)
    assert policy == RegistryPolicy.from_yaml(policy.to_yaml())
    assert policy.roles_of("alice") == ("ml-engineer",)
    assert policy.roles_of("mallory") == ()
    assert policy.may_request("alice", "production")
    assert not policy.may_request("mallory", "production")
    assert policy.may_approve("bob", "production")
    assert not policy.may_approve("alice", "production")


def test_default_stages_enforce_two_person_rule_for_production() -> None:
    production = RegistryPolicy().stages["production"]
    assert production.approvals == 2
    assert production.request_roles == ("ml-engineer",)
    assert production.approver_roles == ("reviewer",)
    assert not production.accept_warn_datasets
    assert production.require_label_checks
    staging = RegistryPolicy().stages["staging"]
    assert staging.approvals == 1
    assert staging.accept_warn_datasets
    assert not staging.require_label_checks


def test_trust_store_verifies_only_the_actors_own_keys(demo_keys: dict[str, SigningKey], demo_yaml: str) -> None:
    trust = RegistryPolicy.from_yaml(demo_yaml).trust_store()
    assert trust.ids() == sorted(DEMO_ACTOR_ROLES)
    message = b"promote churn 3"
    trust.verify("alice", message, demo_keys["alice"].sign(message))
    with pytest.raises(SignatureError):
        trust.verify("alice", message, demo_keys["mallory"].sign(message))


def test_refuses_production_without_approvals(demo_yaml: str) -> None:
    data = as_dict(demo_yaml)
    data["stages"]["production"]["approvals"] = 0
    with pytest.raises(PolicyError) as info:
        RegistryPolicy.from_dict(data)
    assert any("two-person rule" in p for p in info.value.problems)


def test_staging_may_need_no_approvals(demo_yaml: str) -> None:
    data = as_dict(demo_yaml)
    data["stages"]["staging"]["approvals"] = 0
    assert RegistryPolicy.from_dict(data).stages["staging"].approvals == 0


def test_refuses_undeclared_roles(demo_yaml: str) -> None:
    actor_typo = as_dict(demo_yaml)
    actor_typo["actors"]["bob"]["roles"] = ["reviwer"]
    with pytest.raises(PolicyError, match="invalid registry policy") as info:
        RegistryPolicy.from_dict(actor_typo)
    assert any("undeclared role 'reviwer'" in p for p in info.value.problems)

    stage_typo = as_dict(demo_yaml)
    stage_typo["stages"]["production"]["approver_roles"] = ["admin"]
    with pytest.raises(PolicyError):
        RegistryPolicy.from_dict(stage_typo)

    declared = as_dict(demo_yaml)
    declared["roles"] = ["ml-engineer", "reviewer", "admin"]
    declared["stages"]["production"]["approver_roles"] = ["admin"]
    assert RegistryPolicy.from_dict(declared).stages["production"].approver_roles == ("admin",)


@pytest.mark.parametrize(
    "bad_key",
    [
        "not base64!",
        base64.b64encode(b"\x01" * 31).decode(),  # wrong length
        SigningKey.generate("x").public_pem().decode(),  # PEM: not the raw form
    ],
)
def test_refuses_malformed_public_keys(demo_yaml: str, bad_key: str) -> None:
    data = as_dict(demo_yaml)
    data["actors"]["bob"]["public_key"] = bad_key
    with pytest.raises(PolicyError) as info:
        RegistryPolicy.from_dict(data)
    assert any(p.startswith("actors.bob.public_key") for p in info.value.problems)


def test_refuses_one_key_for_two_actors(demo_keys: dict[str, SigningKey]) -> None:
    # One person holding two reviewer ids would satisfy the two-person rule alone.
    shared = demo_keys["bob"].public_b64()
    with pytest.raises(PolicyError) as info:
        policy_for_actors({"bob": (shared, ["reviewer"]), "bob2": (shared, ["reviewer"])})
    assert any("share one public key" in p for p in info.value.problems)


def test_refuses_unknown_fields(demo_yaml: str) -> None:
    data = as_dict(demo_yaml)
    data["stages"]["production"]["aproovals"] = 1
    with pytest.raises(PolicyError):
        RegistryPolicy.from_dict(data)
    data = as_dict(demo_yaml)
    data["actors"]["mallory"]["is_admin"] = True
    with pytest.raises(PolicyError):
        RegistryPolicy.from_dict(data)


def test_refuses_stage_nobody_can_request(demo_yaml: str) -> None:
    data = as_dict(demo_yaml)
    data["stages"]["staging"]["request_roles"] = []
    with pytest.raises(PolicyError):
        RegistryPolicy.from_dict(data)


def test_yaml_cannot_construct_python_objects() -> None:
    # A policy file must not be a way to run code in the gate (yaml.safe_load only).
    hostile = "actors: !!python/object/apply:os.system ['echo owned']\n"
    with pytest.raises(PolicyError, match="not valid YAML"):
        RegistryPolicy.from_yaml(hostile)


@pytest.mark.parametrize("text", ["- just\n- a list\n", "", "actors: [unclosed\n"])
def test_refuses_non_mapping_or_broken_yaml(text: str) -> None:
    with pytest.raises(PolicyError):
        RegistryPolicy.from_yaml(text)


def test_missing_policy_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "absent.yaml")
    assert info.value.path == str(tmp_path / "absent.yaml")


def test_stages_are_declared_by_name_in_order_with_their_own_rules(demo_yaml: str) -> None:
    data = as_dict(demo_yaml)
    data["stages"] = {
        "dev": {"approvals": 0, "request_ttl_s": 600},
        "staging": data["stages"]["staging"],
        "production": data["stages"]["production"],
    }
    policy = RegistryPolicy.from_dict(data)
    assert list(policy.stages) == ["dev", "staging", "production"]
    assert policy.stages["dev"].approvals == 0
    assert policy.stages["dev"].request_ttl_s == 600
    assert policy.may_request("alice", "dev")
    assert policy.stage("qa") is None
    assert not policy.may_request("alice", "qa")
    assert not policy.may_approve("bob", "qa")


def test_policy_file_without_stages_keeps_staging_and_production() -> None:
    policy = RegistryPolicy.from_yaml("roles: [ml-engineer, reviewer]\n")
    assert list(policy.stages) == ["staging", "production"]
    assert policy.stages["production"].approvals == 2


def test_every_stage_problem_is_listed_at_once(demo_yaml: str) -> None:
    data = as_dict(demo_yaml)
    data["stages"]["dev"] = {"approver_roles": ["ops"], "request_roles": ["intern"]}
    data["stages"]["production"]["approvals"] = 0
    data["stages"]["staging"]["request_ttl_s"] = -1
    with pytest.raises(PolicyError) as info:
        RegistryPolicy.from_dict(data)
    problems = " | ".join(info.value.problems)
    # A malformed field and the cross-field rules the rest breaks, all in one refusal.
    assert "request_ttl_s" in problems
    assert "undeclared role 'ops'" in problems
    assert "undeclared role 'intern'" in problems
    assert "two-person rule" in problems


def test_no_stages_is_refused(demo_yaml: str) -> None:
    data = as_dict(demo_yaml)
    data["stages"] = {}
    with pytest.raises(PolicyError) as info:
        RegistryPolicy.from_dict(data)
    assert any("no stages" in p for p in info.value.problems)
