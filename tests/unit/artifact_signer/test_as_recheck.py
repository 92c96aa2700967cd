"""Re-checking signed builds after an OSV database update (issue 11): only advisories the checks
statement did not record make a new `fail` verdict, with the build's facts from its provenance."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from services.artifact_signer.attest import checks_statement, provenance_statement
from services.artifact_signer.dependencies import check_dependencies
from services.artifact_signer.osv import OsvDatabase
from services.artifact_signer.recheck import (
    CHECK_RECHECK,
    build_facts,
    database_fingerprint,
    newly_vulnerable,
    recheck_verdict,
)
from shared.events import DatasetRef, Decision

ROOT = hashlib.sha256(b"churn 1").hexdigest()
LOCK = (
    f"numpy==2.4.6 --hash=sha256:{hashlib.sha256(b'numpy').hexdigest()}\n"
    f"requests==2.0.0 --hash=sha256:{hashlib.sha256(b'requests').hexdigest()}\n"
).encode()
TRAIN = DatasetRef(dataset="train", version="1", sha256=hashlib.sha256(b"train").hexdigest())


def advisory(osv_id: str, package: str, fixed: str) -> dict[str, Any]:
    return {
        "id": osv_id,
        "aliases": [f"CVE-{osv_id}"],
        "summary": f"{package} is bad",
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": package},
                "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}],
            }
        ],
    }


def _db(*records: dict[str, Any]) -> OsvDatabase:
    database = OsvDatabase()
    for record in records:
        database.add(record)
    return database


def _checks(database: OsvDatabase | None) -> dict[str, Any]:
    deps = check_dependencies(LOCK, "requirements.txt", database)
    statement = checks_statement(
        name="churn", root_digest=ROOT, decision=deps.decision, scan={}, dependencies=deps.model_dump(mode="json")
    )
    predicate: dict[str, Any] = orjson.loads(orjson.dumps(statement))["predicate"]
    return predicate


def test_only_advisories_the_statement_did_not_record_are_new() -> None:
    old = advisory("GHSA-old", "requests", "2.1.0")
    new = advisory("GHSA-new", "numpy", "2.4.7")
    recorded = _checks(_db(old))  # built when only the requests advisory was known
    found = newly_vulnerable(recorded, _db(old, new))
    assert [(v.id, v.package, v.version, v.fixed) for v in found] == [("GHSA-new", "numpy", "2.4.6", ["2.4.7"])]
    assert newly_vulnerable(recorded, _db(old)) == []
    # A build checked without any database: every advisory is new.
    assert [v.id for v in newly_vulnerable(_checks(None), _db(old, new))] == ["GHSA-new", "GHSA-old"]
    # A version outside the range is not affected.
    assert newly_vulnerable(_checks(None), _db(advisory("GHSA-fixed", "numpy", "2.4.6"))) == []


def test_statement_without_a_lock_file_has_nothing_to_recheck() -> None:
    assert newly_vulnerable({"decision": "fail", "dependencies": None}, _db(advisory("X", "numpy", "9"))) == []


def test_recheck_verdict_fails_with_the_builds_own_facts() -> None:
    provenance = provenance_statement(
        name="churn",
        root_digest=ROOT,
        model="churn",
        version="1",
        builder="ci-bot",
        datasets=[TRAIN],
        dataset_decisions={TRAIN.sha256: Decision.PASS},
        started=datetime.now(UTC),
    )
    facts = build_facts(provenance["predicate"])
    assert (facts.model, facts.version, facts.builder, facts.datasets) == ("churn", "1", "ci-bot", [TRAIN])
    new = newly_vulnerable(_checks(None), _db(advisory("GHSA-new", "numpy", "2.4.7")))
    keys = {k: f"bundles/churn/1/{k}.sigstore.json" for k in ("model", "provenance", "checks")}
    verdict = recheck_verdict(facts, ROOT, new, keys=keys, in_reply_to="osv-recheck:x")
    assert verdict.decision is Decision.FAIL and verdict.root_digest == ROOT
    assert verdict.datasets == [TRAIN] and verdict.builder == "ci-bot"
    assert verdict.manifest_key == keys["model"] and verdict.checks_key == keys["checks"]
    assert [f.check for f in verdict.findings] == ["dependencies.vulnerable", CHECK_RECHECK]
    assert "GHSA-new" in verdict.findings[0].message


def test_fingerprint_changes_when_a_record_is_added(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_bytes(orjson.dumps(advisory("A", "numpy", "1")))
    before = database_fingerprint(tmp_path)
    assert database_fingerprint(tmp_path) == before
    (tmp_path / "b.json").write_bytes(orjson.dumps(advisory("B", "numpy", "1")))
    assert database_fingerprint(tmp_path) != before
