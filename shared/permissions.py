"""Least privilege on the bus (DESIGN.md, principle 5): the NATS publish/subscribe allow-lists of
every identity, derived from `shared.topology`.

Pure: no NATS import. `mlwarden nats-config` renders these into a nats-server `authorization`
block. The JetStream API subjects are the ones nats-py 2.16 sends for what each identity does
(`nats/js/manager.py`, `client.py`, `kv.py`, `object_store.py`); the secured integration test
runs every flow against a real server and fails on any permissions violation.

What the lists cannot express, and why it is acceptable:

- A JetStream API request names its stream (and consumer) in the subject, but a message get or a
  purge carries its filter in the payload: read access to a bucket is all of the bucket, and a
  right to purge some chunks (nats-py's `ObjectStore.put` purges the chunks of the object it
  replaces) is a right to purge the whole store. So only artifact-signer, a service, purges (its
  own store); producers never do (issue 8: one producer purged `OBJ_mlw-datasets`) and store each
  dataset version once (`shared.storage.put_once`). The object streams also set `deny_delete`.
- An object's meta subject is `$O.<bucket>.M.<base64(name)>`, one token, so a writer of a store
  may rewrite the meta of any object in it (replace or mark deleted; the chunks stay, as it may
  not purge). Consumers re-hash what they read against the sha256 the signed event names.
- Replies come back on a per-identity inbox, `_INBOX.<identity>.>` (`Settings.inbox_prefix`
  sets the client's prefix from its NATS user), so no identity reads replies meant for another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NewType

from shared.errors import InputError
from shared.topology import (
    API_KEYS_BUCKET,
    ARTIFACTS_BUCKET,
    CHECKPOINTS,
    CONSUMERS,
    DATASETS_BUCKET,
    EVENTS,
    KV_BUCKETS,
    OBJECT_STORES,
    PREDICTIONS,
    SERVICES,
    STATE_BUCKET,
    STREAMS,
    TRUST_BUCKET,
    UPLOADS_BUCKET,
    VERDICT_SIGNERS,
    ConsumerSpec,
    Subjects,
)

Identity = NewType("Identity", str)

OPERATOR = Identity("operator")
PRODUCER = Identity("producer")
AUDITOR = Identity("auditor")
#: Every identity that gets its own NATS user: the five services, then the people and jobs.
IDENTITIES: tuple[Identity, ...] = (*(Identity(s) for s in SERVICES), OPERATOR, PRODUCER, AUDITOR)


def inbox(identity: str) -> str:
    """The inbox subjects replies to `identity`'s requests and JetStream API calls arrive on."""
    return f"_INBOX.{identity}.>"


#: Keys of the state bucket the operator writes: serving-monitor's feature schemas and reference
#: profiles (`services.serving_monitor.keystore.SCHEMA_PREFIX`, `PROFILE_PREFIX`), and the flags
#: it clears (`mlwarden serving clear`, `services.serving_monitor.flags.FLAG_PREFIX`). Each
#: service writes only keys prefixed with its own name (`data-guard.`, `registry-gate.`).
OPERATOR_STATE_PREFIXES: tuple[str, ...] = ("schema.", "profile.", "serving-monitor.flagged.")

#: Liveness requests to every service (`mlwarden health`): the services (compose's health
#: checks run with their own credentials) and the operator.
HEALTH_REQUESTS = f"{Subjects.HEALTH_PREFIX}.*"

#: Request/reply endpoints, by the service that answers them (and each its `mlw.health.<service>`).
ENDPOINTS: dict[str, tuple[str, ...]] = {
    "audit-log": (Subjects.AUDIT_QUERY, Subjects.AUDIT_PROOF, Subjects.AUDIT_CHECKPOINT),
    "artifact-signer": (Subjects.ARTIFACT_VERIFY,),
    "registry-gate": (Subjects.REGISTRY_STATUS,),
    "serving-monitor": (Subjects.SERVING_ADMIT,),
}


@dataclass(frozen=True)
class Permissions:
    """What one identity may publish and subscribe to."""

    identity: Identity
    #: Subjects the identity may publish to (events, JetStream API requests, acks).
    publish: tuple[str, ...]
    #: Subjects (or `subject queue` pairs) the identity may subscribe to.
    subscribe: tuple[str, ...]
    #: May answer requests it received on their reply subjects (NATS `allow_responses`), so a
    #: responder needs no publish right on every inbox.
    allow_responses: bool = False

    def to_config(self) -> dict[str, Any]:
        """The `permissions` value of a nats-server `authorization.users` entry."""
        config: dict[str, Any] = {
            "publish": {"allow": list(self.publish)},
            "subscribe": {"allow": list(self.subscribe)},
        }
        if self.allow_responses:
            config["allow_responses"] = True
        return config


