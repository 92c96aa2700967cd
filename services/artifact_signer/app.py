"""artifact-signer's wiring: a model build in; hash and scan it (each file read once, issue 12),
check the dependencies, sign an OMS bundle and its companion statements, store them in `mlw-artifacts`, publish
`mlw.verdict.artifact` (root digest + object keys, never a bundle: a bundle of a large model can
exceed NATS's payload limit); `mlw.artifact.verify` re-hashes and verifies the bundle.

Hashing and scanning are file and CPU work: they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.artifact_signer.attest import (
    SLSA_PROVENANCE_V1,
    checks_statement,
    provenance_statement,
    verify_companion,
)
from services.artifact_signer.datasets import dataset_decisions
from services.artifact_signer.dependencies import DependencyReport, check_dependencies
from services.artifact_signer.hashing import UnsafePathError
from services.artifact_signer.intake import Inspection, inspect_model
from services.artifact_signer.oms import BundleError, sign_manifest, sign_statement, verify_model, verify_statement
from services.artifact_signer.osv import OsvDatabase
from services.artifact_signer.recheck import build_facts, database_fingerprint, newly_vulnerable, recheck_verdict
from services.artifact_signer.scanner import ScanReport
from services.artifact_signer.stored import check_against_index, fetch_model
from shared.aio import TASK_STOP_S, cancel_and_wait
from shared.bus import ServiceRuntime
from shared.envelope import Envelope
from shared.errors import InputError, SignatureError
from shared.events import (
    ArtifactVerdict,
    ArtifactVerifyReply,
    ArtifactVerifyRequest,
    Decision,
    Finding,
    ModelBuilt,
    ObjectRef,
    Severity,
    decision_from,
)
from shared.service import ServiceApp
from shared.settings import Settings
from shared.storage import UnreadableReference, confined_path, read_bytes
from shared.topology import ARTIFACTS_BUCKET, Subjects

SERVICE = "artifact-signer"
log = logging.getLogger("mlwarden.artifact-signer")
MAX_LOCKFILE_BYTES = 16 * 1024 * 1024


class SignerSettings(BaseSettings):
    """artifact-signer's own knobs (`MLW_ARTIFACT_*`)."""

    model_config = SettingsConfigDict(env_prefix="MLW_ARTIFACT_", extra="ignore", frozen=True)

    osv_db: Path | None = Field(default=None, description="offline OSV database: a folder or zip (see `osv`)")
    osv_reload_s: float = Field(
        default=300.0,
        ge=0,
        description="seconds between checks whether `osv_db` was replaced; when it was, it is reloaded and every"
        " signed build's locked dependencies are looked up again (issue 11; also once at start). 0: only at start",
    )


def bundle_key(model: str, version: str, kind: str = "model") -> str:
    """Object name of a signed statement in `mlw-artifacts`: kind `model` (the OMS bundle),
    `provenance` or `checks`, side by side."""
    return f"bundles/{model}/{version}/{kind}.sigstore.json"


def manifest_key(model: str, version: str) -> str:
    """Object name of the OMS bundle (the signed manifest) of a build."""
    return bundle_key(model, version)


def location_key(model: str, version: str) -> str:
    """Object name of where the artifact was when it was signed (not part of what is signed)."""
    return f"locations/{model}/{version}"


def artifact_decision(scan: ScanReport, deps: DependencyReport | None, extra: list[Finding]) -> Decision:
    """fail if anything failed, warn if anything warned, else pass."""
    return decision_from([*scan.findings, *(deps.findings if deps else []), *extra])


