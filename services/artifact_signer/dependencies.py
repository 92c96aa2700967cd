"""The dependency gate: pinned and hashed (`lockfile`), and no known vulnerability (`osv`).

A vulnerable locked version fails the build, naming the OSV id, its aliases and the versions
that fix it. Without a database the gate still checks pinning and hashing and says, in an
info finding and in its summary, that the lock was "not checked for known vulnerabilities":
never "0 known vulnerabilities", which a reader takes for a clean result (issue 12).
"""

from __future__ import annotations

from pydantic import Field

from shared.events import Decision, Finding, Frozen, Severity

from .lockfile import LockReport, check_lockfile, decide
from .osv import OSV_SOURCE, OsvDatabase, Vulnerability

NOT_CHECKED = "not checked for known vulnerabilities"


class DependencyReport(Frozen):
    """The gate's result on one lock file: pinning, hashing and known vulnerabilities."""

    lock: LockReport
    vulnerabilities: list[Vulnerability] = Field(default_factory=list)
    osv_checked: bool = Field(description="an OSV database was consulted")
    decision: Decision
    findings: list[Finding] = Field(default_factory=list, description="the lock file's, then one per vulnerability")

    @property
    def vulnerability_summary(self) -> str:
        """`N known vulnerabilities` if an OSV database was consulted, else `NOT_CHECKED`."""
        if not self.osv_checked:
            return NOT_CHECKED
        count = len(self.vulnerabilities)
        return f"{count} known vulnerabilit{'y' if count == 1 else 'ies'}"


def vulnerability_finding(vuln: Vulnerability) -> Finding:
    """One failing finding for a vulnerable locked package."""
    fix = f"fixed in {', '.join(vuln.fixed)}" if vuln.fixed else "no fixed version known"
    aliases = f" ({', '.join(vuln.aliases)})" if vuln.aliases else ""
    return Finding(
        check="dependencies.vulnerable",
        severity=Severity.FAIL,
        message=f"{vuln.package}=={vuln.version}: {vuln.id}{aliases}, {fix}",
        count=1,
        evidence={
            "package": vuln.package,
            "version": vuln.version,
            "id": vuln.id,
            "aliases": ",".join(vuln.aliases),
            "fixed": ",".join(vuln.fixed),
        },
    )


def check_dependencies(content: bytes, filename: str, database: OsvDatabase | None = None) -> DependencyReport:
    """Run `lockfile.check_lockfile`, then look every pinned package up in `database`."""
    lock = check_lockfile(content, filename)
    findings = list(lock.findings)
    vulnerabilities: list[Vulnerability] = []
    if database is None:
        findings.append(
            Finding(
                check="dependencies.osv",
                severity=Severity.INFO,
                message=f"no OSV database given: {NOT_CHECKED} (get one from {OSV_SOURCE})",
            )
        )
    else:
        for package in lock.packages:
            if package.version is not None:
                vulnerabilities.extend(database.lookup(package.name, package.version))
        findings.extend(vulnerability_finding(v) for v in vulnerabilities)
    return DependencyReport(
        lock=lock,
        vulnerabilities=vulnerabilities,
        osv_checked=database is not None,
        decision=decide(findings),
        findings=findings,
    )
