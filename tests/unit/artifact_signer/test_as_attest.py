"""Companion statements bound to the OMS root digest, and the model scan's SARIF log."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mlwarden.cli import main
from services.artifact_signer.attest import (
    CHECKS_PREDICATE,
    SLSA_PROVENANCE_V1,
    checks_statement,
    provenance_statement,
    verify_companion,
)
from services.artifact_signer.oms import BundleError, sign_model, sign_statement
from services.artifact_signer.sarif import scan_sarif
from services.artifact_signer.scanner import scan_path
from shared.events import DatasetRef, Decision

KEY = Ed25519PrivateKey.generate()


class Hostile:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def model(tmp_path: Path) -> tuple[str, str]:
    root = tmp_path / "model"
    root.mkdir()
    (root / "w.bin").write_bytes(b"weights")
    manifest, _ = sign_model(root, KEY)
    return manifest.name, manifest.root_digest


def provenance(name: str, root: str) -> dict[str, Any]:
    return provenance_statement(
        name=name,
        root_digest=root,
        model="churn",
        version="3",
        builder="ci@example",
        builder_isolation="ephemeral-vm",
        source_commit="0123abcd",
        lockfile_name="uv.lock",
        lockfile_sha256="b" * 64,
        datasets=[
            DatasetRef(dataset="customers", version="7", sha256="c" * 64),
            DatasetRef(dataset="extra", version="1", sha256="d" * 64),
        ],
        dataset_decisions={"c" * 64: Decision.PASS},
    )


def test_provenance_is_slsa_v1_about_the_same_root_digest(tmp_path: Path) -> None:
    name, root = model(tmp_path)
    predicate = verify_companion(
        sign_statement(provenance(name, root), KEY),
        KEY.public_key(),
        root_digest=root,
        predicate_type=SLSA_PROVENANCE_V1,
    )
    build = predicate["buildDefinition"]
    deps = build["resolvedDependencies"]
    assert {"name": "uv.lock", "digest": {"sha256": "b" * 64}} in deps
    datasets = {d["uri"]: d for d in deps if d.get("uri", "").startswith("mlwarden:dataset/")}
    assert datasets["mlwarden:dataset/customers@7"]["annotations"] == {"dataGuardDecision": "pass"}
    # A dataset without a known data-guard verdict is never recorded as passed.
    assert datasets["mlwarden:dataset/extra@1"]["annotations"] == {"dataGuardDecision": "unknown"}
    assert {"uri": "git+source", "digest": {"gitCommit": "0123abcd"}} in deps
    assert build["internalParameters"]["builderIsolation"] == "ephemeral-vm"
    assert predicate["runDetails"]["builder"]["id"] == "ci@example"


def test_a_statement_about_another_model_does_not_vouch_for_this_one(tmp_path: Path) -> None:
    name, root = model(tmp_path)
    other = sign_statement(provenance(name, "e" * 64), KEY)
    with pytest.raises(BundleError, match="another model"):
        verify_companion(other, KEY.public_key(), root_digest=root, predicate_type=SLSA_PROVENANCE_V1)


def test_checks_statement_cannot_pass_as_provenance_or_be_signed_by_another_key(tmp_path: Path) -> None:
    name, root = model(tmp_path)
    bundle = sign_statement(
        checks_statement(name=name, root_digest=root, decision=Decision.PASS, scan={"safe": True}, dependencies=None),
        KEY,
    )
    assert (
        verify_companion(bundle, KEY.public_key(), root_digest=root, predicate_type=CHECKS_PREDICATE)["decision"]
        == "pass"
    )
    with pytest.raises(BundleError, match="predicate type"):
        verify_companion(bundle, KEY.public_key(), root_digest=root, predicate_type=SLSA_PROVENANCE_V1)
    with pytest.raises(BundleError):
        verify_companion(
            bundle, Ed25519PrivateKey.generate().public_key(), root_digest=root, predicate_type=CHECKS_PREDICATE
        )


def test_scan_sarif_reports_the_hostile_file_as_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(pickle.dumps({"m": Hostile()}))
    (folder / "ok.pkl").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    log = scan_sarif(scan_path(folder))
    results = log["runs"][0]["results"]
    assert results and all(r["level"] == "error" for r in results)
    uris = {r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] for r in results}
    assert uris == {f"{folder.as_posix()}/model.pkl"}
    assert main(["scan", "model", str(folder), "--format", "sarif"]) == 1
    assert json.loads(capsys.readouterr().out)["runs"][0]["results"]
    assert main(["scan", "model", str(folder / "ok.pkl"), "--format", "sarif"]) == 0
    assert json.loads(capsys.readouterr().out)["runs"][0]["results"] == []
