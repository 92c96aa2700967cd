"""The bus, declared once: subjects, JetStream streams, durable consumers, object stores and
key-value buckets. `ensure_topology` creates or updates all of it idempotently at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError
from pydantic import BaseModel

from shared.events import (
    AccessVerdict,
    AdmissionVerdict,
    Alert,
    ApprovalGiven,
    ArtifactVerdict,
    DataAccessApproved,
    DataAccessRequested,
    DatasetRecallRequested,
    DatasetUploaded,
    DatasetVerdict,
    DeadLetter,
    DemotionRequested,
    ModelBuilt,
    PolicyChangeRequested,
    PolicyVerdict,
    PredictionBatch,
    PromotionRequested,
    PromotionVerdict,
    RecallVerdict,
    RollbackRequested,
)


class Subjects:
    """Every subject mlwarden uses."""

    DATASET_UPLOADED = "mlw.dataset.uploaded"
    DATASET_ACCESS = "mlw.dataset.access"
    DATASET_APPROVAL = "mlw.dataset.approval"
    MODEL_BUILT = "mlw.model.built"
    PROMOTION_REQUESTED = "mlw.registry.promotion"
    APPROVAL_GIVEN = "mlw.registry.approval"
    DEMOTION_REQUESTED = "mlw.registry.demotion"
    ROLLBACK_REQUESTED = "mlw.registry.rollback"
    RECALL_REQUESTED = "mlw.registry.recall"
    POLICY_CHANGE = "mlw.registry.policy"
    PREDICTION_LOGGED = "mlw.prediction.logged"

    VERDICT_DATASET = "mlw.verdict.dataset"
    VERDICT_ACCESS = "mlw.verdict.access"
    VERDICT_ARTIFACT = "mlw.verdict.artifact"
    VERDICT_PROMOTION = "mlw.verdict.promotion"
    VERDICT_RECALL = "mlw.verdict.recall"
    VERDICT_POLICY = "mlw.verdict.policy"
    VERDICT_ADMISSION = "mlw.verdict.admission"
    ALERT_PREFIX = "mlw.alert"
    DEADLETTER_PREFIX = "mlw.deadletter"

    # audit-log's signed checkpoints, kept in their own undeletable stream (outside SQL)
    AUDIT_CHECKPOINTS = "mlw.checkpoints.audit"

    # request/reply (core NATS, not stored)
    SERVING_ADMIT = "mlw.serving.admit"
    AUDIT_QUERY = "mlw.audit.query"
    AUDIT_PROOF = "mlw.audit.proof"
    AUDIT_CHECKPOINT = "mlw.audit.checkpoint"
    ARTIFACT_VERIFY = "mlw.artifact.verify"
    REGISTRY_STATUS = "mlw.registry.status"
    # liveness: every service answers `mlw.health.<service>` (core NATS, `mlwarden health`)
    HEALTH_PREFIX = "mlw.health"

    @staticmethod
    def alert(service: str) -> str:
        """Alert subject of one service."""
        return f"{Subjects.ALERT_PREFIX}.{service}"

    @staticmethod
    def deadletter(service: str) -> str:
        """Dead-letter subject of one service."""
        return f"{Subjects.DEADLETTER_PREFIX}.{service}"

    @staticmethod
    def health(service: str) -> str:
        """Liveness request/reply subject of one service."""
        return f"{Subjects.HEALTH_PREFIX}.{service}"


# Which service may sign which verdict type: a key of one service cannot vouch for another's work.
VERDICT_SIGNERS: dict[str, str] = {
    Subjects.VERDICT_DATASET: "data-guard",
    Subjects.VERDICT_ACCESS: "data-guard",
    Subjects.VERDICT_ARTIFACT: "artifact-signer",
    Subjects.VERDICT_PROMOTION: "registry-gate",
    Subjects.VERDICT_RECALL: "registry-gate",
    Subjects.VERDICT_POLICY: "registry-gate",
    Subjects.VERDICT_ADMISSION: "serving-monitor",
}


def expected_signer(event_type: str) -> str | None:
    """The one service that may sign events of `event_type` (verdicts, alerts, dead letters,
    checkpoints), or None for producer events, which actors sign."""
    if event_type in VERDICT_SIGNERS:
        return VERDICT_SIGNERS[event_type]
    for prefix in (Subjects.ALERT_PREFIX + ".", Subjects.DEADLETTER_PREFIX + "."):
        if event_type.startswith(prefix):
            return event_type[len(prefix) :]
    if event_type == Subjects.AUDIT_CHECKPOINTS:
        return "audit-log"
    return None


SERVICES: tuple[str, ...] = (
    "audit-log",
    "data-guard",
    "artifact-signer",
    "registry-gate",
    "serving-monitor",
)

# No delivery limit on the server (issue 13): an infrastructure outage must never use up a
# message's attempts, so only `ServiceRuntime.process` decides when a message is hopeless (input
# at once, a bug after `shared.bus.BUG_ATTEMPTS`) and dead-letters it. nats-server updates
# `max_deliver` of an existing durable in place (`ensure_topology`).
UNLIMITED_DELIVERIES = -1
# Short, so that messages a crashed process had fetched come back within seconds (issue 13: a
# SIGKILL cost the whole ack wait, 120 s and then 30 s); long work keeps its message alive with
# in-progress acks (`shared.bus.keep_in_progress`) every third of it. A redelivery while the first
# delivery is still at work is harmless: handlers are idempotent on the event id.
DEFAULT_ACK_WAIT_S = 10.0
# JetStream drops a second message with the same Nats-Msg-Id inside this window.
DUPLICATE_WINDOW_S = 15 * 60.0


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream mlwarden owns."""

    name: str
    subjects: tuple[str, ...]
    max_bytes: int = -1
    max_age_s: float = 0.0
    deny_delete: bool = False
    deny_purge: bool = False

    def config(self, replicas: int = 1) -> StreamConfig:
        """The nats-py stream configuration (`replicas` copies on a cluster; 1 on one server)."""
        return StreamConfig(
            name=self.name,
            subjects=list(self.subjects),
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_bytes=self.max_bytes,
            max_age=self.max_age_s,
            duplicate_window=DUPLICATE_WINDOW_S,
            deny_delete=self.deny_delete,
            deny_purge=self.deny_purge,
            num_replicas=replicas,
        )


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer: one per service per stream (subjects filtered)."""

    stream: str
    durable: str
    filter_subjects: tuple[str, ...] = field(default=())
    ack_wait_s: float = DEFAULT_ACK_WAIT_S
    max_deliver: int = UNLIMITED_DELIVERIES
    max_ack_pending: int = 1000

    def config(self) -> ConsumerConfig:
        """The nats-py consumer configuration (explicit acks, durable, pull)."""
        cfg = ConsumerConfig(
            durable_name=self.durable,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.ack_wait_s,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
        )
        if len(self.filter_subjects) == 1:
            cfg.filter_subject = self.filter_subjects[0]
        elif self.filter_subjects:
            cfg.filter_subjects = list(self.filter_subjects)
        return cfg


#: The registry subjects that are events (stored and consumed). Not `mlw.registry.>`: that also
#: captured the `mlw.registry.status` requests, so JetStream answered each with a publish ack
#: (the requester's reply) and registry-gate's durable dead-lettered it (issue 8). A stored
#: registry subject added later goes here; `ensure_topology` updates the stream in place.
REGISTRY_EVENTS: tuple[str, ...] = (
    Subjects.PROMOTION_REQUESTED,
    Subjects.APPROVAL_GIVEN,
    Subjects.DEMOTION_REQUESTED,
    Subjects.ROLLBACK_REQUESTED,
    Subjects.RECALL_REQUESTED,
    Subjects.POLICY_CHANGE,
)
EVENTS = StreamSpec("MLW_EVENTS", ("mlw.dataset.>", "mlw.model.>", *REGISTRY_EVENTS))
PREDICTIONS = StreamSpec(
    "MLW_PREDICTIONS",
    ("mlw.prediction.>",),
    max_bytes=1024 * 1024 * 1024,
    max_age_s=7 * 24 * 3600.0,
)
VERDICTS = StreamSpec(
    "MLW_VERDICTS",
    ("mlw.verdict.>", "mlw.alert.>", "mlw.deadletter.>"),
    # The verdict record is evidence: nobody removes it through the JetStream API.
    deny_delete=True,
    deny_purge=True,
)
CHECKPOINTS = StreamSpec(
    "MLW_CHECKPOINTS",
    ("mlw.checkpoints.>",),
    # Checkpoints are what an auditor checks the database against: they must outlive it.
    deny_delete=True,
    deny_purge=True,
)
STREAMS: tuple[StreamSpec, ...] = (EVENTS, PREDICTIONS, VERDICTS, CHECKPOINTS)

CONSUMERS: dict[str, tuple[ConsumerSpec, ...]] = {
    # Judging and hashing take long: their handlers send in-progress acks instead of a long ack
    # wait (a 120 s wait kept a killed data-guard's messages away for two minutes, issue 13).
    "data-guard": (ConsumerSpec("MLW_EVENTS", "data-guard", ("mlw.dataset.>",)),),
    "artifact-signer": (ConsumerSpec("MLW_EVENTS", "artifact-signer", (Subjects.MODEL_BUILT,)),),
    "registry-gate": (
        # Requests and approvals on one durable, read one at a time, so they are seen in order.
        ConsumerSpec("MLW_EVENTS", "registry-gate", ("mlw.registry.>",)),
        ConsumerSpec("MLW_VERDICTS", "registry-gate-verdicts", ("mlw.verdict.>",)),
    ),
    "serving-monitor": (ConsumerSpec("MLW_PREDICTIONS", "serving-monitor", (Subjects.PREDICTION_LOGGED,)),),
    "audit-log": (
        ConsumerSpec("MLW_EVENTS", "audit-log-events", ("mlw.>",), max_ack_pending=20_000),
        ConsumerSpec("MLW_PREDICTIONS", "audit-log-predictions", ("mlw.>",), max_ack_pending=20_000),
        ConsumerSpec("MLW_VERDICTS", "audit-log-verdicts", ("mlw.>",), max_ack_pending=20_000),
    ),
}

DATASETS_BUCKET = "mlw-datasets"
ARTIFACTS_BUCKET = "mlw-artifacts"  # artifact-signer's signed bundles: only it writes here
UPLOADS_BUCKET = "mlw-uploads"  # model folders producers upload for artifact-signer to judge
OBJECT_STORES: tuple[str, ...] = (DATASETS_BUCKET, ARTIFACTS_BUCKET, UPLOADS_BUCKET)

TRUST_BUCKET = "mlw-trust"  # service id -> base64 Ed25519 public key
API_KEYS_BUCKET = "mlw-apikeys"  # key id -> hashed API key record
STATE_BUCKET = "mlw-state"  # service-owned state (registry-gate's promotions, schemas)
KV_BUCKETS: tuple[str, ...] = (TRUST_BUCKET, API_KEYS_BUCKET, STATE_BUCKET)


async def _ensure_stream(js: JetStreamContext, spec: StreamSpec, replicas: int) -> None:
    try:
        await js.stream_info(spec.name)
    except NotFoundError:
        await js.add_stream(spec.config(replicas))
        return
    await js.update_stream(spec.config(replicas))


async def _ensure_replicas(js: JetStreamContext, stream: str, replicas: int) -> None:
    # A bucket declared before the cluster grew (or with another MLW_JS_REPLICAS) is scaled in
    # place: JetStream moves a stream between replica counts without losing messages.
    config = (await js.stream_info(stream)).config
    if (config.num_replicas or 1) != replicas:
        config.num_replicas = replicas
        await js.update_stream(config)


async def _deny_object_deletes(js: JetStreamContext, bucket: str) -> None:
    # No single-message deletes through the JetStream API on an object store (issue 8). Not
    # `deny_purge`: the server then refuses the roll-up header every object put and delete
    # sends ("roll-ups require the purge permission"). Who may purge is the permissions' job.
    stream = f"OBJ_{bucket}"
    config = (await js.stream_info(stream)).config
    if not config.deny_delete:
        config.deny_delete = True
        await js.update_stream(config)


async def ensure_topology(js: JetStreamContext, *, replicas: int = 1) -> None:
    """Create or update every stream, consumer, object store and key-value bucket.

    `replicas` (`MLW_JS_REPLICAS`): copies of each stream and bucket, 3 on a three-node cluster
    (DESIGN.md principle 9) so that losing one node, even a stream's leader, loses nothing.
    Durable consumers inherit their stream's replica count.
    """
    for spec in STREAMS:
        await _ensure_stream(js, spec, replicas)
    for specs in CONSUMERS.values():
        for consumer in specs:
            try:
                # Creating an existing durable with the same settings is a no-op; changed
                # settings that the server can update in place are updated.
                await js.add_consumer(consumer.stream, consumer.config())
            except BadRequestError:
                # A setting that cannot change in place: keep the durable (and its position)
                # rather than delete it and replay or lose messages.
                continue
    for bucket in OBJECT_STORES:
        try:
            await js.object_store(bucket)
        except NotFoundError:
            await js.create_object_store(bucket, ObjectStoreConfig(storage=StorageType.FILE, replicas=replicas))
        await _ensure_replicas(js, f"OBJ_{bucket}", replicas)
        await _deny_object_deletes(js, bucket)
    for bucket in KV_BUCKETS:
        try:
            await js.key_value(bucket)
        except NotFoundError:
            await js.create_key_value(
                KeyValueConfig(bucket=bucket, history=5, storage=StorageType.FILE, replicas=replicas)
            )
        await _ensure_replicas(js, f"KV_{bucket}", replicas)


def model_for_type(event_type: str) -> type[BaseModel] | None:
    """The pydantic model of an event type's `data`, when mlwarden defines one."""
    if event_type.startswith(Subjects.ALERT_PREFIX + "."):
        return Alert
    if event_type.startswith(Subjects.DEADLETTER_PREFIX + "."):
        return DeadLetter
    return _MODELS.get(event_type)


