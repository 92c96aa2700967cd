"""data-guard's wiring: dataset uploads and access requests in, signed verdicts out.

`mlw.dataset.uploaded`: read the bytes the event names, decrypt them in memory when they are
envelope-encrypted (required for confidential and restricted data), re-hash, apply the upload
policy and run `detect.analyze` (in a worker thread: numpy/scikit-learn work). Anything it cannot
check becomes a `fail` verdict that names the problem, never a crash. The judged version is
recorded once (in memory and in the state bucket, indexed by digest) for later access requests
and as a reference. What it judged decides what it accepts next (`judged.py`, issue 8): a
reference must be a digest it judged pass (or one pinned in its policy), a judged version is
immutable (other bytes or access metadata under it is equivocation: refused and alerted), and a
verdict says whether the label checks ran.

`mlw.dataset.access`: decide the read with `access.decide_access`, publish a signed
`mlw.verdict.access` (audited like every verdict), and alert when the principal's read volume is
anomalous against its own history.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any

import orjson
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.data_guard.access import AccessEvidence, DatasetRecord, ReadVolumeMonitor, decide_access
from services.data_guard.detect import DatasetReport, DetectorSettings, analyze
from services.data_guard.judged import equivocation, label_coverage, laundering, reference_problem
from services.data_guard.loader import (
    DEFAULT_MAX_CELLS,
    DEFAULT_MAX_COLUMNS,
    DatasetError,
    Table,
    load_table,
    sha256_hex,
)
from services.data_guard.policy import DEFAULT_POLICY, AccessPolicy, check_upload
from shared.bus import ServiceRuntime
from shared.crypto import DecryptionError, decrypt_object, is_encrypted, load_or_create_master_key
from shared.envelope import Envelope
from shared.errors import SignatureError
from shared.events import (
    AccessVerdict,
    DataAccessApproved,
    DataAccessRequested,
    DatasetUploaded,
    DatasetVerdict,
    Decision,
    Finding,
    Sensitivity,
    Severity,
)
from shared.service import ServiceApp
from shared.settings import Settings
from shared.storage import UnreadableReference, read_bytes
from shared.topology import STATE_BUCKET, Subjects

SERVICE = "data-guard"
log = logging.getLogger("mlwarden.data-guard")


class GuardSettings(BaseSettings):
    """data-guard's own knobs (`MLW_GUARD_*`)."""

    model_config = SettingsConfigDict(env_prefix="MLW_GUARD_", extra="ignore", frozen=True)

    policy_file: Path | None = None
    max_rows: int = Field(default=5_000_000, gt=0, description="rows read from an upload; more is a fail verdict")
    max_columns: int = Field(
        default=DEFAULT_MAX_COLUMNS, gt=0, le=DEFAULT_MAX_COLUMNS, description="columns read from an upload"
    )
    max_cells: int = Field(
        default=DEFAULT_MAX_CELLS,
        gt=0,
        description="rows x columns read, checked from the file's own metadata before decoding (issue 12)",
    )


