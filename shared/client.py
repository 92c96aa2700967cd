"""The Python client producers, subscribers and auditors use (re-exported as `mlwarden.Client`)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg

from shared.bus import connect, publish_event
from shared.crypto import encrypt_object
from shared.envelope import Envelope, decode, decode_any, new_event
from shared.errors import InputError
from shared.events import (
    AdmitReply,
    AdmitRequest,
    ApprovalGiven,
    AuditPage,
    AuditQuery,
    DatasetRef,
    DatasetUploaded,
    ErrorReply,
    ModelBuilt,
    ObjectRef,
    PredictionBatch,
    PredictionRecord,
    PromotionRequested,
    Sensitivity,
)
from shared.service import reply_or_error
from shared.settings import Settings
from shared.signing import SigningKey
from shared.storage import put_once
from shared.topology import DATASETS_BUCKET, Subjects, model_for_type


class RequestFailed(InputError):
    """A request/reply endpoint answered with an error."""

    def __init__(self, subject: str, reply: ErrorReply) -> None:
        super().__init__(f"{subject}: {reply.error}: {reply.detail}")
        self.subject = subject
        self.reply = reply


FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}


class Client:
    """A connection to an mlwarden bus."""

    def __init__(self, nc: Nats, *, source: str = "mlwarden/client") -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.source = source

    @classmethod
    @asynccontextmanager
    async def connect(cls, settings: Settings, *, source: str = "mlwarden/client") -> AsyncIterator[Client]:
        """Connect, yield a client, drain on exit."""
        nc = await connect(settings, name=source)
        try:
            yield cls(nc, source=source)
        finally:
            await nc.drain()

    async def publish(
        self, subject: str, data: Any, *, about: str | None = None, key: SigningKey | None = None
    ) -> Envelope[Any]:
        """Wrap `data` in an envelope (signed when `key` is given) and publish it to JetStream."""
        event = new_event(subject, data, source=self.source, subject=about)
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
        uploader: str,
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
            uploader=uploader,
            allowed_readers=readers or [],
            reference=ref_location,
            reference_sha256=reference.sha256 if reference else None,
        )
        return await self.publish(Subjects.DATASET_UPLOADED, event, about=f"dataset:{dataset}:{version}")

    async def model_built(
        self,
        artifact: Path,
        *,
        model: str,
        version: str,
        builder: str,
        lockfile: Path | None = None,
        datasets: list[DatasetRef] | None = None,
        source_commit: str | None = None,
    ) -> Envelope[Any]:
        """Announce a model build whose artifact is a local file or folder."""
        event = ModelBuilt(
            model=model,
            version=version,
            artifact=ObjectRef(kind="file", path=str(artifact.resolve())),
            lockfile=ObjectRef(kind="file", path=str(lockfile.resolve())) if lockfile else None,
            datasets=datasets or [],
            builder=builder,
            source_commit=source_commit,
        )
        return await self.publish(Subjects.MODEL_BUILT, event, about=f"model:{model}:{version}")

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

    async def log_predictions(self, model: str, records: list[PredictionRecord]) -> Envelope[Any]:
        """Log a batch of served predictions."""
        return await self.publish(
            Subjects.PREDICTION_LOGGED, PredictionBatch(model=model, records=records), about=f"model:{model}"
        )

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
        self, subjects: tuple[str, ...] = ("mlw.verdict.>", "mlw.alert.>", "mlw.deadletter.>")
    ) -> AsyncIterator[Watcher]:
        """Live verdicts, alerts and dead letters (subscribe before you publish)."""
        watcher = Watcher()
        subs = [await self.nc.subscribe(s, cb=watcher.on_msg) for s in subjects]
        await self.nc.flush()
        try:
            yield watcher
        finally:
            for sub in subs:
                await sub.unsubscribe()


class Watcher:
    """Keeps every event seen on its subscriptions; waits for one that matches."""

    def __init__(self) -> None:
        self.events: list[Envelope[Any]] = []
        self._changed = asyncio.Condition()

    async def on_msg(self, msg: Msg) -> None:
        """Subscription callback."""
        try:
            model = model_for_type(msg.subject)
            event = decode(msg.data, model) if model is not None else decode_any(msg.data)
        except Exception:  # noqa: BLE001 - a watcher keeps what it can parse
            return
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
