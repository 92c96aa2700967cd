"""compose.yaml stays consistent with the CLI and the code, and gives each service only its own
secrets (issue 8): its private key; the pepper, the master key and the database URL only to the
one service that uses each; no shared keys volume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.serving_monitor.keystore import pepper_path
from shared.crypto import MASTER_KEY_FILE
from shared.settings import Settings
from shared.topology import SERVICES

COMPOSE = Path(__file__).resolve().parents[3] / "compose.yaml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())  # merge keys (`<<: *service`) resolved
    assert isinstance(loaded, dict)
    return loaded


def _container_settings(service: dict[str, Any]) -> Settings:
    return Settings(data_dir=Path(service["environment"]["MLW_DATA_DIR"]))


def _secrets(service: dict[str, Any]) -> dict[str, str]:
    """Secret name -> where it is mounted in the container."""
    mounted: dict[str, str] = {}
    for item in service.get("secrets", []):
        if isinstance(item, str):
            mounted[item] = f"/run/secrets/{item}"
        else:
            mounted[item["source"]] = item.get("target", f"/run/secrets/{item['source']}")
    return mounted


def _command(service: dict[str, Any]) -> str:
    command = service["command"]
    return command if isinstance(command, str) else " ".join(command)


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_runs_itself_with_its_own_nats_identity(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    assert f"mlwarden run {name}" in _command(service)
    assert service["env_file"] == f"./nats-secrets/{name}.env"
    # Each replica's own readiness, on the metrics port its environment sets.
    port = service["environment"]["MLW_METRICS_PORT"]
    assert Settings(metrics_port=port).metrics_port == 9460
    assert service["environment"]["MLW_METRICS_HOST"] == "0.0.0.0"
    assert service["healthcheck"]["test"][-1].endswith(f"urlopen('http://127.0.0.1:{port}/readyz', timeout=3)")


@pytest.mark.parametrize("name", SERVICES)
def test_each_service_mounts_only_its_own_private_key(compose: dict[str, Any], name: str) -> None:
    service = compose["services"][name]
    mounted = _secrets(service)
    keys = {secret for secret in mounted if secret.endswith("-key") and secret != "dataset-master-key"}
    assert keys == {f"{name}-key"}
    # Mounted where the service loads it from (shared.bus: keys_dir / f"{service}.pem").
    assert mounted[f"{name}-key"] == str(_container_settings(service).keys_dir / f"{name}.pem")
    assert compose["secrets"][f"{name}-key"]["file"].endswith(f"/keys/{name}.pem")


def test_shared_secrets_go_only_to_the_service_that_uses_each(compose: dict[str, Any]) -> None:
    holders: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        for secret in _secrets(service):
            holders.setdefault(secret, set()).add(name)
    assert holders["serving-pepper"] == {"serving-monitor"}
    assert holders["dataset-master-key"] == {"data-guard"}
    assert holders["audit-db-url"] == {"audit-log"}
    assert holders["postgres-password"] == {"postgres"}
    for name in SERVICES:  # the operator registers the service keys; nobody else holds them
        assert holders[f"{name}-key"] == {name, "operator"}
    assert set(holders) == set(compose["secrets"])
    monitor, guard = compose["services"]["serving-monitor"], compose["services"]["data-guard"]
    assert _secrets(monitor)["serving-pepper"] == str(pepper_path(_container_settings(monitor)))
    assert _secrets(guard)["dataset-master-key"] == str(_container_settings(guard).keys_dir / MASTER_KEY_FILE)
    assert "/run/secrets/audit-db-url" in _command(compose["services"]["audit-log"])


def test_no_shared_keys_volume_and_no_secret_in_the_environment(compose: dict[str, Any]) -> None:
    assert "keys" not in compose.get("volumes", {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            assert "/keys" not in volume.split(":", 2)[1], (name, volume)
        environment = service.get("environment", {})
        assert "MLW_AUDIT_DB_URL" not in environment, name
        assert "POSTGRES_PASSWORD" not in environment, name
        assert not any("postgresql" in str(value) for value in environment.values()), name