_MODELS: dict[str, type[BaseModel]] = {
    Subjects.DATASET_UPLOADED: DatasetUploaded,
    Subjects.MODEL_BUILT: ModelBuilt,
    Subjects.PROMOTION_REQUESTED: PromotionRequested,
    Subjects.APPROVAL_GIVEN: ApprovalGiven,
    Subjects.DEMOTION_REQUESTED: DemotionRequested,
    Subjects.ROLLBACK_REQUESTED: RollbackRequested,
    Subjects.RECALL_REQUESTED: DatasetRecallRequested,
    Subjects.POLICY_CHANGE: PolicyChangeRequested,
    Subjects.PREDICTION_LOGGED: PredictionBatch,
    Subjects.VERDICT_DATASET: DatasetVerdict,
    Subjects.VERDICT_ARTIFACT: ArtifactVerdict,
    Subjects.VERDICT_PROMOTION: PromotionVerdict,
    Subjects.VERDICT_RECALL: RecallVerdict,
    Subjects.VERDICT_POLICY: PolicyVerdict,
    Subjects.VERDICT_ADMISSION: AdmissionVerdict,
    Subjects.DATASET_ACCESS: DataAccessRequested,
    Subjects.DATASET_APPROVAL: DataAccessApproved,
    Subjects.VERDICT_ACCESS: AccessVerdict,
}
