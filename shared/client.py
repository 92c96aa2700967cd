"""The Python client producers, subscribers and auditors use (re-exported as `mlwarden.Client`)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from shared.artifacts import upload_lockfile, upload_model
from shared.bus import close_nats, connect, load_trust, publish_event
from shared.crypto import encrypt_object
from shared.envelope import Envelope, decode, decode_any, new_event
from shared.errors import InputError, SignatureError
from shared.events import (
    AdmitReply,
    AdmitRequest,
    ApprovalGiven,
    AuditPage,
    AuditQuery,
    DataAccessApproved,
    DataAccessRequested,
    DatasetRecallRequested,
    DatasetRef,
    DatasetUploaded,
    DemotionRequested,
    ErrorReply,
    ModelBuilt,
    ObjectRef,
    PolicyChangeRequested,
    PredictionBatch,
    PredictionRecord,
    PromotionRequested,
    RollbackRequested,
    Sensitivity,
)
from shared.service import reply_or_error
from shared.settings import Settings
from shared.signing import SigningKey, TrustStore
from shared.storage import put_once
from shared.topology import DATASETS_BUCKET, SERVICES, Subjects, expected_signer, model_for_type
from shared.tracing import TraceContext, new_trace


class RequestFailed(InputError):
    """A request/reply endpoint answered with an error."""

    def __init__(self, subject: str, reply: ErrorReply) -> None:
        super().__init__(f"{subject}: {reply.error}: {reply.detail}")
        self.subject = subject
        self.reply = reply


def actor_keys(settings: Settings) -> list[SigningKey]:
    """The actor keys a client of these settings signs with: `MLW_ACTOR_KEY` (named by
    `MLW_ACTOR`, else by the file's stem), or in the dev profile every demo actor key."""
    if settings.actor_key is not None:
        try:
            pem = settings.actor_key.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read the actor key {settings.actor_key}: {exc}") from exc
        return [SigningKey.from_pem(settings.actor or settings.actor_key.stem, pem)]
    if settings.profile != "dev" or not settings.actors_dir.is_dir():
        return []
    return [SigningKey.from_pem(p.stem, p.read_bytes()) for p in sorted(settings.actors_dir.glob("*.pem"))]


FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}


