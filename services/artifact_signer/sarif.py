"""SARIF 2.1.0 logs for CI code scanning (GitHub, GitLab): model scans and dependency gates.

One run per log, tool `mlwarden`; one rule per check name; one result per finding that is
not informational, at the file it is about. Levels: fail -> `error`, warn -> `warning`
(OASIS SARIF 2.1.0, sections 3.27.10 `level` and 3.49 `reportingDescriptor`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Final

from shared.events import Finding, Severity

from .dependencies import DependencyReport
from .scanner import ScanReport

SARIF_SCHEMA: Final = "https://json.schemastore.org/sarif-2.1.0.json"
INFORMATION_URI: Final = "https://github.com/mlwarden/mlwarden"
_LEVELS: Final = {Severity.FAIL: "error", Severity.WARN: "warning", Severity.INFO: "note"}


def _log(results: list[dict[str, Any]], checks: Iterable[str]) -> dict[str, Any]:
    rules = [{"id": check, "shortDescription": {"text": check}} for check in sorted(set(checks))]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {"driver": {"name": "mlwarden", "informationUri": INFORMATION_URI, "rules": rules}},
                "results": results,
            }
        ],
    }


def _result(finding: Finding, uri: str) -> dict[str, Any]:
    result: dict[str, Any] = {
        "ruleId": finding.check,
        "level": _LEVELS[finding.severity],
        "message": {"text": finding.message},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": uri}}}],
    }
    line = finding.evidence.get("line")
    if isinstance(line, int) and line > 0:
        result["locations"][0]["physicalLocation"]["region"] = {"startLine": line}
    return result


def scan_sarif(report: ScanReport) -> dict[str, Any]:
    """The SARIF log of a model scan: one result per warning or failing finding, per file."""
    # Locations are relative to where the scan ran, as code-scanning services expect.
    base = PurePosixPath(Path(report.path).as_posix())
    single = len(report.files) == 1 and base.name == report.files[0].path and not Path(report.path).is_dir()
    pairs = [
        (f, str(base if single else base / scan.path))
        for scan in report.files
        for f in scan.findings
        if f.severity != Severity.INFO
    ]
    return _log([_result(f, path) for f, path in pairs], (f.check for f, _ in pairs))


def deps_sarif(report: DependencyReport, lockfile_uri: str) -> dict[str, Any]:
    """The SARIF log of the dependency gate, every result located in the lock file."""
    findings = [f for f in report.findings if f.severity != Severity.INFO]
    return _log([_result(f, lockfile_uri) for f in findings], (f.check for f in findings))
