"""Dependency gate: offline OSV matching, the gate's decision, SARIF, and `mlwarden scan deps`."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from mlwarden.cli import main
from services.artifact_signer.dependencies import check_dependencies
from services.artifact_signer.osv import OSV_SOURCE, OsvDatabase
from services.artifact_signer.sarif import deps_sarif
from shared.errors import InputError
from shared.events import Decision

FIXTURE = Path(__file__).parents[2] / "fixtures" / "osv"
HASH = " --hash=sha256:" + hashlib.sha256(b"a").hexdigest()  # a real digest: placeholders are refused


@pytest.fixture(scope="module")
def db() -> OsvDatabase:
    return OsvDatabase.load(FIXTURE)


def ids(db: OsvDatabase, name: str, version: str) -> list[str]:
    return [v.id for v in db.lookup(name, version)]


@pytest.mark.parametrize(
    ("version", "affected"),
    [
        ("0.1", True),
        ("1.1.9", True),
        ("1.2.0", False),
        ("1.9", False),
        ("2.0", True),
        ("2.0.4", True),
        ("2.0.5", False),
    ],
)
def test_introduced_and_fixed_ranges_with_pep440_order(db: OsvDatabase, version: str, affected: bool) -> None:
    assert ids(db, "mlw-demo", version) == (["MLW-2099-1"] if affected else [])


@pytest.mark.parametrize(
    ("version", "affected"), [("2.9", False), ("3.0rc1", True), ("3.0", True), ("3.1", True), ("3.1.post1", False)]
)
def test_last_affected_is_included_and_names_are_normalized(db: OsvDatabase, version: str, affected: bool) -> None:
    assert ids(db, "mlw-demo-extra", version) == (["MLW-2099-2"] if affected else [])


def test_explicit_version_lists(db: OsvDatabase) -> None:
    assert ids(db, "mlw-listed", "0.9.1") == ["MLW-2099-3"]
    assert ids(db, "mlw-listed", "0.9.1.0") == ["MLW-2099-3"]  # the same PEP 440 version
    assert ids(db, "mlw-listed", "0.9.2") == []


def test_withdrawn_records_and_other_ecosystems_are_skipped(db: OsvDatabase) -> None:
    # MLW-2099-4 (withdrawn) and MLW-2099-5 (npm) both claim every mlw-demo version.
    assert ids(db, "mlw-demo", "1.5") == []
    assert db.skipped_withdrawn == 1


def test_report_carries_ids_aliases_and_fixed_versions(db: OsvDatabase) -> None:
    [vuln] = db.lookup("Requests", "2.30.0")
    assert vuln.id == "PYSEC-2023-74"
    assert vuln.aliases == ["CVE-2023-32681", "GHSA-j8r2-6x86-q33q"]
    assert vuln.fixed == ["2.31.0"]
    assert db.lookup("requests", "2.31.0") == []
    assert db.lookup("mlw-demo", "2.0.1")[0].fixed == ["1.2.0", "2.0.5"]


def test_zip_mirror_reads_like_the_folder(tmp_path: Path) -> None:
    archive = tmp_path / "all.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for record in (FIXTURE / "PyPI").glob("*.json"):
            zf.write(record, record.name)
    assert ids(OsvDatabase.load(archive), "requests", "2.28.0") == ["PYSEC-2023-74"]


def test_a_file_that_is_not_an_osv_record_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('["not a record"]')
    with pytest.raises(InputError):
        OsvDatabase.load(tmp_path)
    with pytest.raises(InputError):
        OsvDatabase.load(tmp_path / "missing")


def test_gate_fails_a_vulnerable_pinned_dependency(db: OsvDatabase) -> None:
    lock = f"requests==2.30.0{HASH}\nnumpy==2.1.0{HASH}\n".encode()
    report = check_dependencies(lock, "requirements.txt", db)
    assert report.decision == Decision.FAIL and report.osv_checked
    [finding] = [f for f in report.findings if f.check == "dependencies.vulnerable"]
    assert "PYSEC-2023-74" in finding.message and "CVE-2023-32681" in finding.message and "2.31.0" in finding.message


def test_gate_passes_clean_locks_and_says_when_osv_was_not_checked(db: OsvDatabase) -> None:
    lock = f"requests==2.31.0{HASH}\n".encode()
    assert check_dependencies(lock, "requirements.txt", db).decision == Decision.PASS
    unchecked = check_dependencies(lock, "requirements.txt", None)
    assert unchecked.decision == Decision.PASS and not unchecked.osv_checked
    assert any(f.check == "dependencies.osv" for f in unchecked.findings)


def test_uv_lock_and_pylock_packages_are_looked_up(db: OsvDatabase) -> None:
    uv_lock = f"""