class Client:
    """A connection to an mlwarden bus."""

    def __init__(self, nc: Nats, *, source: str = "mlwarden/client", keys: Iterable[SigningKey] = ()) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.source = source
        #: The actor keys this client signs with, by actor id (usually one).
        self.keys: dict[str, SigningKey] = {key.key_id: key for key in keys}

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, settings: Settings, *, source: str = "mlwarden/client", keys: Iterable[SigningKey] | None = None
    ) -> AsyncIterator[Client]:
        """Connect, yield a client, drain on exit. Without `keys`, the actor key of the settings
        (`MLW_ACTOR_KEY`) signs, or in the dev profile every demo actor key in the data dir."""
        nc = await connect(settings, name=source)
        try:
            yield cls(nc, source=source, keys=actor_keys(settings) if keys is None else keys)
        finally:
            await close_nats(nc)

    def actor(self, claimed: str | None) -> SigningKey:
        """The key to sign as `claimed` (or as this client's only actor when None)."""
        if claimed is None:
            if len(self.keys) != 1:
                raise InputError(f"say which actor publishes this (this client holds {len(self.keys)} actor keys)")
            return next(iter(self.keys.values()))
        key = self.keys.get(claimed)
        if key is None:
            raise InputError(f"no key for actor {claimed!r}: pass --key or set MLW_ACTOR_KEY")
        return key

    async def publish(
        self,
        subject: str,
        data: Any,
        *,
        about: str | None = None,
        key: SigningKey | None = None,
        trace: TraceContext | None = None,
    ) -> Envelope[Any]:
        """Wrap `data` in an envelope (signed when `key` is given) and publish it to JetStream.

        The event starts a new trace (`traceparent`) unless `trace` puts it in an existing one
        (say, a CI job's). Services refuse unsigned producer events: this low-level call exists
        for any-language parity and attack tests; the typed methods below always sign.
        """
        event_id = str(uuid.uuid4())
        context = trace.child(event_id) if trace is not None else new_trace(event_id)
        event = new_event(subject, data, source=self.source, subject=about, event_id=event_id, trace=context)
        if key is not None:
            event = event.signed(key)
        await publish_event(self.js, subject, event)
        return event

    async def upload_dataset(
        self,
        path: Path,
        *,
        dataset: str,
        version: str,
        label: str | None,
        uploader: str | None = None,
        sensitivity: Sensitivity = Sensitivity.INTERNAL,
        readers: list[str] | None = None,
        reference: DatasetRef | None = None,
        fmt: str | None = None,
        master_key: bytes | None = None,
    ) -> Envelope[Any]:
        """Put a dataset file into the `mlw-datasets` object store and announce it.

        Confidential and restricted data are stored AES-GCM envelope-encrypted under `master_key`
        (`shared.crypto.load_or_create_master_key(settings.keys_dir)`); the announced sha256 is
        the plaintext's. Without a key they are stored as given, and data-guard fails them.
        """
        signer = self.actor(uploader)
        fmt = fmt or FORMATS.get(path.suffix.lower())
        if fmt is None:
            raise InputError(f"cannot tell the format of {path}; pass fmt=csv|parquet|npz")
        data = path.read_bytes()
        key = f"{dataset}/{version}"
        location = ObjectRef(kind="object", bucket=DATASETS_BUCKET, key=key)
        stored = data
        if master_key is not None and sensitivity in (Sensitivity.CONFIDENTIAL, Sensitivity.RESTRICTED):
            stored = encrypt_object(data, master_key, name=location.describe())
        store = await self.js.object_store(DATASETS_BUCKET)
        # A stored version is never overwritten (producers hold no purge right): a retry is a no-op.
        await put_once(store, DATASETS_BUCKET, key, stored, content_sha256=hashlib.sha256(data).hexdigest())
        ref_location = None
        if reference is not None:
            ref_location = ObjectRef(
                kind="object", bucket=DATASETS_BUCKET, key=f"{reference.dataset}/{reference.version}"
            )
        event = DatasetUploaded(
            dataset=dataset,
            version=version,
            location=location,
            sha256=hashlib.sha256(data).hexdigest(),
            format=fmt,  # type: ignore[arg-type]
            label_column=label,
            sensitivity=sensitivity,
            uploader=signer.key_id,
            allowed_readers=readers or [],
            reference=ref_location,
            reference_sha256=reference.sha256 if reference else None,
        )
        return await self.publish(Subjects.DATASET_UPLOADED, event, about=f"dataset:{dataset}:{version}", key=signer)

    async def model_built(
        self,
        artifact: Path | ObjectRef,
        *,
        model: str,
        version: str,
        builder: str | None = None,
        lockfile: Path | None = None,
        datasets: list[DatasetRef] | None = None,
        source_commit: str | None = None,
        upload: bool = False,
    ) -> Envelope[Any]:
        """Announce a model build, signed by its builder.

        With `upload`, the folder and the lock file are first stored in `mlw-artifacts`
        (`shared.artifacts`: one object per file and an index of their sha256), so artifact-signer
        needs no access to this machine's disk; without it the event names local paths. An
        `ObjectRef` artifact (an index `shared.artifacts.upload_model` returned) is sent as is.
        """
        signer = self.actor(builder)
        lock_ref = ObjectRef(kind="file", path=str(lockfile.resolve())) if lockfile else None
        if isinstance(artifact, ObjectRef):
            artifact_ref = artifact
        elif upload:
            artifact_ref = await upload_model(self.js, artifact, model=model, version=version)
        else:
            artifact_ref = ObjectRef(kind="file", path=str(artifact.resolve()))
        if upload and lockfile is not None:
            lock_ref = await upload_lockfile(self.js, lockfile, model=model, version=version)
        event = ModelBuilt(
            model=model,
            version=version,
            artifact=artifact_ref,
            lockfile=lock_ref,
            datasets=datasets or [],
            builder=signer.key_id,
            source_commit=source_commit,
        )
        return await self.publish(Subjects.MODEL_BUILT, event, about=f"model:{model}:{version}", key=signer)

    async def request_promotion(
        self, key: SigningKey, *, model: str, version: str, stage: str, root_digest: str, reason: str = ""
    ) -> Envelope[Any]:
        """A promotion request signed with the requester's own key."""
        data = PromotionRequested(
            model=model,
            version=version,
            stage=stage,  # type: ignore[arg-type]
            requester=key.key_id,
            root_digest=root_digest,
            reason=reason,
        )
        return await self.publish(Subjects.PROMOTION_REQUESTED, data, about=f"model:{model}:{version}", key=key)

    async def request_demotion(
        self, key: SigningKey, *, model: str, version: str, stage: str, reason: str
    ) -> Envelope[Any]:
        """A demotion request (take `version`, the current one, out of `stage`) signed with the
        requester's own key; approved like a promotion to that stage (issue 11)."""
        data = DemotionRequested(model=model, version=version, stage=stage, requester=key.key_id, reason=reason)
        return await self.publish(Subjects.DEMOTION_REQUESTED, data, about=f"model:{model}:{version}", key=key)

    async def request_rollback(
        self, key: SigningKey, *, model: str, version: str, stage: str, root_digest: str, reason: str
    ) -> Envelope[Any]:
        """A rollback request (put back `version`, promoted to `stage` before with `root_digest`)
        signed with the requester's own key; approved and checked like a promotion (issue 11)."""
        data = RollbackRequested(
            model=model, version=version, stage=stage, requester=key.key_id, root_digest=root_digest, reason=reason
        )
        return await self.publish(Subjects.ROLLBACK_REQUESTED, data, about=f"model:{model}:{version}", key=key)

    async def approve(
        self, key: SigningKey, *, request_id: str, model: str, version: str, stage: str, comment: str = ""
    ) -> Envelope[Any]:
        """An approval signed with the approver's own key."""
        data = ApprovalGiven(
            request_id=request_id,
            model=model,
            version=version,
            stage=stage,  # type: ignore[arg-type]
            approver=key.key_id,
            comment=comment,
        )
        return await self.publish(Subjects.APPROVAL_GIVEN, data, about=f"model:{model}:{version}", key=key)

    async def recall_dataset(
        self, key: SigningKey, *, dataset: str, version: str, reason: str, sha256: str | None = None
    ) -> Envelope[Any]:
        """A dataset recall signed with the recall officer's own key (registry-gate, issue 11)."""
        data = DatasetRecallRequested(
            dataset=dataset, version=version, sha256=sha256, requester=key.key_id, reason=reason
        )
        return await self.publish(Subjects.RECALL_REQUESTED, data, about=f"dataset:{dataset}:{version}", key=key)

    async def change_registry_policy(
        self, key: SigningKey, document: str, *, reason: str, expected_version: int | None = None
    ) -> Envelope[Any]:
        """A registry policy change (the whole policy YAML) signed with the key of an actor holding
        the `policy-admin` role; registry-gate answers on `mlw.verdict.policy` (issue 11)."""
        data = PolicyChangeRequested(
            document=document, requester=key.key_id, reason=reason, expected_version=expected_version
        )
        return await self.publish(Subjects.POLICY_CHANGE, data, about="policy:registry", key=key)

    async def log_predictions(
        self, model: str, records: list[PredictionRecord], *, server: str | None = None
    ) -> Envelope[Any]:
        """Log a batch of served predictions, signed by the model server (an actor holding the
        `model-server` role; `server` names it when this client holds several keys)."""
        if server is None and "model-server" in self.keys and len(self.keys) > 1:
            server = "model-server"
        return await self.publish(
            Subjects.PREDICTION_LOGGED,
            PredictionBatch(model=model, records=records),
            about=f"model:{model}",
            key=self.actor(server),
        )

    async def request_access(
        self, *, dataset: str, version: str, purpose: str, principal: str | None = None, bytes_requested: int = 0
    ) -> Envelope[Any]:
        """Ask to read a dataset version, signed by the principal."""
        key = self.actor(principal)
        data = DataAccessRequested(
            principal=key.key_id, dataset=dataset, version=version, purpose=purpose, bytes_requested=bytes_requested
        )
        return await self.publish(Subjects.DATASET_ACCESS, data, about=f"dataset:{dataset}:{version}", key=key)

    async def approve_access(
        self,
        *,
        request_id: str,
        dataset: str,
        version: str,
        kind: str = "approval",
        approver: str | None = None,
        comment: str = "",
    ) -> Envelope[Any]:
        """Approve an access request (a data steward) or assert MFA for it (the identity
        provider), signed by that actor."""
        key = self.actor(approver)
        data = DataAccessApproved(
            request_id=request_id,
            dataset=dataset,
            version=version,
            approver=key.key_id,
            kind=kind,  # type: ignore[arg-type]
            comment=comment,
        )
        return await self.publish(Subjects.DATASET_APPROVAL, data, about=f"dataset:{dataset}:{version}", key=key)

    async def request(self, subject: str, body: bytes, timeout: float = 5.0) -> bytes:
        """A raw request/reply."""
        msg = await self.nc.request(subject, body, timeout=timeout)
        return bytes(msg.data)

    async def admit(self, request: AdmitRequest, timeout: float = 2.0) -> AdmitReply:
        """Ask serving-monitor whether a call may proceed."""
        raw = await self.request(Subjects.SERVING_ADMIT, orjson.dumps(request.model_dump(mode="json")), timeout)
        return _ok(Subjects.SERVING_ADMIT, reply_or_error(raw, AdmitReply))

    async def audit_query(self, query: AuditQuery, timeout: float = 10.0) -> AuditPage:
        """Query the audit trail."""
        raw = await self.request(Subjects.AUDIT_QUERY, orjson.dumps(query.model_dump(mode="json")), timeout)
        return _ok(Subjects.AUDIT_QUERY, reply_or_error(raw, AuditPage))

    @asynccontextmanager
    async def watch(
        self,
        subjects: tuple[str, ...] = ("mlw.verdict.>", "mlw.alert.>", "mlw.deadletter.>"),
        *,
        verify_with: Ed25519PublicKey | None = None,
    ) -> AsyncIterator[Watcher]:
        """Live verdicts, alerts and dead letters (subscribe before you publish).

        With `verify_with` (the operator's root public key) each event's signature is checked
        against the root-signed trust store: `watcher.unverified` names the events that do not
        come from the one service that may sign them. Act only on verified verdicts.
        """
        verifier = None
        if verify_with is not None:
            verifier = VerdictVerifier(self.js, verify_with)
            # Every service's key up front: the subscription callbacks then never wait on the bus
            # (a callback waiting on a request would hold up the connection's drain at exit).
            await verifier.preload()
        watcher = Watcher(verifier)
        subs = [await self.nc.subscribe(s, cb=watcher.on_msg) for s in subjects]
        await self.nc.flush()
        try:
            yield watcher
        finally:
            for sub in subs:
                await sub.unsubscribe()


