"""The per-identity NATS permissions and the nats-server config rendered from them (no broker)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from mlwarden.cli import main
from mlwarden.nats_config import NatsConfigError, client_url, read_env, write_config
from services.registry_gate.app import JOURNAL_PREFIX
from services.serving_monitor.keystore import SCHEMA_PREFIX
from shared.embedded import nats_server_binary
from shared.permissions import (
    IDENTITIES,
    OPERATOR_STATE_PREFIXES,
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
    assert not may_publish(producer, "$O.mlw-artifacts.C.abc")
    assert not may_publish(producer, "mlw.verdict.dataset")
    assert not may_publish(producer, f"$KV.{TRUST_BUCKET}.data-guard")
    assert not may_publish(producer, "mlw.audit.query")
    assert may_publish(auditor, "mlw.audit.query")
    assert not any(may_publish(auditor, s) for s in ("mlw.dataset.uploaded", "$KV.mlw-trust.x", "$O.mlw-datasets.x"))
    assert may_publish(operator, f"$KV.{TRUST_BUCKET}.data-guard")
    assert not any(may_publish(operator, f"$JS.API.STREAM.{v}.MLW_VERDICTS") for v in ("DELETE", "PURGE"))


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