# --- JetStream API subjects ----------------------------------------------------------------


def _api(rest: str) -> str:
    return f"$JS.API.{rest}"


def kv_stream(bucket: str) -> str:
    """The stream behind a key-value bucket."""
    return f"KV_{bucket}"


def object_stream(bucket: str) -> str:
    """The stream behind an object store."""
    return f"OBJ_{bucket}"


def _stream_info(stream: str) -> list[str]:
    return [_api(f"STREAM.INFO.{stream}")]


def durable_reader(spec: ConsumerSpec) -> list[str]:
    """Bind to one existing durable pull consumer, fetch from it and ack its messages."""
    return [
        _api(f"CONSUMER.INFO.{spec.stream}.{spec.durable}"),
        _api(f"CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}"),
        f"$JS.ACK.{spec.stream}.{spec.durable}.>",
    ]


def _ordered_reader(stream: str, *, info: bool) -> list[str]:
    # js.subscribe(..., ordered_consumer=True): an ephemeral push consumer (no name, so the
    # legacy CREATE subject; the server refuses a durable name on it) and the flow-control
    # replies the client sends back once a transfer is large. A KV watcher also reads the
    # consumer's info (its name is random, hence `*`).
    subjects = [_api(f"CONSUMER.CREATE.{stream}"), f"$JS.FC.{stream}.>"]
    return subjects + ([_api(f"CONSUMER.INFO.{stream}.*")] if info else [])


def kv_read(bucket: str, *, get: bool = True, watch: bool = True) -> list[str]:
    """`js.key_value`, and `kv.get` (a message get: mlwarden's buckets do not enable direct
    gets) and/or `kv.keys` / `kv.watch` (an ordered consumer)."""
    stream = kv_stream(bucket)
    subjects = _stream_info(stream)
    if get:
        subjects.append(_api(f"STREAM.MSG.GET.{stream}"))
    if watch:
        subjects += _ordered_reader(stream, info=True)
    return subjects


def kv_write(bucket: str, prefix: str = "") -> list[str]:
    """`kv.put` of keys starting with `prefix` (a JetStream publish on `$KV.<bucket>.<key>`)."""
    return [*_stream_info(kv_stream(bucket)), f"$KV.{bucket}.{prefix}>"]


def object_read(bucket: str) -> list[str]:
    """`js.object_store`, `get_info` (last message of the meta subject) and `get` (an ordered
    consumer on the chunks, its stream found through the stream-names lookup)."""
    stream = object_stream(bucket)
    return [
        *_stream_info(stream),
        _api(f"STREAM.MSG.GET.{stream}"),
        _api("STREAM.NAMES"),
        *_ordered_reader(stream, info=False),
    ]


def object_write(bucket: str, *, purge: bool) -> list[str]:
    """`put`: the replaced object's info, chunks and meta on `$O.<bucket>.>`, then (with `purge`)
    a purge of the replaced object's chunks. Without `purge`, a writer can add objects but not
    replace them: the purge API cannot be limited to one object's chunks."""
    stream = object_stream(bucket)
    subjects = [*_stream_info(stream), _api(f"STREAM.MSG.GET.{stream}"), f"$O.{bucket}.>"]
    return subjects + ([_api(f"STREAM.PURGE.{stream}")] if purge else [])


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


# --- identities ------------------------------------------------------------------------------


def emitted_subjects(service: str) -> list[str]:
    """What a service publishes: the verdicts it may sign, its alerts and its dead letters."""
    verdicts = [subject for subject, signer in VERDICT_SIGNERS.items() if signer == service]
    extra = [Subjects.AUDIT_CHECKPOINTS] if service == "audit-log" else []
    return [*verdicts, *extra, Subjects.alert(service), Subjects.deadletter(service)]