class VerdictVerifier:
    """Checks that a verdict, alert or dead letter was signed by the one service that may sign
    it, with the key the root-signed trust store holds (read with `get`: all a producer may)."""

    def __init__(self, js: JetStreamContext, root: Ed25519PublicKey) -> None:
        self.js = js
        self.root = root
        self.trust = TrustStore()

    async def preload(self) -> None:
        """Read every service's entry from the trust store (root-checked)."""
        self.trust = await load_trust(self.js, self.root, SERVICES)

    async def problem(self, event: Envelope[Any]) -> str | None:
        """None when `event` verifies, else why not."""
        service = expected_signer(event.type)
        if service is None:
            return f"{event.type} is not a service's event"
        if event.signer != service:
            return f"signed by {event.signer!r}, not {service!r}"
        if service not in self.trust:
            self.trust = await load_trust(self.js, self.root, [*self.trust.ids(), service])
        try:
            event.verify(self.trust, allowed_signers={service}, kind="service")
        except SignatureError as exc:
            return exc.reason
        return None


class Watcher:
    """Keeps every event seen on its subscriptions; waits for one that matches."""

    def __init__(self, verifier: VerdictVerifier | None = None) -> None:
        self.events: list[Envelope[Any]] = []
        #: event id -> why its signature does not hold (with a verifier only).
        self.unverified: dict[str, str] = {}
        self._verifier = verifier
        self._changed = asyncio.Condition()

    async def on_msg(self, msg: Msg) -> None:
        """Subscription callback."""
        try:
            model = model_for_type(msg.subject)
            event = decode(msg.data, model, expected_type=msg.subject) if model is not None else decode_any(msg.data)
        except Exception:  # noqa: BLE001 - a watcher keeps what it can parse
            return
        if self._verifier is not None:
            problem = await self._verifier.problem(event)
            if problem is not None:
                self.unverified[event.id] = problem
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait(self, predicate: Callable[[Envelope[Any]], bool], timeout: float) -> Envelope[Any] | None:
        """The first event seen (before or after the call) that matches, or None on timeout."""

        def find() -> Envelope[Any] | None:
            return next((e for e in self.events if predicate(e)), None)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: find() is not None), timeout)
            except TimeoutError:
                return None
            return find()


def _ok(subject: str, reply: Any) -> Any:
    if isinstance(reply, ErrorReply):
        raise RequestFailed(subject, reply)
    return reply