class Signer:
    """Hashes, scans and signs one build."""

    def __init__(self, runtime: ServiceRuntime, settings: Settings, osv: OsvDatabase | None = None) -> None:
        self.runtime = runtime
        self.settings = settings
        self.osv = osv
        #: root digest -> the new advisories already announced for it (by `recheck`)
        self.announced: dict[str, str] = {}

    async def _inspect(self, ref: ObjectRef, name: str) -> tuple[Inspection, str]:
        """Hash and scan the artifact once; also where it was (recorded beside the bundle).

        A file reference is read in place (confined to the readable roots); an uploaded model is
        first copied into a private folder, and its digests must match its index.
        """
        limit = self.settings.max_artifact_bytes
        if ref.kind == "file":
            root = confined_path(ref, self.settings.readable_roots)
            # One read per file: the digest signed and the scan come from the same bytes (issue 12).
            return await asyncio.to_thread(inspect_model, root, max_bytes=limit), str(root)
        with tempfile.TemporaryDirectory(prefix="mlw-artifact-") as private:
            # Named after the model: the manifest's subject name is the folder's name.
            root = Path(private) / name
            root.mkdir()
            index = await fetch_model(self.runtime.js, ref, root, max_bytes=limit)
            inspection = await asyncio.to_thread(inspect_model, root, max_bytes=limit)
        check_against_index(index, inspection.scan, ref)
        return inspection, ref.describe()

    async def judge(self, event: Envelope[ModelBuilt]) -> ArtifactVerdict:
        """Hash, scan, check dependencies, sign, store; the verdict to publish."""
        build = event.data
        started = datetime.now(UTC)
        extra: list[Finding] = []
        lock_name: str | None = None
        try:
            deps: DependencyReport | None = None
            if build.lockfile is not None:
                content = await read_bytes(
                    self.runtime.js, build.lockfile, max_bytes=MAX_LOCKFILE_BYTES, roots=self.settings.readable_roots
                )
                lock_name = Path(build.lockfile.path or build.lockfile.key or "requirements.txt").name
                deps = check_dependencies(content, lock_name, self.osv)
            else:
                extra.append(
                    Finding(
                        check="dependencies.missing", severity=Severity.FAIL, message="the build names no lock file"
                    )
                )
            inspection, location = await self._inspect(build.artifact, build.model)
            manifest, scan = inspection.manifest, inspection.scan
        except (UnreadableReference, UnsafePathError, InputError) as exc:
            code = getattr(exc, "code", type(exc).__name__)
            problem = Finding(check=f"input.{code}", severity=Severity.FAIL, message=str(exc))
            return ArtifactVerdict(
                model=build.model,
                version=build.version,
                root_digest="",
                decision=Decision.FAIL,
                findings=[problem, *extra],
                datasets=build.datasets,
                builder=build.builder,
                in_reply_to=event.id,
            )
        decision = artifact_decision(scan, deps, extra)
        key = self.runtime.key.private
        provenance = provenance_statement(
            name=manifest.name,
            root_digest=manifest.root_digest,
            model=build.model,
            version=build.version,
            builder=build.builder,
            builder_isolation=build.builder_isolation,
            source_commit=build.source_commit,
            lockfile_name=lock_name,
            lockfile_sha256=deps.lock.sha256 if deps else None,
            datasets=build.datasets,
            dataset_decisions=await dataset_decisions(self.runtime.js, build.datasets),
            invocation_id=event.id,
            started=started,
            finished=datetime.now(UTC),
        )
        checks = checks_statement(
            name=manifest.name,
            root_digest=manifest.root_digest,
            decision=decision,
            scan=scan.model_dump(mode="json"),
            dependencies=deps.model_dump(mode="json") if deps else None,
        )
        store = await self.runtime.js.object_store(ARTIFACTS_BUCKET)
        keys = {kind: bundle_key(build.model, build.version, kind) for kind in ("model", "provenance", "checks")}
        await store.put(keys["model"], sign_manifest(manifest, key))
        await store.put(keys["provenance"], sign_statement(provenance, key))
        await store.put(keys["checks"], sign_statement(checks, key))
        await store.put(location_key(build.model, build.version), location.encode())
        findings = [*extra, *(deps.findings if deps else []), *scan.findings]
        return ArtifactVerdict(
            model=build.model,
            version=build.version,
            root_digest=manifest.root_digest,
            decision=decision,
            findings=findings,
            manifest_key=keys["model"],
            files=len(manifest.files()),
            bytes=manifest.total_bytes,
            datasets=build.datasets,
            builder=build.builder,
            in_reply_to=event.id,
            provenance_key=keys["provenance"],
            checks_key=keys["checks"],
        )

    async def recheck(self, database: OsvDatabase) -> int:
        """Look every signed build's locked packages up in `database` (issue 11); publish a `fail`
        verdict for each build with a vulnerability its checks statement did not record. Only
        statements this service signed count (verified with its own key). Return how many."""
        self.osv = database
        store = await self.runtime.js.object_store(ARTIFACTS_BUCKET)
        try:
            objects = await store.list(ignore_deletes=True)
        except NotFoundError:
            return 0
        public = self.runtime.key.private.public_key()
        published = 0
        for info in objects:
            name = info.name or ""
            if not (name.startswith("bundles/") and name.endswith("/checks.sigstore.json")):
                continue
            prefix = name.removesuffix("checks.sigstore.json")
            keys = {kind: f"{prefix}{kind}.sigstore.json" for kind in ("model", "provenance", "checks")}
            try:
                statement = verify_statement(bytes((await store.get(name)).data or b""), public)
                root_digest = str(statement["subject"][0]["digest"]["sha256"])
                new = newly_vulnerable(statement.get("predicate") or {}, database)
                if not new:
                    continue
                provenance = verify_companion(
                    bytes((await store.get(keys["provenance"])).data or b""),
                    public,
                    root_digest=root_digest,
                    predicate_type=SLSA_PROVENANCE_V1,
                )
            except (BundleError, ObjectNotFoundError, NotFoundError, KeyError, IndexError, TypeError) as exc:
                log.warning("artifact-signer: recheck skips %s: %s", name, exc)
                continue
            facts = build_facts(provenance)
            ids = "+".join(sorted(f"{v.package}:{v.id}" for v in new))
            # The same new advisories for the same build give the same id: a recheck after a
            # restart is one verdict, not two (JetStream's duplicate window).
            cause = f"osv-recheck:{root_digest}:{ids}"
            verdict = recheck_verdict(facts, root_digest, new, keys=keys, in_reply_to=cause)
            if self.announced.get(root_digest) == ids:
                continue
            self.announced[root_digest] = ids
            await self.runtime.emit(
                Subjects.VERDICT_ARTIFACT, verdict, in_reply_to=cause, about=f"model:{facts.model}:{facts.version}"
            )
            published += 1
        return published

    async def verify(self, request: ArtifactVerifyRequest) -> ArtifactVerifyReply:
        """Load the OMS bundle, check its signature, re-hash the artifact against it."""
        store = await self.runtime.js.object_store(ARTIFACTS_BUCKET)
        try:
            result = await store.get(manifest_key(request.model, request.version))
        except (ObjectNotFoundError, BucketNotFoundError, NotFoundError):
            return ArtifactVerifyReply(ok=False, problems=[f"no signed bundle for {request.model}:{request.version}"])
        bundle = bytes(result.data or b"")
        path_text = request.path
        if path_text is None:
            try:
                location = await store.get(location_key(request.model, request.version))
            except (ObjectNotFoundError, NotFoundError):
                return ArtifactVerifyReply(ok=False, problems=["no artifact path given or recorded"])
            path_text = bytes(location.data or b"").decode()
        # The service's own public key: it verifies what it signed (TrustStore exposes no key).
        public = self.runtime.key.private.public_key()
        if path_text.startswith("obj://"):
            # An uploaded model: re-read the stored objects into a private folder and re-hash them.
            bucket, _, key = path_text.removeprefix("obj://").partition("/")
            ref = ObjectRef(kind="object", bucket=bucket, key=key)
            with tempfile.TemporaryDirectory(prefix="mlw-verify-") as private:
                root = Path(private) / request.model
                root.mkdir()
                try:
                    await fetch_model(self.runtime.js, ref, root, max_bytes=self.settings.max_artifact_bytes)
                except UnreadableReference as exc:
                    return ArtifactVerifyReply(ok=False, problems=[str(exc)])
                outcome = await asyncio.to_thread(verify_model, root, bundle, public)
        else:
            try:
                root = confined_path(ObjectRef(kind="file", path=path_text), self.settings.readable_roots)
            except UnreadableReference as exc:
                return ArtifactVerifyReply(ok=False, problems=[str(exc)])
            outcome = await asyncio.to_thread(verify_model, root, bundle, public)
        return ArtifactVerifyReply(
            ok=outcome.ok,
            root_digest=outcome.root_digest,
            signer=self.runtime.key.key_id,
            problems=list(outcome.problems),
        )


