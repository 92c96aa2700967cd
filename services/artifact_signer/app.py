"""artifact-signer's wiring: a model build in; hash, scan, check the lock file, sign the manifest,
store it in `mlw-artifacts`, publish `mlw.verdict.artifact`; `mlw.artifact.verify` re-checks.

Hashing and scanning are file and CPU work: they run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from services.artifact_signer.hashing import UnsafePathError
from services.artifact_signer.lockfile import LockReport, check_lockfile
from services.artifact_signer.manifest import (
    Manifest,
    build_manifest,
    dump_signed_manifest,
    load_signed_manifest,
    sign_manifest,
    verify_artifact,
)
from services.artifact_signer.scanner import ScanReport, scan_path
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
)
from shared.service import ServiceApp
from shared.settings import Settings
from shared.storage import UnreadableReference, confined_path, read_bytes
from shared.topology import ARTIFACTS_BUCKET, Subjects

SERVICE = "artifact-signer"
log = logging.getLogger("mlwarden.artifact-signer")
MAX_LOCKFILE_BYTES = 16 * 1024 * 1024


def manifest_key(model: str, version: str) -> str:
    """Object name of a signed manifest in `mlw-artifacts`."""
    return f"manifests/{model}/{version}.json"


def location_key(model: str, version: str) -> str:
    """Object name of where the artifact was when it was signed (not part of what is signed)."""
    return f"locations/{model}/{version}"


def artifact_decision(scan: ScanReport, lock: LockReport | None, extra: list[Finding]) -> Decision:
    """fail if anything failed, warn if anything warned, else pass."""
    findings = [*scan.findings, *(lock.findings if lock else []), *extra]
    if any(f.severity == Severity.FAIL for f in findings):
        return Decision.FAIL
    if any(f.severity == Severity.WARN for f in findings):
        return Decision.WARN
    return Decision.PASS


class Signer:
    """Hashes, scans and signs one build."""

    def __init__(self, runtime: ServiceRuntime, settings: Settings) -> None:
        self.runtime = runtime
        self.settings = settings

    def _artifact_path(self, ref: ObjectRef) -> Path:
        if ref.kind != "file":
            raise UnreadableReference(
                "artifacts are read from file references (object-store artifacts are not supported yet)",
                ref=ref.describe(),
                code="unsupported_reference",
            )
        return confined_path(ref, self.settings.readable_roots)

    async def judge(self, event: Envelope[ModelBuilt]) -> ArtifactVerdict:
        """Hash, scan, check dependencies, sign, store; the verdict to publish."""
        build = event.data
        extra: list[Finding] = []
        try:
            root = self._artifact_path(build.artifact)
            lock: LockReport | None = None
            if build.lockfile is not None:
                content = await read_bytes(
                    self.runtime.js, build.lockfile, max_bytes=MAX_LOCKFILE_BYTES, roots=self.settings.readable_roots
                )
                name = Path(build.lockfile.path or build.lockfile.key or "requirements.txt").name
                lock = check_lockfile(content, name)
            else:
                extra.append(
                    Finding(
                        check="dependencies.missing", severity=Severity.FAIL, message="the build names no lock file"
                    )
                )
            manifest: Manifest = await asyncio.to_thread(
                build_manifest,
                root,
                model=build.model,
                version=build.version,
                builder=build.builder,
                datasets=build.datasets,
                lockfile_sha256=lock.sha256 if lock else None,
                source_commit=build.source_commit,
            )
            if manifest.total_bytes > self.settings.max_artifact_bytes:
                raise InputError(f"artifact is {manifest.total_bytes} bytes, over the limit")
            scan: ScanReport = await asyncio.to_thread(scan_path, root)
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
        signed = sign_manifest(manifest, self.runtime.key)
        key = manifest_key(build.model, build.version)
        store = await self.runtime.js.object_store(ARTIFACTS_BUCKET)
        await store.put(key, dump_signed_manifest(signed))
        await store.put(location_key(build.model, build.version), str(root).encode())
        findings = [*extra, *(lock.findings if lock else []), *scan.findings]
        return ArtifactVerdict(
            model=build.model,
            version=build.version,
            root_digest=manifest.root_digest,
            decision=artifact_decision(scan, lock, extra),
            findings=findings,
            manifest_key=key,
            files=len(manifest.files),
            bytes=manifest.total_bytes,
            datasets=build.datasets,
            builder=build.builder,
            in_reply_to=event.id,
        )

    async def verify(self, request: ArtifactVerifyRequest) -> ArtifactVerifyReply:
        """Load the signed manifest, check its signature, re-hash the artifact."""
        store = await self.runtime.js.object_store(ARTIFACTS_BUCKET)
        try:
            result = await store.get(manifest_key(request.model, request.version))
        except (ObjectNotFoundError, BucketNotFoundError, NotFoundError):
            return ArtifactVerifyReply(ok=False, problems=[f"no signed manifest for {request.model}:{request.version}"])
        signed = load_signed_manifest(bytes(result.data or b""))
        path_text = request.path
        if path_text is None:
            try:
                location = await store.get(location_key(request.model, request.version))
            except (ObjectNotFoundError, NotFoundError):
                return ArtifactVerifyReply(ok=False, problems=["no artifact path given or recorded"])
            path_text = bytes(location.data or b"").decode()
        try:
            root = confined_path(ObjectRef(kind="file", path=path_text), self.settings.readable_roots)
            problems = await asyncio.to_thread(verify_artifact, root, signed, self.runtime.trust)
        except SignatureError as exc:
            problems = [f"manifest signature: {exc.reason}"]
        except (UnreadableReference, UnsafePathError) as exc:
            problems = [str(exc)]
        return ArtifactVerifyReply(
            ok=not problems, root_digest=signed.manifest.root_digest, signer=signed.signer, problems=problems
        )


def create_app(settings: Settings | None = None) -> ServiceApp:
    """Build artifact-signer."""
    settings = settings or Settings()
    svc = ServiceApp(SERVICE, settings)

    def signer() -> Signer:
        the_signer: Signer = svc.state["signer"]
        return the_signer

    @svc.on_start
    async def start(runtime: ServiceRuntime) -> None:
        svc.state["signer"] = Signer(runtime, settings)

    @svc.consume(Subjects.MODEL_BUILT, ModelBuilt, batch=2)
    async def on_model_built(event: Envelope[ModelBuilt]) -> None:
        """Hash, scan and sign a model build; publish the signed verdict."""
        verdict = await signer().judge(event)
        await signer().runtime.emit(
            Subjects.VERDICT_ARTIFACT, verdict, in_reply_to=event.id, about=f"model:{verdict.model}:{verdict.version}"
        )

    @svc.reply(Subjects.ARTIFACT_VERIFY, ArtifactVerifyRequest)
    async def verify(request: ArtifactVerifyRequest) -> ArtifactVerifyReply:
        """Re-hash an artifact and verify it against its signed manifest."""
        return await signer().verify(request)

    return svc
