"""data-guard's wiring: a dataset upload in, a signed `mlw.verdict.dataset` out.

The handler reads the bytes the event names, re-hashes them, applies the access policy and runs
`detect.analyze` (in a worker thread: it is numpy/scikit-learn work). Anything it cannot check
becomes a `fail` verdict that names the problem, never a crash.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from services.data_guard.detect import DatasetReport, DetectorSettings, analyze
from services.data_guard.loader import DatasetError, Table, load_table, sha256_hex
from services.data_guard.policy import DEFAULT_POLICY, AccessPolicy, check_upload
from shared.bus import ServiceRuntime
from shared.envelope import Envelope
from shared.events import DatasetUploaded, DatasetVerdict, Decision, Finding, Severity
from shared.service import ServiceApp
from shared.settings import Settings
from shared.storage import UnreadableReference, read_bytes
from shared.topology import Subjects

SERVICE = "data-guard"
log = logging.getLogger("mlwarden.data-guard")


class GuardSettings(BaseSettings):
    """data-guard's own knobs (`MLW_GUARD_*`)."""

    model_config = SettingsConfigDict(env_prefix="MLW_GUARD_", extra="ignore", frozen=True)

    policy_file: Path | None = None
    max_rows: int = 5_000_000


_RANK = {Decision.PASS: 0, Decision.WARN: 1, Decision.FAIL: 2, Decision.ERROR: 3}
_SEVERITY_DECISION = {Severity.INFO: Decision.PASS, Severity.WARN: Decision.WARN, Severity.FAIL: Decision.FAIL}


def combine(report_decision: Decision, extra: list[Finding]) -> Decision:
    """The worst of the detectors' decision and the policy findings."""
    decisions = [report_decision, *(_SEVERITY_DECISION[f.severity] for f in extra)]
    return max(decisions, key=lambda d: _RANK[d])


class Guard:
    """Reads, checks and judges one upload."""

    def __init__(self, runtime: ServiceRuntime, settings: Settings, cfg: GuardSettings, policy: AccessPolicy) -> None:
        self.runtime = runtime
        self.settings = settings
        self.cfg = cfg
        self.policy = policy
        self.detectors = DetectorSettings()

    async def _load(self, upload: DatasetUploaded, *, reference: bool) -> tuple[Table, str]:
        ref = upload.reference if reference else upload.location
        expected = upload.reference_sha256 if reference else upload.sha256
        assert ref is not None
        data = await read_bytes(
            self.runtime.js, ref, max_bytes=self.settings.max_dataset_bytes, roots=self.settings.readable_roots
        )
        digest = sha256_hex(data)
        if expected is not None and digest != expected:
            what = "reference" if reference else "dataset"
            raise DatasetError("hash_mismatch", f"{what} sha256 is {digest}, but the upload claims {expected}")
        table = await asyncio.to_thread(
            load_table,
            data,
            upload.format,
            upload.label_column,
            max_bytes=self.settings.max_dataset_bytes,
            max_rows=self.cfg.max_rows,
        )
        return table, digest

    async def judge(self, event: Envelope[DatasetUploaded]) -> DatasetVerdict:
        """The verdict on one upload."""
        upload = event.data
        policy_findings = check_upload(upload, self.policy)
        digest = ""
        try:
            table, digest = await self._load(upload, reference=False)
            reference = (await self._load(upload, reference=True))[0] if upload.reference else None
            report: DatasetReport = await asyncio.to_thread(analyze, table, reference, self.detectors)
        except (DatasetError, UnreadableReference) as exc:
            code = getattr(exc, "code", "unreadable")
            problem = Finding(check=f"input.{code}", severity=Severity.FAIL, message=str(exc))
            return self._verdict(event, digest, Decision.FAIL, [problem, *policy_findings], rows=0, flagged=0)
        findings = [*policy_findings, *report.findings]
        decision = combine(report.decision, policy_findings)
        return self._verdict(event, digest, decision, findings, rows=report.rows, flagged=len(report.flagged_rows))

    @staticmethod
    def _verdict(
        event: Envelope[DatasetUploaded],
        digest: str,
        decision: Decision,
        findings: list[Finding],
        *,
        rows: int,
        flagged: int,
    ) -> DatasetVerdict:
        upload = event.data
        return DatasetVerdict(
            dataset=upload.dataset,
            version=upload.version,
            sha256=digest,
            decision=decision,
            findings=findings,
            rows=rows,
            flagged_rows=flagged,
            uploader=upload.uploader,
            in_reply_to=event.id,
        )


def create_app(settings: Settings | None = None, cfg: GuardSettings | None = None) -> ServiceApp:
    """Build data-guard."""
    settings = settings or Settings()
    cfg = cfg or GuardSettings()
    svc = ServiceApp(SERVICE, settings)

    @svc.on_start
    async def start(runtime: ServiceRuntime) -> None:
        policy = AccessPolicy.from_file(cfg.policy_file) if cfg.policy_file else DEFAULT_POLICY
        svc.state["guard"] = Guard(runtime, settings, cfg, policy)

    async def on_dataset_uploaded(event: Envelope[DatasetUploaded]) -> None:
        """Check an uploaded dataset for poisoning and policy breaches; publish the verdict."""
        guard: Guard = svc.state["guard"]
        verdict = await guard.judge(event)
        await guard.runtime.emit(
            Subjects.VERDICT_DATASET,
            verdict,
            in_reply_to=event.id,
            about=f"dataset:{verdict.dataset}:{verdict.version}",
        )

    routes: dict[str, tuple[type[Any], Any]] = {Subjects.DATASET_UPLOADED: (DatasetUploaded, on_dataset_uploaded)}
    # Few at a time: each message is CPU work in a thread, two cores.
    svc.consume_routes("mlw.dataset.>", routes, batch=2, doc=on_dataset_uploaded.__doc__)
    return svc