# What each service reads and writes beyond its durables, its emitted subjects and the trust
# store. Kept beside the code it mirrors: data_guard/app.py (records), shared/storage.py
# (dataset objects), artifact_signer/app.py (signed bundles), registry_gate/app.py (journal,
# read back with `kv.keys`), serving_monitor/app.py (watches API keys and schemas),
# audit_log/app.py (last published checkpoint).
_SERVICE_ACCESS: dict[str, list[str]] = {
    "data-guard": [
        *object_read(DATASETS_BUCKET),
        *kv_read(STATE_BUCKET, watch=False),  # a judged version, after a restart
        *kv_write(STATE_BUCKET, "data-guard."),
    ],
    # It replaces its own signed bundles when a build is re-signed: the one identity that purges.
    # It reads data-guard's records for the provenance's dataset decisions (a get, no watch).
    "artifact-signer": [
        *object_read(UPLOADS_BUCKET),
        *object_read(ARTIFACTS_BUCKET),
        *object_write(ARTIFACTS_BUCKET, purge=True),
        *kv_read(STATE_BUCKET, watch=False),
    ],
    "registry-gate": [*kv_read(STATE_BUCKET), *kv_write(STATE_BUCKET, "registry-gate.")],
    # It watches schemas, profiles and flags, and writes the flags its detectors raise (issue 9).
    "serving-monitor": [
        *kv_read(API_KEYS_BUCKET, get=False),
        *kv_read(STATE_BUCKET, get=False),
        *kv_write(STATE_BUCKET, "serving-monitor."),
    ],
    "audit-log": [
        *_stream_info(CHECKPOINTS.name),
        _api(f"STREAM.MSG.GET.{CHECKPOINTS.name}"),
        # The writer lease `audit-log.lease` (audit_log/app.py, shared/lease.py).
        *kv_read(STATE_BUCKET, watch=False),
        *kv_write(STATE_BUCKET, "audit-log."),
    ],
}


def service_permissions(service: str) -> Permissions:
    """A service: its durables, its own verdict/alert/dead-letter subjects, the trust store
    (read only), the buckets it uses, and the request/reply endpoints it serves."""
    if service not in SERVICES:
        raise KeyError(f"unknown service {service!r}")
    publish = [*emitted_subjects(service), *kv_read(TRUST_BUCKET)]
    # `mlwarden health` (a container health check with the service's own credentials) reads
    # the info of mlwarden's streams: metadata, no messages.
    publish += [subject for spec in STREAMS for subject in _stream_info(spec.name)]
    for spec in CONSUMERS[service]:
        publish += durable_reader(spec)
    publish += _SERVICE_ACCESS.get(service, [])
    # ... and asks the other services whether they are alive (`mlwarden health`).
    publish.append(HEALTH_REQUESTS)
    # Every service answers its own liveness request (shared/service.py), hence responses.
    endpoints = (*ENDPOINTS.get(service, ()), Subjects.health(service))
    # A queue subscription permission (`subject queue`) admits only that queue group: replicas
    # share the work and nobody subscribes to the requests beside it.
    subscribe = [inbox(service), *(f"{subject} {service}" for subject in endpoints)]
    return Permissions(Identity(service), _unique(publish), _unique(subscribe), allow_responses=True)


def operator_permissions() -> Permissions:
    """The operator: declares streams, durables and buckets, writes the trust store, API keys
    and feature schemas, and checks health. It may not delete or purge a stream: evidence
    outlives operators (a break-glass admin lives outside these users)."""
    streams = [spec.name for spec in STREAMS]
    streams += [kv_stream(b) for b in KV_BUCKETS] + [object_stream(b) for b in OBJECT_STORES]
    publish: list[str] = []
    for stream in streams:
        publish += [*_stream_info(stream), _api(f"STREAM.CREATE.{stream}")]
    # ensure_topology updates mlwarden's own streams when they exist (a second keys init);
    # buckets it only creates.
    publish += [_api(f"STREAM.UPDATE.{spec.name}") for spec in STREAMS]
    # ... and sets `deny_delete` on the object stores nats-py created (ObjectStoreConfig has no
    # such field).
    publish += [_api(f"STREAM.UPDATE.{object_stream(bucket)}") for bucket in OBJECT_STORES]
    for specs in CONSUMERS.values():
        # ConsumerSpec sets a durable name and no consumer name: nats-py's DURABLE.CREATE form.
        publish += [_api(f"CONSUMER.DURABLE.CREATE.{spec.stream}.{spec.durable}") for spec in specs]
    publish += [*kv_read(TRUST_BUCKET), *kv_write(TRUST_BUCKET)]  # keys init, health
    publish.append(HEALTH_REQUESTS)  # health
    # keys api-key: issue, list (`kv.keys` is a watcher), revoke (a delete or purge marker)
    publish += [*kv_read(API_KEYS_BUCKET), *kv_write(API_KEYS_BUCKET)]
    for prefix in OPERATOR_STATE_PREFIXES:
        publish += kv_write(STATE_BUCKET, prefix)
    # serving clear: reads the flag it clears (a get: what was cleared is shown and audited).
    publish += kv_read(STATE_BUCKET, watch=False)
    return Permissions(OPERATOR, _unique(publish), (inbox(OPERATOR),))