def refused_build(event: Envelope[ModelBuilt], reason: str) -> ArtifactVerdict:
    """The signed rejection of a build whose builder signature does not hold: nothing is read."""
    build = event.data
    problem = Finding(
        check="identity.builder",
        severity=Severity.FAIL,
        message=f"build refused: {reason}",
        evidence={"claimed_builder": build.builder},
    )
    return ArtifactVerdict(
        model=build.model,
        version=build.version,
        root_digest="",
        decision=Decision.FAIL,
        findings=[problem],
        datasets=build.datasets,
        builder="",  # nobody verified: the claim is in the finding, not vouched for
        in_reply_to=event.id,
    )


def create_app(settings: Settings | None = None, cfg: SignerSettings | None = None) -> ServiceApp:
    """Build artifact-signer."""
    settings = settings or Settings()
    cfg = cfg or SignerSettings()
    svc = ServiceApp(SERVICE, settings)

    def signer() -> Signer:
        return svc.get("signer", Signer)

    watchers: list[asyncio.Task[None]] = []

    async def follow_osv(s: Signer, path: Path, seen: tuple[int, int, int]) -> None:
        # First the database as loaded at start: it may have been replaced while this service
        # was down. Then poll the file's fingerprint (not its bytes): replacing it is the signal.
        if s.osv is not None:
            try:
                count = await s.recheck(s.osv)
                log.info("artifact-signer: start-up OSV re-check: %d build(s) newly vulnerable", count)
            except Exception:  # the bus may still be settling; the next replacement re-checks
                log.exception("artifact-signer: start-up OSV re-check failed")
        if cfg.osv_reload_s <= 0:
            return
        while True:
            await asyncio.sleep(cfg.osv_reload_s)
            try:
                now = await asyncio.to_thread(database_fingerprint, path)
                if now == seen:
                    continue
                database = await asyncio.to_thread(OsvDatabase.load, path)
                seen = now
                count = await s.recheck(database)
                log.info("artifact-signer: OSV database reloaded; %d build(s) newly vulnerable", count)
            except InputError as exc:
                await s.runtime.alert("osv_reload_failed", Severity.WARN, f"OSV database not reloaded: {exc}")
                seen = now
            except Exception:  # a bus hiccup must not end the following; the next round retries
                log.exception("artifact-signer: OSV reload failed")

    @svc.on_start
    async def start(runtime: ServiceRuntime) -> None:
        osv = await asyncio.to_thread(OsvDatabase.load, cfg.osv_db) if cfg.osv_db else None
        s = Signer(runtime, settings, osv)
        svc.state["signer"] = s
        if cfg.osv_db is not None:
            seen = await asyncio.to_thread(database_fingerprint, cfg.osv_db)
            watchers.append(asyncio.create_task(follow_osv(s, cfg.osv_db, seen)))

    @svc.on_stop
    async def stop() -> None:
        await cancel_and_wait(watchers, timeout=TASK_STOP_S)
        watchers.clear()

    @svc.consume(Subjects.MODEL_BUILT, ModelBuilt, batch=2)
    async def on_model_built(event: Envelope[ModelBuilt]) -> None:
        """Hash, scan and sign a model build signed by its builder; publish the signed verdict."""
        try:
            await signer().runtime.verify_actor(event, event.data.builder)
        except SignatureError as exc:
            verdict = refused_build(event, exc.reason)
        else:
            verdict = await signer().judge(event)
        await signer().runtime.emit(
            Subjects.VERDICT_ARTIFACT, verdict, in_reply_to=event.id, about=f"model:{verdict.model}:{verdict.version}"
        )

    @svc.reply(Subjects.ARTIFACT_VERIFY, ArtifactVerifyRequest)
    async def verify(request: ArtifactVerifyRequest) -> ArtifactVerifyReply:
        """Re-hash an artifact and verify it against its signed manifest."""
        return await signer().verify(request)

    return svc
