"""The per-identity NATS permissions and the nats-server config rendered from them (no broker)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from mlwarden.cli import main
from mlwarden.nats_config import NatsConfigError, add_actor_identity, client_url, read_env, write_config
from services.registry_gate.app import JOURNAL_PREFIX
from services.serving_monitor.flags import FLAG_PREFIX, flag_key
from services.serving_monitor.keystore import PROFILE_PREFIX, SCHEMA_PREFIX
from shared.embedded import nats_server_binary
from shared.permissions import (
    ENDPOINTS,
    IDENTITIES,
    OPERATOR_STATE_PREFIXES,
    InvalidActorName,
    actor_permissions,
    all_permissions,
    may_publish,
    permissions_for,
    subject_matches,
)
from shared.settings import Settings
from shared.topology import CONSUMERS, SERVICES, STREAMS, TRUST_BUCKET, VERDICT_SIGNERS, Subjects


def test_subject_matching_follows_nats_wildcards() -> None:
    assert subject_matches("mlw.>", "mlw.verdict.dataset")
    assert not subject_matches("mlw.>", "mlw")
    assert subject_matches("$JS.API.CONSUMER.INFO.KV_x.*", "$JS.API.CONSUMER.INFO.KV_x.abc")
    assert not subject_matches("$JS.API.CONSUMER.INFO.KV_x.*", "$JS.API.CONSUMER.INFO.KV_x.a.b")
    assert subject_matches("mlw.serving.admit serving-monitor", "mlw.serving.admit")


@pytest.mark.parametrize("service", SERVICES)
def test_service_publishes_only_its_own_verdicts_alerts_and_dead_letters(service: str) -> None:
    perms = permissions_for(service)
    for subject, signer in VERDICT_SIGNERS.items():
        assert may_publish(perms, subject) == (signer == service), subject
    for other in SERVICES:
        assert may_publish(perms, Subjects.alert(other)) == (other == service)
        assert may_publish(perms, Subjects.deadletter(other)) == (other == service)
    assert may_publish(perms, Subjects.AUDIT_CHECKPOINTS) == (service == "audit-log")
    # Never an input event: a service cannot fake what producers said.
    assert not may_publish(perms, Subjects.DATASET_UPLOADED)
    assert not may_publish(perms, Subjects.PROMOTION_REQUESTED)


@pytest.mark.parametrize("service", SERVICES)
def test_service_cannot_touch_the_trust_store_streams_or_other_durables(service: str) -> None:
    perms = permissions_for(service)
    assert not may_publish(perms, f"$KV.{TRUST_BUCKET}.{service}")
    for spec in STREAMS:
        for verb in ("DELETE", "PURGE", "UPDATE", "CREATE"):
            assert not may_publish(perms, f"$JS.API.STREAM.{verb}.{spec.name}")
    for owner, specs in CONSUMERS.items():
        for spec in specs:
            fetch = f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"
            assert may_publish(perms, fetch) == (owner == service), fetch
            assert not may_publish(perms, f"$JS.API.CONSUMER.DELETE.{spec.stream}.{spec.durable}")
            assert not may_publish(perms, f"$JS.API.CONSUMER.DURABLE.CREATE.{spec.stream}.{spec.durable}")


def test_state_bucket_writes_are_scoped_to_each_owners_key_prefix() -> None:
    # The prefixes permissions.py grants are the ones the services and the CLI write.
    assert JOURNAL_PREFIX == "registry-gate."
    assert SCHEMA_PREFIX in OPERATOR_STATE_PREFIXES
    guard = permissions_for("data-guard")
    assert may_publish(guard, "$KV.mlw-state.data-guard.dataset.abc")
    assert not may_publish(guard, "$KV.mlw-state.registry-gate.request.abc")
    assert not may_publish(guard, f"$KV.mlw-state.{SCHEMA_PREFIX}churn")
    assert not may_publish(permissions_for("serving-monitor"), "$KV.mlw-apikeys.k1")


def test_serving_monitor_writes_its_flags_and_the_operator_clears_them_and_publishes_profiles() -> None:
    # Issue 9: flags raised by the detectors live in the state bucket; `mlwarden serving clear`
    # deletes them and `mlwarden serving fit-profile` publishes a profile.
    monitor, operator = permissions_for("serving-monitor"), permissions_for("operator")
    flag = f"$KV.mlw-state.{flag_key('thief')}"
    assert FLAG_PREFIX.startswith("serving-monitor.") and PROFILE_PREFIX in OPERATOR_STATE_PREFIXES
    assert may_publish(monitor, flag) and may_publish(operator, flag)
    assert may_publish(operator, f"$KV.mlw-state.{PROFILE_PREFIX}fraud")
    assert not may_publish(monitor, f"$KV.mlw-state.{PROFILE_PREFIX}fraud")
    assert not may_publish(monitor, f"$KV.mlw-state.{SCHEMA_PREFIX}fraud")
    assert not may_publish(operator, "$KV.mlw-state.registry-gate.request.abc")


def test_request_reply_endpoints_use_the_services_queue_group_and_responses() -> None:
    monitor = permissions_for("serving-monitor")
    assert "mlw.serving.admit serving-monitor" in monitor.subscribe
    assert monitor.allow_responses
    assert not may_publish(permissions_for("producer"), "_INBOX.anything")


def test_every_service_answers_its_own_health_request_and_may_ask_the_others() -> None:
    for service in SERVICES:
        permissions = permissions_for(service)
        assert f"{Subjects.health(service)} {service}" in permissions.subscribe
        assert permissions.allow_responses
        assert all(may_publish(permissions, Subjects.health(other)) for other in SERVICES)
    assert may_publish(permissions_for("operator"), Subjects.health("audit-log"))
    assert not may_publish(permissions_for("producer"), Subjects.health("audit-log"))


def test_producer_and_auditor_change_no_evidence() -> None:
    producer, auditor, operator = (permissions_for(n) for n in ("producer", "auditor", "operator"))
    for subject in ("mlw.dataset.uploaded", "mlw.model.built", "mlw.registry.approval", "mlw.prediction.logged"):
        assert may_publish(producer, subject)
    assert may_publish(producer, Subjects.SERVING_ADMIT)
    assert may_publish(producer, "$O.mlw-datasets.C.abc")
    # Uploaded models (issue 12) go to their own bucket: added, never purged; the signed
    # bundles in mlw-artifacts stay artifact-signer's alone.
    assert may_publish(producer, "$O.mlw-uploads.C.abc")
    assert not may_publish(producer, "$O.mlw-artifacts.C.abc")
    assert not may_publish(producer, "$O.mlw-artifacts.M.abc")
    assert not may_publish(producer, "mlw.verdict.dataset")
    assert not may_publish(producer, f"$KV.{TRUST_BUCKET}.data-guard")
    assert not may_publish(producer, "mlw.audit.query")
    assert may_publish(auditor, "mlw.audit.query")
    assert not any(may_publish(auditor, s) for s in ("mlw.dataset.uploaded", "$KV.mlw-trust.x", "$O.mlw-datasets.x"))
    assert may_publish(operator, f"$KV.{TRUST_BUCKET}.data-guard")
    assert not any(may_publish(operator, f"$JS.API.STREAM.{v}.MLW_VERDICTS") for v in ("DELETE", "PURGE"))


@pytest.mark.parametrize("identity", IDENTITIES)
def test_only_artifact_signer_may_purge_an_object_store(identity: str) -> None:
    # A purge's filter is in its payload: the right to purge some chunks is the right to purge all.
    for bucket in ("mlw-datasets", "mlw-artifacts"):
        for verb in ("PURGE", "DELETE", "MSG.DELETE"):
            allowed = may_publish(permissions_for(identity), f"$JS.API.STREAM.{verb}.OBJ_{bucket}")
            assert allowed == (identity == "artifact-signer" and verb == "PURGE" and bucket == "mlw-artifacts")


def test_every_identity_has_a_user_and_an_env_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", url="nats://a:4222,nats://b:4222")
    assert set(all_permissions()) == set(IDENTITIES) == set(config.env_files)
    guard = read_env(config.env_files["data-guard"])  # type: ignore[index]
    assert guard["MLW_DECLARE_TOPOLOGY"] == "false"
    assert guard["MLW_NATS_URL"].count("data-guard:") == 2
    assert "MLW_DECLARE_TOPOLOGY" not in read_env(config.env_files["operator"])  # type: ignore[index]
    assert len(set(config.passwords.values())) == len(IDENTITIES)
    for path in (config.server_conf, config.auth_conf, *config.env_files.values()):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(NatsConfigError, match="--force"):
        write_config(tmp_path / "cfg")


def test_generated_config_is_valid_for_nats_server(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg")
    check = subprocess.run(
        [nats_server_binary(), "-c", str(config.server_conf), "-t"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_client_url_refuses_what_is_not_a_url() -> None:
    assert client_url("tls://h:4222", "op", "p/w") == "tls://op:p%2Fw@h:4222"
    with pytest.raises(NatsConfigError):
        client_url("h:4222", "op", "pw")


def test_nats_config_command_writes_the_folder(tmp_path: Path) -> None:
    assert main(["nats-config", "--out", str(tmp_path / "cfg"), "--url", "nats://nats-1:4222"]) == 0
    assert (tmp_path / "cfg" / "auth.conf").exists()
    assert main(["nats-config", "--out", str(tmp_path / "cfg")]) == 2


def test_logs_see_the_nats_url_without_its_password() -> None:
    settings = Settings(nats_url="nats://data-guard:s3cr-t_x@n1:4222,nats://data-guard:s3cr-t_x@n2:4222")
    assert settings.nats_url_redacted == "nats://data-guard:***@n1:4222,nats://data-guard:***@n2:4222"
    assert Settings(nats_url="nats://n1:4222").nats_url_redacted == "nats://n1:4222"


def test_production_accepts_per_identity_passwords_in_the_url() -> None:
    db = "postgresql+psycopg://u@h/db"
    Settings(profile="production", nats_url="tls://data-guard:pw@h:4222", audit_db_url=db)
    with pytest.raises(ValueError, match="credentials"):  # pydantic wraps UnsafeSettings
        Settings(profile="production", nats_url="tls://h:4222", audit_db_url=db)


def test_each_identity_receives_replies_only_on_its_own_inbox() -> None:
    from shared.permissions import IDENTITIES, permissions_for

    for identity in IDENTITIES:
        subscribe = permissions_for(identity).subscribe
        assert f"_INBOX.{identity}.>" in subscribe
        assert "_INBOX.>" not in subscribe
    assert Settings(nats_url="nats://producer:pw@h:4222").inbox_prefix == "_INBOX.producer"
    assert Settings(nats_url="nats://h:4222").inbox_prefix == "_INBOX"


def test_request_reply_subjects_are_not_stored_and_every_durable_filter_meets_its_stream() -> None:
    # A stored request gets a JetStream publish ack as its reply and is dead-lettered by the
    # durable that reads it (issue 8: 200 status requests, 200 dead letters).
    for subject in ENDPOINT_SUBJECTS:
        assert not any(subject_matches(s, subject) for spec in STREAMS for s in spec.subjects), subject
    streams = {spec.name: spec.subjects for spec in STREAMS}
    for specs in CONSUMERS.values():
        for spec in specs:
            for wanted in spec.filter_subjects:
                assert any(subject_matches(wanted, s) or subject_matches(s, wanted) for s in streams[spec.stream])


ENDPOINT_SUBJECTS = [subject for subjects in ENDPOINTS.values() for subject in subjects]


def test_each_actor_gets_its_own_user_inbox_and_producer_rights(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", actors=["alice", "bob", "alice"])
    assert list(config.env_files)[-2:] == ["alice", "bob"]
    alice = read_env(config.env_files["alice"])  # type: ignore[index]
    assert Settings(nats_url=alice["MLW_NATS_URL"]).inbox_prefix == "_INBOX.alice"
    perms = actor_permissions("alice")
    assert perms.publish == permissions_for("producer").publish
    assert "_INBOX.alice.>" in perms.subscribe and not any("bob" in s or "producer" in s for s in perms.subscribe)
    check = subprocess.run(
        [nats_server_binary(), "-c", str(config.server_conf), "-t"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("name", ["operator", "data-guard", "a.b", "*", ">", "", "-x", "a b", "x" * 65])
def test_actor_names_are_one_token_and_no_builtin_identity(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidActorName):
        actor_permissions(name)
    with pytest.raises(InvalidActorName):
        write_config(tmp_path / "cfg", actors=[name])


def test_adding_an_actor_keeps_every_other_password(tmp_path: Path) -> None:
    config = write_config(tmp_path / "cfg", url="nats://a:4222,nats://b:4222", actors=["alice"])
    before = {path.name: path.read_text() for path in config.out_dir.glob("*.env")}
    env = add_actor_identity(config.out_dir, "carol")
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    assert (
        read_env(env)["MLW_NATS_URL"].startswith("nats://carol:") and ",nats://carol:" in read_env(env)["MLW_NATS_URL"]
    )
    assert {p.name: p.read_text() for p in config.out_dir.glob("*.env") if p.name != "carol.env"} == before
    auth = config.auth_conf.read_text()
    assert '"_INBOX.carol.>"' in auth and '"_INBOX.alice.>"' in auth
    assert all(password in auth for password in config.passwords.values())
    assert stat.S_IMODE(config.auth_conf.stat().st_mode) == 0o600
    # Again: nothing changes (no rotated password for carol either).
    carol = env.read_text()
    assert add_actor_identity(config.out_dir, "carol") == env and env.read_text() == carol
    check = subprocess.run(
        [nats_server_binary(), "-c", str(config.server_conf), "-t"], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    with pytest.raises(NatsConfigError, match="nats-config"):
        add_actor_identity(tmp_path / "empty", "dave")


def test_nats_config_command_adds_actors(tmp_path: Path) -> None:
    out = str(tmp_path / "cfg")
    assert main(["nats-config", "--out", out, "--actor", "alice"]) == 0
    assert main(["nats-config", "--out", out, "--add-actor", "bob"]) == 0
    assert {p.stem for p in (tmp_path / "cfg").glob("*.env")} >= {"alice", "bob", "producer"}
    assert main(["nats-config", "--out", out, "--add-actor", "a.b"]) == 2


def test_api_key_commands_refuse_what_they_cannot_do_before_connecting() -> None:
    assert main(["keys", "api-key", "revoke", "--nats", "nats://127.0.0.1:1"]) == 2  # no KEY_ID
    assert main(["keys", "api-key", "webapp", "extra", "--nats", "nats://127.0.0.1:1"]) == 2
    operator = permissions_for("operator")
    for verb in ("CONSUMER.CREATE.KV_mlw-apikeys", "STREAM.MSG.GET.KV_mlw-apikeys"):
        assert may_publish(operator, f"$JS.API.{verb}")
    assert not any(
        may_publish(permissions_for(i), "$KV.mlw-apikeys.0123456789abcdef") for i in IDENTITIES if i != "operator"
    )