version = 1
[[package]]
name = "requests"
version = "2.30.0"
source = {{ registry = "https://pypi.org/simple" }}
sdist = {{ url = "https://x/requests-2.30.0.tar.gz", hash = "sha256:{hashlib.sha256(b"b").hexdigest()}" }}
"""
    assert [v.id for v in check_dependencies(uv_lock.encode(), "uv.lock", db).vulnerabilities] == ["PYSEC-2023-74"]
    pylock = f"""
lock-version = "1.0"
created-by = "test"
[[packages]]
name = "mlw-listed"
version = "0.9.3"
[[packages.wheels]]
url = "https://x/mlw_listed-0.9.3-py3-none-any.whl"
hashes = {{ sha256 = "{hashlib.sha256(b"c").hexdigest()}" }}
"""
    assert [v.id for v in check_dependencies(pylock.encode(), "pylock.toml", db).vulnerabilities] == ["MLW-2099-3"]


def test_sarif_log_names_rules_and_locates_results_in_the_lock_file(db: OsvDatabase) -> None:
    lock = f"requests==2.30.0{HASH}\nflask>=2\n".encode()
    log = deps_sarif(check_dependencies(lock, "requirements.txt", db), "app/requirements.txt")
    assert log["version"] == "2.1.0"
    run = log["runs"][0]
    assert {r["id"] for r in run["tool"]["driver"]["rules"]} >= {"dependencies.vulnerable", "lockfile.unpinned"}
    levels = {r["ruleId"]: r["level"] for r in run["results"]}
    assert levels["dependencies.vulnerable"] == "error"
    unpinned = next(r for r in run["results"] if r["ruleId"] == "lockfile.unpinned")
    assert unpinned["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "app/requirements.txt"
    assert unpinned["locations"][0]["physicalLocation"]["region"] == {"startLine": 2}


def test_cli_scan_deps_exit_codes_and_formats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "requirements.txt"
    bad.write_text(f"requests==2.30.0{HASH}\n")
    assert main(["scan", "deps", str(bad), "--osv", str(FIXTURE), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["decision"] == "fail" and report["vulnerabilities"][0]["id"] == "PYSEC-2023-74"
    assert main(["scan", "deps", str(bad), "--osv", str(FIXTURE), "--format", "sarif"]) == 1
    assert json.loads(capsys.readouterr().out)["runs"][0]["results"][0]["ruleId"] == "dependencies.vulnerable"
    good = tmp_path / "ok.txt"
    good.write_text(f"requests==2.32.3{HASH}\n")
    assert main(["scan", "deps", str(good), "--osv", str(FIXTURE)]) == 0
    assert main(["scan", "deps", str(tmp_path / "missing.txt")]) == 2


# --- issue 12: no OSV database means "not checked", never "0 known vulnerabilities" -------------


def test_report_without_a_database_says_not_checked(db: OsvDatabase) -> None:
    lock = f"requests==2.31.0{HASH}\n".encode()
    unchecked = check_dependencies(lock, "requirements.txt", None)
    assert unchecked.vulnerability_summary == "not checked for known vulnerabilities"
    [note] = [f for f in unchecked.findings if f.check == "dependencies.osv"]
    assert "not checked for known vulnerabilities" in note.message and OSV_SOURCE in note.message
    assert check_dependencies(lock, "requirements.txt", db).vulnerability_summary == "0 known vulnerabilities"
    vulnerable = check_dependencies(f"requests==2.30.0{HASH}\n".encode(), "requirements.txt", db)
    assert vulnerable.vulnerability_summary == "1 known vulnerability"


def test_cli_text_report_without_osv_never_claims_zero_vulnerabilities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lock = tmp_path / "requirements.txt"
    lock.write_text(f"requests==2.30.0{HASH}\n")  # vulnerable, but no database to say so
    assert main(["scan", "deps", str(lock)]) == 0
    text = capsys.readouterr().out
    assert "not checked for known vulnerabilities" in text
    assert "0 known vulnerabilities" not in text
    assert main(["scan", "deps", str(lock), "--osv", str(FIXTURE)]) == 1
    assert "1 known vulnerability" in capsys.readouterr().out


def test_cli_help_says_where_the_osv_database_comes_from_and_how_to_refresh_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["scan", "deps", "--help"]) == 0
    text = capsys.readouterr().out
    assert OSV_SOURCE in text  # the same URL the domain module names
    assert "gs://osv-vulnerabilities" in text and "https://google.github.io/osv.dev/data/" in text
    assert "Refresh it" in text


def test_fake_hash_in_a_requirements_file_fails_the_cli(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.txt"
    lock.write_text("requests==2.31.0 --hash=sha256:" + "a" * 64 + "\n")  # the reported fake
    assert main(["scan", "deps", str(lock)]) == 1