def _producer(identity: Identity) -> Permissions:
    publish = [*EVENTS.subjects, *PREDICTIONS.subjects]
    publish += [Subjects.SERVING_ADMIT, Subjects.ARTIFACT_VERIFY, Subjects.REGISTRY_STATUS]
    # A subscriber verifies a verdict with its signer's key: a get, no listing. Datasets and
    # uploaded models (`shared.artifacts`, in their own bucket) are added, never replaced: no
    # purge right (see the module docstring). `mlw-artifacts`, the signed bundles, stays
    # artifact-signer's alone: an object's metadata subject cannot be scoped by prefix.
    publish += [*object_write(DATASETS_BUCKET, purge=False), *object_write(UPLOADS_BUCKET, purge=False)]
    publish += kv_read(TRUST_BUCKET, watch=False)
    return Permissions(identity, _unique(publish), (inbox(identity), "mlw.verdict.>"))


def producer_permissions() -> Permissions:
    """Data pipelines, training jobs, model servers and people: publish events, put datasets,
    call the public endpoints, and wait for verdicts (verifying them with the trust store).
    The shared `producer` user is for a single producer; give each actor its own
    (`actor_permissions`) as soon as there are several."""
    return _producer(PRODUCER)


#: An actor's NATS user name: one inbox token (no `.`, `*`, `>` or spaces), as `keys` names actors.
_ACTOR_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class InvalidActorName(InputError):
    """A name that cannot be an actor's NATS user: not one subject token, or a built-in identity."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"actor name {name[:80]!r}: {reason}")
        self.name = name
        self.reason = reason


def actor_identity(name: str) -> Identity:
    """`name` as an actor's identity, refused unless it is one subject token and no built-in one."""
    if _ACTOR_RE.fullmatch(name) is None:
        raise InvalidActorName(name, "letters, digits, '_' and '-' only, at most 64, not starting with '-'")
    if name in IDENTITIES:
        raise InvalidActorName(name, "taken by a built-in identity")
    return Identity(name)


def actor_permissions(name: str) -> Permissions:
    """One producer (a person, pipeline or model server) with its own NATS user: the producer's
    rights, but replies on `_INBOX.<name>.>`, so no actor reads another's replies (issue 8: on
    the shared `producer` user every producer could subscribe to `_INBOX.producer.>`)."""
    return _producer(actor_identity(name))


def auditor_permissions() -> Permissions:
    """Auditors: query and prove through audit-log, read the signed checkpoints, the trust
    store and the signed bundles in `mlw-artifacts`, and watch verdicts, alerts and dead
    letters live. They change nothing."""
    publish = [
        "mlw.audit.>",
        *_stream_info(CHECKPOINTS.name),
        _api(f"STREAM.MSG.GET.{CHECKPOINTS.name}"),
        *kv_read(TRUST_BUCKET, watch=False),  # audit-log's key, to check the checkpoints
        # `registry bom` reads artifact-signer's signed checks statement (read only, issue 11).
        *object_read(ARTIFACTS_BUCKET),
    ]
    subscribe = [inbox(AUDITOR), f"{Subjects.ALERT_PREFIX}.>", f"{Subjects.DEADLETTER_PREFIX}.>", "mlw.verdict.>"]
    return Permissions(AUDITOR, _unique(publish), _unique(subscribe))


def permissions_for(identity: str) -> Permissions:
    """The permissions of one identity."""
    if identity in SERVICES:
        return service_permissions(identity)
    builders = {OPERATOR: operator_permissions, PRODUCER: producer_permissions, AUDITOR: auditor_permissions}
    if identity not in builders:
        raise KeyError(f"unknown identity {identity!r}; one of {', '.join(IDENTITIES)}")
    return builders[Identity(identity)]()


def all_permissions() -> dict[Identity, Permissions]:
    """Every identity's permissions, in `IDENTITIES` order."""
    return {identity: permissions_for(identity) for identity in IDENTITIES}


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether NATS subject `subject` matches `pattern` (`*` one token, `>` the rest)."""
    pattern_tokens = pattern.split(" ", 1)[0].split(".")
    tokens = subject.split(".")
    for i, token in enumerate(pattern_tokens):
        if token == ">":
            return len(tokens) > i
        if i >= len(tokens) or (token != "*" and token != tokens[i]):
            return False
    return len(tokens) == len(pattern_tokens)


def may_publish(permissions: Permissions, subject: str) -> bool:
    """Whether `permissions` allow publishing on `subject` (for tests and `nats-config --check`)."""
    return any(subject_matches(p, subject) for p in permissions.publish)