#: Levels whose bytes must be stored envelope-encrypted (DESIGN.md principle 5).
ENCRYPTED_LEVELS = frozenset({Sensitivity.CONFIDENTIAL, Sensitivity.RESTRICTED})

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
        self.master_key = load_or_create_master_key(settings.keys_dir)
        self.records: dict[tuple[str, str], DatasetRecord] = {}
        self.volumes = ReadVolumeMonitor()
        self.approvals_lock = asyncio.Lock()

    async def _load(self, upload: DatasetUploaded, *, reference: bool) -> tuple[Table, str, bool]:
        ref = upload.reference if reference else upload.location
        expected = upload.reference_sha256 if reference else upload.sha256
        assert ref is not None
        data = await read_bytes(
            self.runtime.js, ref, max_bytes=self.settings.max_dataset_bytes, roots=self.settings.readable_roots
        )
        encrypted = is_encrypted(data)
        if encrypted:
            # Decrypted in memory only; a flipped bit anywhere fails the GCM tag -> fail verdict.
            data = decrypt_object(data, self.master_key, name=ref.describe())
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
            max_columns=self.cfg.max_columns,
            max_cells=self.cfg.max_cells,
        )
        return table, digest, encrypted

    async def handle_upload(self, event: Envelope[DatasetUploaded]) -> DatasetVerdict:
        """The verdict on one verified upload; a judged (dataset, version) is never judged anew
        with other bytes or access metadata (equivocation), and a first judgement is recorded."""
        upload = event.data
        recorded = await self.record(upload.dataset, upload.version)
        if recorded is not None and (changed := equivocation(recorded, upload)):
            return await self._equivocation(event, changed)
        verdict = await self.judge(event)
        if recorded is None and verdict.sha256:
            kept = await self.remember(upload, verdict)
            # Two uploads of one new version judged at once: the first recorded wins.
            if changed := equivocation(kept, upload):
                return await self._equivocation(event, changed)
        return verdict

    async def _equivocation(self, event: Envelope[DatasetUploaded], changed: list[str]) -> DatasetVerdict:
        upload = event.data
        what = f"{upload.dataset} version {upload.version}"
        message = (
            f"{what} was already judged with other {', '.join(changed)}; a judged version is immutable,"
            " publish a new version to change it"
        )
        await self.runtime.alert(
            "equivocation",
            Severity.FAIL,
            f"{upload.uploader} re-uploaded {message[len(what) + 1 :]}",
            in_reply_to=event.id,
            dataset=upload.dataset,
            version=upload.version,
            uploader=upload.uploader,
            changed=",".join(changed),
        )
        problem = Finding(
            check="integrity.equivocation",
            severity=Severity.FAIL,
            message=message,
            count=len(changed),
            evidence={"changed": ",".join(changed)},
        )
        # sha256 stays empty: nothing was read, and the judged bytes' verdict must not change.
        return self._verdict(event, "", Decision.FAIL, [problem], rows=0, flagged=0)

    async def _reference(self, upload: DatasetUploaded) -> Finding | None:
        """A `fail` finding naming the reference when it is not one data-guard may trust."""
        judged: list[DatasetRecord] = []
        if upload.reference_sha256 is not None:
            for dataset, version in await self._judged_names(upload.reference_sha256):
                found = await self.record(dataset, version)
                if found is not None and found.sha256 == upload.reference_sha256:
                    judged.append(found)
        policy = self.policy_now()
        problem = reference_problem(upload, judged, policy=policy, pinned=policy.pinned_for(upload.dataset))
        if problem is None:
            return None
        return Finding(
            check="reference.untrusted",
            severity=Severity.FAIL,
            message=problem,
            evidence={
                "reference": upload.reference.describe() if upload.reference else "",
                "sha256": upload.reference_sha256 or "",
            },
        )

    async def _laundering(self, event: Envelope[DatasetUploaded], digest: str) -> Finding | None:
        """A `fail` finding, and an alert, when these bytes were judged before under a name with
        stronger protection than the upload asks for (`judged.laundering`)."""
        same: list[DatasetRecord] = []
        for dataset, version in await self._judged_names(digest):
            found = await self.record(dataset, version)
            if found is not None and found.sha256 == digest:
                same.append(found)
        problem = laundering(event.data, same, policy=self.policy_now())
        if problem is None:
            return None
        await self.runtime.alert(
            "laundering",
            Severity.FAIL,
            f"{event.data.uploader} announced {event.data.dataset}:{event.data.version}: {problem}",
            in_reply_to=event.id,
            dataset=event.data.dataset,
            version=event.data.version,
            uploader=event.data.uploader,
        )
        return Finding(
            check="integrity.laundering", severity=Severity.FAIL, message=problem, evidence={"sha256": digest}
        )

    async def judge(self, event: Envelope[DatasetUploaded]) -> DatasetVerdict:
        """The verdict on one upload."""
        upload = event.data
        policy_findings = check_upload(upload, self.policy)
        untrusted = await self._reference(upload)
        if untrusted is not None:
            # Not judged at all (sha256 empty, nothing recorded): the uploader may retry the same
            # version with a trusted reference, or none.
            return self._verdict(event, "", Decision.FAIL, [untrusted, *policy_findings], rows=0, flagged=0)
        digest = ""
        try:
            table, digest, encrypted = await self._load(upload, reference=False)
            reference = (await self._load(upload, reference=True))[0] if upload.reference else None
            report: DatasetReport = await asyncio.to_thread(analyze, table, reference, self.detectors)
        except (DatasetError, UnreadableReference, DecryptionError) as exc:
            code = "decrypt_failed" if isinstance(exc, DecryptionError) else getattr(exc, "code", "unreadable")
            problem = Finding(check=f"input.{code}", severity=Severity.FAIL, message=str(exc))
            # Nothing was judged: no digest, so nothing is recorded.
            return self._verdict(event, "", Decision.FAIL, [problem, *policy_findings], rows=0, flagged=0)
        laundered = await self._laundering(event, digest)
        if laundered is not None:
            # Not recorded (sha256 empty): the bytes keep the protection they were judged under.
            return self._verdict(event, "", Decision.FAIL, [laundered, *policy_findings], rows=0, flagged=0)
        if upload.sensitivity in ENCRYPTED_LEVELS:
            policy_findings.append(
                Finding(
                    check="encryption.at_rest",
                    severity=Severity.INFO if encrypted else Severity.FAIL,
                    message=f"{upload.sensitivity.value} data is "
                    + (
                        "stored AES-GCM envelope-encrypted"
                        if encrypted
                        else "stored in plain text; it must be encrypted"
                    ),
                )
            )
        label_checked, skipped = label_coverage(upload.label_column, report.findings)
        coverage = [skipped] if skipped is not None else []
        findings = [*policy_findings, *report.findings, *coverage]
        decision = combine(report.decision, policy_findings)
        return self._verdict(
            event,
            digest,
            decision,
            findings,
            rows=report.rows,
            flagged=len(report.flagged_rows),
            label_checked=label_checked,
        )

    @staticmethod
    def _verdict(
        event: Envelope[DatasetUploaded],
        digest: str,
        decision: Decision,
        findings: list[Finding],
        *,
        rows: int,
        flagged: int,
        label_checked: bool = False,
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
            label_checked=label_checked,
        )

    async def remember(self, upload: DatasetUploaded, verdict: DatasetVerdict, size: int = 0) -> DatasetRecord:
        """Record a first judgement of a version (memory + the state bucket, for restarts and
        other replicas) and index it by digest; return the record that is kept, which is an
        earlier one when another judgement of this version was recorded first (never replaced)."""
        record = DatasetRecord(
            dataset=upload.dataset,
            version=upload.version,
            sensitivity=upload.sensitivity,
            allowed_readers=tuple(upload.allowed_readers),
            uploader=upload.uploader,
            decision=verdict.decision,
            sha256=verdict.sha256,
            size=size,
            label_checked=verdict.label_checked,
        )
        kv = await self.runtime.js.key_value(STATE_BUCKET)
        try:
            # create, not put: atomic on the server, so one version is recorded once.
            await kv.create(_record_key(upload.dataset, upload.version), _record_json(record))
        except KeyWrongLastSequenceError:
            self.records.pop((upload.dataset, upload.version), None)
            kept = await self.record(upload.dataset, upload.version)
            assert kept is not None  # the create failed because it exists (records are never deleted)
            return kept
        self.records[(upload.dataset, upload.version)] = record
        await self._index(record)
        return record

    async def _index(self, record: DatasetRecord) -> None:
        """Add (dataset, version) to the names judged with the record's digest (compare-and-set)."""
        kv = await self.runtime.js.key_value(STATE_BUCKET)
        key = _digest_key(record.sha256)
        name = [record.dataset, record.version]
        for _ in range(_CAS_ATTEMPTS):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                entry = None
            names: list[list[str]] = orjson.loads(entry.value) if entry is not None and entry.value else []
            if name in names:
                return
            value = orjson.dumps([*names, name])
            try:
                if entry is None:
                    await kv.create(key, value)
                else:
                    await kv.update(key, value, last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue  # another judgement of the same bytes got there first: read again
        raise RuntimeError(f"could not index digest {record.sha256} after {_CAS_ATTEMPTS} attempts")

    async def _judged_names(self, sha256: str) -> list[tuple[str, str]]:
        """Every (dataset, version) data-guard judged with these bytes."""
        raw = await self._kv_json(_digest_key(sha256)) or []
        return [(str(d), str(v)) for d, v in raw]

    async def record(self, dataset: str, version: str) -> DatasetRecord | None:
        """A judged version, from memory or the state bucket (None when never judged)."""
        found = self.records.get((dataset, version))
        if found is not None:
            return found
        kv = await self.runtime.js.key_value(STATE_BUCKET)
        try:
            entry = await kv.get(_record_key(dataset, version))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        raw = orjson.loads(entry.value)
        found = DatasetRecord(
            dataset=raw["dataset"],
            version=raw["version"],
            sensitivity=Sensitivity(raw["sensitivity"]),
            allowed_readers=tuple(raw["allowed_readers"]),
            uploader=raw["uploader"],
            decision=Decision(raw["decision"]),
            sha256=raw["sha256"],
            size=int(raw.get("size", 0)),
            label_checked=bool(raw.get("label_checked", False)),
        )
        self.records[(dataset, version)] = found
        return found

    def policy_now(self) -> AccessPolicy:
        """The access policy with the role assignments of the root-signed trust store added."""
        trust = self.runtime.trust
        return self.policy.with_roles({actor: trust.roles_of(actor) for actor in trust.ids()})

    async def _kv_json(self, key: str) -> Any:
        kv = await self.runtime.js.key_value(STATE_BUCKET)
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        return orjson.loads(entry.value) if entry.value else None

    async def _kv_put(self, key: str, value: Any) -> None:
        kv = await self.runtime.js.key_value(STATE_BUCKET)
        await kv.put(key, orjson.dumps(value))

    async def evidence(self, request_id: str) -> AccessEvidence:
        """The verified approvals and MFA assertions recorded for one access request."""
        raw = await self._kv_json(_approvals_key(request_id)) or []
        return AccessEvidence(
            approvers=frozenset(a["signer"] for a in raw if a["kind"] == "approval"),
            mfa_asserted_by=frozenset(a["signer"] for a in raw if a["kind"] == "mfa"),
        )

    async def remember_request(self, event: Envelope[DataAccessRequested]) -> None:
        """Keep a verified access request, so that an approval arriving later can decide it."""
        await self._kv_put(_request_key(event.id), event.data.model_dump(mode="json"))

    async def remember_approval(self, event: Envelope[DataAccessApproved], signer: str) -> DataAccessRequested | None:
        """Record a verified approval or MFA assertion; return the request it is for, if known."""
        async with self.approvals_lock:
            key = _approvals_key(event.data.request_id)
            raw: list[dict[str, str]] = await self._kv_json(key) or []
            if not any(a["event_id"] == event.id for a in raw):
                raw.append({"event_id": event.id, "signer": signer, "kind": event.data.kind})
                await self._kv_put(key, raw)
        found = await self._kv_json(_request_key(event.data.request_id))
        return DataAccessRequested.model_validate(found) if found is not None else None

    async def decide(self, request_id: str, request: DataAccessRequested, *, observe: bool = True) -> AccessVerdict:
        """The verdict on one access request; alerts on an anomalous read volume."""
        record = await self.record(request.dataset, request.version)
        outcome = decide_access(request, record, self.policy_now(), await self.evidence(request_id))
        verdict = AccessVerdict(
            principal=request.principal,
            dataset=request.dataset,
            version=request.version,
            purpose=request.purpose,
            allowed=outcome.allowed,
            reasons=list(outcome.reasons),
            sensitivity=record.sensitivity if record else None,
            in_reply_to=request_id,
        )
        if not observe:
            return verdict
        size = request.bytes_requested or (record.size if record else 0)
        anomaly = self.volumes.observe(request.principal, size)
        if anomaly is not None:
            await self.runtime.alert(
                "exfiltration.read_volume",
                Severity.WARN,
                f"{anomaly.principal} asked to read {anomaly.bytes} bytes, far above their usual "
                f"{anomaly.typical_bytes:.0f} (z {anomaly.z:.1f} over {anomaly.reads} reads)",
                in_reply_to=request_id,
                principal=anomaly.principal,
                bytes=anomaly.bytes,
                z=round(anomaly.z, 3),
                dataset=request.dataset,
            )
        return verdict


def _request_key(request_id: str) -> str:
    return "data-guard.access." + hashlib.sha256(request_id.encode()).hexdigest()[:40]


def _approvals_key(request_id: str) -> str:
    return "data-guard.approvals." + hashlib.sha256(request_id.encode()).hexdigest()[:40]


def refused_access(event: Envelope[DataAccessRequested], reason: str) -> AccessVerdict:
    """The signed denial of an access request whose signature does not hold."""
    request = event.data
    return AccessVerdict(
        principal="",  # nobody verified: the claimed principal is in the reason, not vouched for
        dataset=request.dataset,
        version=request.version,
        purpose=request.purpose,
        allowed=False,
        reasons=[f"request refused: {reason} (claimed principal {request.principal!r})"],
        in_reply_to=event.id,
    )


def refused_upload(event: Envelope[DatasetUploaded], reason: str) -> DatasetVerdict:
    """The signed rejection of an upload whose uploader signature does not hold: nothing is read
    and nothing is recorded (a forged upload must not replace what data-guard judged)."""
    upload = event.data
    problem = Finding(
        check="identity.uploader",
        severity=Severity.FAIL,
        message=f"upload refused: {reason}",
        evidence={"claimed_uploader": upload.uploader},
    )
    return DatasetVerdict(
        dataset=upload.dataset,
        version=upload.version,
        sha256="",
        decision=Decision.FAIL,
        findings=[problem],
        uploader="",  # nobody verified: the claim is in the finding, not vouched for
        in_reply_to=event.id,
    )


def _record_key(dataset: str, version: str) -> str:
    # KV keys allow few characters; versions allow any: key by a digest of both.
    return "data-guard.dataset." + hashlib.sha256(f"{dataset}\0{version}".encode()).hexdigest()[:40]


def _digest_key(sha256: str) -> str:
    # The names judged with one digest: how a reference is looked up by its sha256.
    return "data-guard.digest." + sha256


#: Compare-and-set attempts on the digest index before giving up (then the upload is retried).
_CAS_ATTEMPTS = 20


def _record_json(record: DatasetRecord) -> bytes:
    return orjson.dumps(
        {
            "dataset": record.dataset,
            "version": record.version,
            "sensitivity": record.sensitivity.value,
            "allowed_readers": list(record.allowed_readers),
            "uploader": record.uploader,
            "decision": record.decision.value,
            "sha256": record.sha256,
            "size": record.size,
            "label_checked": record.label_checked,
        }
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
        """Check an uploaded dataset, signed by its uploader, for poisoning and policy breaches;
        publish the verdict."""
        guard = svc.get("guard", Guard)
        try:
            await guard.runtime.verify_actor(event, event.data.uploader)
        except SignatureError as exc:
            verdict = refused_upload(event, exc.reason)
        else:
            verdict = await guard.handle_upload(event)
        await guard.runtime.emit(
            Subjects.VERDICT_DATASET,
            verdict,
            in_reply_to=event.id,
            about=f"dataset:{verdict.dataset}:{verdict.version}",
        )

    async def on_access_requested(event: Envelope[DataAccessRequested]) -> None:
        """Decide a dataset read, signed by its principal, by the sensitivity policy and the
        signed approvals; publish the signed access verdict."""
        guard = svc.get("guard", Guard)
        try:
            await guard.runtime.verify_actor(event, event.data.principal)
        except SignatureError as exc:
            verdict = refused_access(event, exc.reason)
        else:
            await guard.remember_request(event)
            verdict = await guard.decide(event.id, event.data)
        await guard.runtime.emit(
            Subjects.VERDICT_ACCESS,
            verdict,
            in_reply_to=event.id,
            about=f"dataset:{verdict.dataset}:{verdict.version}",
        )

    async def on_access_approved(event: Envelope[DataAccessApproved]) -> None:
        """A signed approval (or MFA assertion) of an access request: decide the request again."""
        guard = svc.get("guard", Guard)
        try:
            signer = await guard.runtime.verify_actor(event, event.data.approver)
        except SignatureError:
            return  # alerted by verify_actor; a forged approval counts for nothing
        request = await guard.remember_approval(event, signer)
        if request is None:
            return  # kept: it counts when the request it names arrives
        verdict = await guard.decide(event.data.request_id, request, observe=False)
        await guard.runtime.emit(
            Subjects.VERDICT_ACCESS,
            verdict,
            in_reply_to=event.id,
            about=f"dataset:{verdict.dataset}:{verdict.version}",
        )

    routes: dict[str, tuple[type[Any], Any]] = {
        Subjects.DATASET_UPLOADED: (DatasetUploaded, on_dataset_uploaded),
        Subjects.DATASET_ACCESS: (DataAccessRequested, on_access_requested),
        Subjects.DATASET_APPROVAL: (DataAccessApproved, on_access_approved),
    }
    # Few at a time: each message is CPU work in a thread, two cores.
    svc.consume_routes("mlw.dataset.>", routes, batch=2, doc=on_dataset_uploaded.__doc__)
    return svc
