"""The secured deployment on a real nats-server started with `mlwarden nats-config`'s output:
every identity connects with its own user; the pipeline works end to end without a single
permissions violation, and each attack below is refused by the server itself."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import nats
import orjson
import pytest
from nats.aio.client import Client as Nats
from nats.js.errors import APIError
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from mlwarden.bootstrap import actor_key, bootstrap
from mlwarden.nats_config import NatsConfig, add_actor_identity, read_env, reload_server, write_config
from mlwarden.ops import health
from mlwarden.services import factory
from services.serving_monitor.keystore import delete_key_on_bus, issue_key_on_bus, list_keys_on_bus
from shared.bus import TrustConflict, connect, open_nats
from shared.client import Client
from shared.embedded import free_port, nats_server_binary
from shared.errors import InputError
from shared.events import (
    AdmitReply,
    AdmitRequest,
    ArtifactVerifyReply,
    ArtifactVerifyRequest,
    AuditQuery,
    DatasetRef,
    RegistryStatus,
    RegistryStatusRequest,
)
from shared.permissions import subject_matches
from shared.service import ServiceApp
from shared.settings import Settings
from shared.signing import SigningKey
from shared.topology import (
    API_KEYS_BUCKET,
    ARTIFACTS_BUCKET,
    CHECKPOINTS,
    CONSUMERS,
    DATASETS_BUCKET,
    EVENTS,
    TRUST_BUCKET,
    VERDICTS,
    Subjects,
    ensure_topology,
)
from tests._poll import DEFAULT_TIMEOUT_S

# Real digests (of b"a" and b"b"): the gate refuses placeholder digests such as "a" * 64 (issue 12).
LOCK = (
    f"scikit-learn==1.9.1 --hash=sha256:{hashlib.sha256(b'a').hexdigest()}\n"
    f"numpy==2.4.6 --hash=sha256:{hashlib.sha256(b'b').hexdigest()}\n"
)
# nats-server 2.15 logs: ... - "$G/user:data-guard" - Publish Violation - Subject "mlw.verdict.artifact"
VIOLATION = re.compile(r'"[^"/]*/user:([^"]+)" - (Publish|Subscription) Violation - Subject "([^"]+)"')


@dataclass
class Secured:
    """A nats-server running the generated config, and settings for each identity."""

    config: NatsConfig
    data_dir: Path
    log: Path
    pid: int
    apps: dict[str, ServiceApp] = field(default_factory=dict)

    def settings(self, identity: str) -> Settings:
        """Settings of one identity, from its generated env file (or one added since)."""
        env = read_env(self.config.out_dir / f"{identity}.env")
        return Settings(
            data_dir=self.data_dir,
            nats_url=env["MLW_NATS_URL"],
            declare_topology=env.get("MLW_DECLARE_TOPOLOGY", "true") == "true",
        )

    def violations(self) -> list[tuple[str, str, str]]:
        """(user, kind, subject) of every permissions violation the server logged."""
        return VIOLATION.findall(self.log.read_text()) if self.log.exists() else []

    async def start(self, *names: str) -> None:
        """Start services in-process, each with its own credentials."""
        for name in names:
            svc = factory(name)(self.settings(name))
            await svc.start()  # a start-up that fails half-way keeps no connection
            self.apps[name] = svc


@pytest.fixture
def secured_server(tmp_path: Path) -> Iterator[tuple[NatsConfig, Path, int]]:
    """nats-server with JetStream on a free port, configured by `write_config` (with two actors
    that have their own users)."""
    port = free_port()
    config = write_config(
        tmp_path / "nats-config", url=f"nats://127.0.0.1:{port}", store_dir=tmp_path / "js", actors=("alice", "bob")
    )
    log = tmp_path / "nats-server.log"
    process = subprocess.Popen(
        [nats_server_binary(), "-c", str(config.server_conf), "-l", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + DEFAULT_TIMEOUT_S
        while True:
            assert process.poll() is None, log.read_text() if log.exists() else "nats-server exited"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "nats-server did not listen"
                time.sleep(0.05)
        yield config, log, process.pid
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
async def secured(secured_server: tuple[NatsConfig, Path, int], tmp_path: Path) -> AsyncIterator[Secured]:
    """The operator has declared the topology and registered every service key."""
    config, log, pid = secured_server
    system = Secured(config, tmp_path / "data", log, pid)
    nc = await connect(system.settings("operator"))
    await bootstrap(nc.jetstream(), system.settings("operator"))
    await nc.drain()
    try:
        yield system
    finally:
        for svc in system.apps.values():
            await svc.stop()


class Refusals:
    """Permissions violations the server reported to one raw connection."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def on_error(self, exc: Exception) -> None:
        """nats-py error callback."""
        self.errors.append(str(exc))

    async def wait_for(self, subject: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
        """The violation naming `subject` (fails the test when none arrives)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            # nats-py lower-cases the server's message.
            for error in self.errors:
                if "permissions violation" in error.lower() and subject.lower() in error.lower():
                    return error
            await asyncio.sleep(0.05)
        raise AssertionError(f"no permissions violation for {subject}; saw {self.errors}")


async def _raw(system: Secured, identity: str, stack: AsyncExitStack) -> tuple[Nats, Refusals]:
    refusals = Refusals()
    settings = system.settings(identity)
    nc = await open_nats(
        servers=settings.nats_url, error_cb=refusals.on_error, connect_timeout=5, inbox_prefix=settings.inbox_prefix
    )
    stack.push_async_callback(nc.close)
    return nc, refusals


def _model_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    x, y = load_iris(return_X_y=True)
    (root / "model.pkl").write_bytes(pickle.dumps(LogisticRegression(max_iter=500).fit(x, y)))
    (root / "requirements.txt").write_text(LOCK)
    return root


def _csv(path: Path) -> Path:
    x, y = load_iris(return_X_y=True)
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    rows = [",".join(f"{v:.6g}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


async def test_pipeline_runs_end_to_end_with_per_identity_credentials(secured: Secured) -> None:
    await secured.start("audit-log", "data-guard", "artifact-signer", "registry-gate", "serving-monitor")
    producer, auditor = secured.settings("producer"), secured.settings("auditor")
    alice, bob, carol = (actor_key(producer, name) for name in ("alice", "bob", "carol"))
    async with (
        Client.connect(producer, source="tests/producer") as client,
        client.watch(("mlw.verdict.>",)) as watcher,
    ):
        # (1) data-guard reads the upload from the object store and judges it.
        data = _csv(secured.data_dir / "iris.csv")
        upload = await client.upload_dataset(data, dataset="iris", version="1", label="label", uploader="pipeline")
        dataset = await watcher.wait(lambda e: e.type == Subjects.VERDICT_DATASET, 30)
        assert dataset is not None and dataset.data.decision in ("pass", "warn"), dataset
        # (2) artifact-signer signs a build trained on it.
        sha = hashlib.sha256(data.read_bytes()).hexdigest()
        build = await client.model_built(
            _model_dir(secured.data_dir / "files" / "artifacts" / "iris-1"),
            model="iris",
            version="1",
            builder="ci-bot",
            lockfile=secured.data_dir / "files" / "artifacts" / "iris-1" / "requirements.txt",
            datasets=[DatasetRef(dataset="iris", version="1", sha256=sha)],
        )
        artifact = await watcher.wait(lambda e: e.type == Subjects.VERDICT_ARTIFACT, 60)
        assert artifact is not None and artifact.data.decision == "pass", artifact.data.findings
        # (3) registry-gate reads both verdicts, the request and two approvals, and promotes.
        request = await client.request_promotion(
            alice, model="iris", version="1", stage="production", root_digest=artifact.data.root_digest
        )
        for reviewer in (bob, carol):
            await client.approve(reviewer, request_id=request.id, model="iris", version="1", stage="production")
        promoted = await watcher.wait(
            lambda e: e.type == Subjects.VERDICT_PROMOTION and e.data.decision == "promoted", 30
        )
        assert promoted is not None, [e.data for e in watcher.events if e.type == Subjects.VERDICT_PROMOTION]
        # (4) serving-monitor answers on its queue group: an unknown key is refused, a key the
        # operator issued (after re-running its bootstrap, which updates what exists) is known.
        refused = await client.admit(AdmitRequest(api_key="nope", model="iris", inputs=[{"f0": 1.0}]))
        assert not refused.allowed and refused.client is None
        operator = secured.settings("operator")
        async with Client.connect(operator, source="tests/operator") as ops:
            await bootstrap(ops.js, operator)
            api_key = await issue_key_on_bus(ops.js, operator, "webapp", ["iris"])
        deadline = time.monotonic() + DEFAULT_TIMEOUT_S
        while (
            known := await client.admit(AdmitRequest(api_key=api_key, model="iris", inputs=[{"f0": 1.0}]))
        ).client is None:
            assert time.monotonic() < deadline, known
            await asyncio.sleep(0.1)
        # (5) artifact-signer re-verifies the signed bundle from its object store on request.
        raw = await client.request(
            Subjects.ARTIFACT_VERIFY, ArtifactVerifyRequest(model="iris", version="1").model_dump_json().encode()
        )
        assert ArtifactVerifyReply.model_validate_json(raw).ok, raw
    # (6) audit-log stored every event and verdict; the auditor reads them back, and reads the
    # signed checkpoints and audit-log's trusted key as `mlwarden audit verify` does.
    wanted = {upload.id, build.id, request.id, dataset.id, artifact.id, promoted.id}
    async with Client.connect(auditor, source="tests/auditor") as audit:
        deadline = time.monotonic() + DEFAULT_TIMEOUT_S
        while True:
            page = await audit.audit_query(AuditQuery(limit=1000))
            missing = wanted - {entry.event_id for entry in page.entries}
            if not missing or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        info = await audit.js.stream_info(CHECKPOINTS.name)
        if info.state.messages:
            await audit.js.get_msg(CHECKPOINTS.name, info.state.last_seq)
        assert (await (await audit.js.key_value(TRUST_BUCKET)).get("audit-log")).value
    assert not missing
    # (7) compose's health check runs with each service's own credentials, and every service
    # answers its liveness request.
    for name in ("data-guard", "audit-log", "operator"):
        report = await health(secured.settings(name))
        assert report.problems == [], (name, report.problems)
        assert all(row.alive for row in report.services)
    # Least privilege that works: nothing above needed a right its identity lacks.
    assert secured.violations() == []


async def test_service_cannot_publish_another_services_verdict(secured: Secured) -> None:
    async with AsyncExitStack() as stack:
        nc, refusals = await _raw(secured, "data-guard", stack)
        js = nc.jetstream(timeout=1.0)
        with pytest.raises(nats.errors.TimeoutError):
            await js.publish(Subjects.VERDICT_ARTIFACT, b'{"forged": true}')
        await refusals.wait_for(Subjects.VERDICT_ARTIFACT)
        # Its own verdict subject is fine.
        await js.publish(Subjects.VERDICT_DATASET, b"{}", headers={"Nats-Msg-Id": "own"})
        operator = await connect(secured.settings("operator"))
        stack.push_async_callback(operator.close)
        info = await operator.jetstream().stream_info(VERDICTS.name, subjects_filter=">")
    assert info.state.subjects == {Subjects.VERDICT_DATASET: 1}
    assert ("data-guard", "Publish", Subjects.VERDICT_ARTIFACT) in secured.violations()


async def test_producer_cannot_write_the_trust_store(secured: Secured) -> None:
    rogue = SigningKey.generate("data-guard")
    async with AsyncExitStack() as stack:
        nc, refusals = await _raw(secured, "producer", stack)
        kv = await nc.jetstream(timeout=1.0).key_value(TRUST_BUCKET)  # reading it is allowed
        with pytest.raises(nats.errors.TimeoutError):
            await kv.put("data-guard", rogue.public_b64().encode())
        await refusals.wait_for(f"$KV.{TRUST_BUCKET}.data-guard")
        # The trusted key is unchanged, and a service cannot re-register itself either.
        assert (await kv.get("data-guard")).value != rogue.public_b64().encode()
        guard, guard_refusals = await _raw(secured, "data-guard", stack)
        guard_kv = await guard.jetstream(timeout=1.0).key_value(TRUST_BUCKET)
        with pytest.raises(nats.errors.TimeoutError):
            await guard_kv.put("data-guard", rogue.public_b64().encode())
        await guard_refusals.wait_for(f"$KV.{TRUST_BUCKET}.data-guard")


async def test_service_cannot_purge_or_delete_the_verdict_stream(secured: Secured) -> None:
    async with AsyncExitStack() as stack:
        for service in ("audit-log", "registry-gate"):
            nc, refusals = await _raw(secured, service, stack)
            js = nc.jetstream(timeout=1.0)
            with pytest.raises(nats.errors.TimeoutError):
                await js.purge_stream(VERDICTS.name)
            await refusals.wait_for(f"$JS.API.STREAM.PURGE.{VERDICTS.name}")
            with pytest.raises(nats.errors.TimeoutError):
                await js.delete_stream(VERDICTS.name)
            await refusals.wait_for(f"$JS.API.STREAM.DELETE.{VERDICTS.name}")
            # Nor can it loosen the stream's protections.
            with pytest.raises(nats.errors.TimeoutError):
                await js.update_stream(VERDICTS.config())
            await refusals.wait_for(f"$JS.API.STREAM.UPDATE.{VERDICTS.name}")
        operator = await connect(secured.settings("operator"))
        stack.push_async_callback(operator.close)
        # The operator declares, but evidence outlives operators too.
        with pytest.raises((nats.errors.TimeoutError, APIError)):
            await operator.jetstream(timeout=1.0).delete_stream(VERDICTS.name)
        assert (await operator.jetstream().stream_info(VERDICTS.name)).config.name == VERDICTS.name


async def test_producer_cannot_read_a_services_durable(secured: Secured) -> None:
    spec = CONSUMERS["data-guard"][0]
    async with AsyncExitStack() as stack:
        nc, refusals = await _raw(secured, "producer", stack)
        js = nc.jetstream(timeout=1.0)
        # Binding looks the durable up first: refused.
        with pytest.raises(nats.errors.TimeoutError):
            await js.pull_subscribe(spec.filter_subjects[0], durable=spec.durable, stream=spec.stream)
        await refusals.wait_for(f"$JS.API.CONSUMER.INFO.{spec.stream}.{spec.durable}")
        # Fetching without the lookup: refused as well, and nothing is delivered.
        sub = await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=1.0)
        await refusals.wait_for(f"$JS.API.CONSUMER.MSG.NEXT.{spec.stream}.{spec.durable}")
        # Another service fares no better with someone else's durable.
        guard, guard_refusals = await _raw(secured, "data-guard", stack)
        other = CONSUMERS["registry-gate"][1]
        sub = await guard.jetstream(timeout=1.0).pull_subscribe_bind(durable=other.durable, stream=other.stream)
        with pytest.raises(nats.errors.TimeoutError):
            await sub.fetch(1, timeout=1.0)
        await guard_refusals.wait_for(f"$JS.API.CONSUMER.MSG.NEXT.{other.stream}.{other.durable}")


async def test_producer_cannot_forge_service_subjects_or_snoop_requests(secured: Secured) -> None:
    async with AsyncExitStack() as stack:
        nc, refusals = await _raw(secured, "producer", stack)
        await nc.publish(Subjects.VERDICT_PROMOTION, orjson.dumps({"decision": "promoted"}))
        await refusals.wait_for(Subjects.VERDICT_PROMOTION)
        await nc.subscribe(Subjects.SERVING_ADMIT, queue="serving-monitor")
        await refusals.wait_for(Subjects.SERVING_ADMIT)
        await nc.subscribe(Subjects.alert("serving-monitor"))
        await refusals.wait_for(Subjects.alert("serving-monitor"))


async def test_only_registry_gate_may_publish_a_policy_verdict(secured: Secured) -> None:
    # A forged "applied" policy verdict would tell operators a policy is in force that is not.
    async with AsyncExitStack() as stack:
        for identity in ("producer", "data-guard"):
            nc, refusals = await _raw(secured, identity, stack)
            await nc.publish(Subjects.VERDICT_POLICY, orjson.dumps({"decision": "applied"}))
            await refusals.wait_for(Subjects.VERDICT_POLICY)
            assert (identity, "Publish", Subjects.VERDICT_POLICY) in secured.violations()


async def test_one_identity_cannot_read_the_replies_meant_for_another(secured: Secured) -> None:
    async with AsyncExitStack() as stack:
        nc, refusals = await _raw(secured, "producer", stack)
        # Admission replies carry client names; audit replies carry the trail.
        await nc.subscribe("_INBOX.auditor.>")
        await refusals.wait_for("_INBOX.auditor.>")
        await nc.subscribe("_INBOX.>")
        await refusals.wait_for("_INBOX.>")
        # Its own inbox works: a request/reply round trip to a public endpoint is answered.
        await secured.start("serving-monitor")
        request = AdmitRequest(api_key="nope", model="iris", inputs=[{"f0": 1.0}])
        msg = await nc.request(Subjects.SERVING_ADMIT, request.model_dump_json().encode(), timeout=10)
        assert msg.subject.startswith("_INBOX.producer.")
        reply = AdmitReply.model_validate_json(msg.data)
        assert not reply.allowed and reply.client is None
    assert secured.violations() == [
        ("producer", "Subscription", "_INBOX.auditor.>"),
        ("producer", "Subscription", "_INBOX.>"),
    ]


def test_a_refused_command_names_the_subject_and_exits_2(secured: Secured) -> None:
    # The producer may not query the audit trail: the server refuses the publish, and the
    # command says so at once instead of timing out (issue 13).
    env = {**os.environ, **read_env(secured.config.env_files["producer"]), "MLW_DATA_DIR": str(secured.data_dir)}  # type: ignore[index]
    done = subprocess.run(
        [sys.executable, "-m", "mlwarden", "audit", "query"], env=env, capture_output=True, timeout=60, check=False
    )
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 2, done
    assert len(lines) == 1, lines
    assert "permissions violation" in lines[0] and "'mlw.audit.query'" in lines[0], lines


async def test_service_without_a_registered_key_refuses_to_start(secured: Secured) -> None:
    (secured.data_dir / "keys" / "data-guard.pem").unlink()  # a fresh key nobody trusts
    with pytest.raises(TrustConflict, match="keys init"):
        await secured.start("data-guard")


# --- object stores (issue 8, "The bus") --------------------------------------------------------


async def _dataset_bytes(system: Secured, stack: AsyncExitStack, key: str) -> bytes:
    guard, _ = await _raw(system, "data-guard", stack)  # the reader of the datasets
    store = await guard.jetstream().object_store(DATASETS_BUCKET)
    return bytes((await store.get(key)).data or b"")


async def test_producer_cannot_purge_or_delete_the_object_stores(secured: Secured) -> None:
    # Before: the producer's allow-list held $JS.API.STREAM.PURGE.OBJ_mlw-datasets (nats-py's
    # put purges the chunks of the object it replaces), so one producer wiped every dataset.
    data = _csv(secured.data_dir / "iris.csv")
    async with Client.connect(secured.settings("producer"), source="tests/producer") as client:
        await client.upload_dataset(data, dataset="iris", version="1", label="label", uploader="pipeline")
    async with AsyncExitStack() as stack:
        nc, refusals = await _raw(secured, "producer", stack)
        js = nc.jetstream(timeout=1.0)
        for bucket in (DATASETS_BUCKET, ARTIFACTS_BUCKET):
            stream = f"OBJ_{bucket}"
            with pytest.raises(nats.errors.TimeoutError):
                await js.purge_stream(stream)
            await refusals.wait_for(f"$JS.API.STREAM.PURGE.{stream}")
            with pytest.raises(nats.errors.TimeoutError):
                await js.purge_stream(stream, subject=f"$O.{bucket}.C.>")
            with pytest.raises(nats.errors.TimeoutError):
                await js.delete_stream(stream)
            await refusals.wait_for(f"$JS.API.STREAM.DELETE.{stream}")
            with pytest.raises(nats.errors.TimeoutError):
                await js.delete_msg(stream, 1)
            await refusals.wait_for(f"$JS.API.STREAM.MSG.DELETE.{stream}")
        assert await _dataset_bytes(secured, stack, "iris/1") == data.read_bytes()
    assert {("producer", "Publish")} == {(user, kind) for user, kind, _ in secured.violations()}


async def test_object_stores_refuse_message_deletes_but_keep_replacement(secured: Secured) -> None:
    async with AsyncExitStack() as stack:
        signer, _ = await _raw(secured, "artifact-signer", stack)
        operator = await connect(secured.settings("operator"))
        stack.push_async_callback(operator.close)
        for bucket in (DATASETS_BUCKET, ARTIFACTS_BUCKET):
            info = await operator.jetstream().stream_info(f"OBJ_{bucket}")
            # deny_delete: no single-message delete through the API, whoever asks. Not deny_purge:
            # the server refuses the roll-up every object put sends ("roll-ups require the purge
            # permission"), so a stream-level purge ban would make the stores read-only.
            assert info.config.deny_delete and not info.config.deny_purge
        # artifact-signer replaces its own objects (a re-signed bundle): the old chunks go.
        store = await signer.jetstream().object_store(ARTIFACTS_BUCKET)
        await store.put("iris/1/model.sig", b"first")
        await store.put("iris/1/model.sig", b"second")
        assert (await store.get("iris/1/model.sig")).data == b"second"
        state = (await operator.jetstream().stream_info(f"OBJ_{ARTIFACTS_BUCKET}")).state
        assert state.messages == 2  # one chunk and one meta: the first version is gone
    assert secured.violations() == []


async def test_producer_uploads_are_idempotent_and_never_overwrite(secured: Secured) -> None:
    data = _csv(secured.data_dir / "iris.csv")
    other = secured.data_dir / "other.csv"
    other.write_text(data.read_text().replace("label", "target"))
    async with Client.connect(secured.settings("producer"), source="tests/producer") as client:
        await client.upload_dataset(data, dataset="iris", version="1", label="label", uploader="pipeline")
        # A retried upload of the same bytes is a no-op, not a replacement (which needs a purge).
        await client.upload_dataset(data, dataset="iris", version="1", label="label", uploader="pipeline")
        # Different bytes under a version that exists: refused; publish a new version instead.
        with pytest.raises(InputError, match="already stored"):
            await client.upload_dataset(other, dataset="iris", version="1", label="target", uploader="pipeline")
        await client.upload_dataset(other, dataset="iris", version="2", label="target", uploader="pipeline")
    async with AsyncExitStack() as stack:
        assert await _dataset_bytes(secured, stack, "iris/1") == data.read_bytes()
        assert await _dataset_bytes(secured, stack, "iris/2") == other.read_bytes()
    assert secured.violations() == []


# --- request/reply subjects are not stored (issue 8, "The bus") ------------------------------


async def test_registry_status_requests_are_not_stored_or_dead_lettered(secured: Secured) -> None:
    # Before: MLW_EVENTS captured mlw.registry.>, so each status request was stored, fetched by
    # registry-gate's durable as an event it cannot parse, and dead-lettered (200 requests, 200
    # dead letters).
    await secured.start("registry-gate")
    spec = CONSUMERS["registry-gate"][0]
    async with AsyncExitStack() as stack:
        operator = await connect(secured.settings("operator"))
        stack.push_async_callback(operator.close)
        ojs = operator.jetstream()
        before = (await ojs.stream_info(EVENTS.name)).state.messages
        async with Client.connect(secured.settings("producer"), source="tests/producer") as client:
            body = RegistryStatusRequest(model="iris").model_dump_json().encode()
            for _ in range(200):
                reply = RegistryStatus.model_validate_json(await client.request(Subjects.REGISTRY_STATUS, body))
                assert reply.promotions == []
        assert (await ojs.stream_info(EVENTS.name)).state.messages == before
        # Whatever registry-gate's durable had to do, it has done: then count the dead letters.
        gate, _ = await _raw(secured, "registry-gate", stack)
        deadline = time.monotonic() + DEFAULT_TIMEOUT_S
        while (info := await gate.jetstream().consumer_info(spec.stream, spec.durable)).num_pending or (
            info.num_ack_pending
        ):
            assert time.monotonic() < deadline, info
            await asyncio.sleep(0.1)
        dead = (await ojs.stream_info(VERDICTS.name, subjects_filter=f"{Subjects.DEADLETTER_PREFIX}.>")).state
        assert not dead.subjects and dead.messages == 0
    assert secured.violations() == []


async def test_an_existing_events_stream_is_narrowed_in_place(secured: Secured) -> None:
    # A deployment upgraded from the old topology: ensure_topology updates the stream in place,
    # and the durables (and their positions) survive.
    async with AsyncExitStack() as stack:
        operator = await connect(secured.settings("operator"))
        stack.push_async_callback(operator.close)
        js = operator.jetstream()
        old = EVENTS.config()
        old.subjects = ["mlw.dataset.>", "mlw.model.>", "mlw.registry.>"]
        await js.update_stream(old)
        await ensure_topology(js)
        info = await js.stream_info(EVENTS.name)
        assert sorted(info.config.subjects or []) == sorted(EVENTS.subjects)
        assert not any(subject_matches(s, Subjects.REGISTRY_STATUS) for s in info.config.subjects or [])
        for owner, specs in CONSUMERS.items():
            nc, _ = await _raw(secured, owner, stack)
            for spec in (s for s in specs if s.stream == EVENTS.name):
                assert (await nc.jetstream().consumer_info(spec.stream, spec.durable)).config.durable_name
    assert secured.violations() == []


# --- per-actor reply inboxes (issue 8, "The bus") --------------------------------------------


async def test_one_actor_cannot_read_another_actors_replies(secured: Secured) -> None:
    # Before: every producer shared the `producer` user, so any of them could subscribe to
    # `_INBOX.producer.>` and read the replies (admission decisions, statuses) meant for another.
    async with AsyncExitStack() as stack:
        alice, refusals = await _raw(secured, "alice", stack)
        for other in ("bob", "producer"):
            await alice.subscribe(f"_INBOX.{other}.>")
            await refusals.wait_for(f"_INBOX.{other}.>")
        # Each actor's own request/reply round trips work: replies arrive on its own inbox.
        for name in ("alice", "bob"):
            nc, _ = await _raw(secured, name, stack)  # it may subscribe to `_INBOX.<name>.>` only
            assert (await nc.jetstream().stream_info(f"OBJ_{DATASETS_BUCKET}")).config.deny_delete
    assert {(user, kind) for user, kind, _ in secured.violations()} == {("alice", "Subscription")}


async def test_a_refused_connection_leaves_no_socket_open(secured: Secured) -> None:
    # nats-py keeps the socket of a connection the server refused (here: a wrong password) open
    # until the garbage collector finds it; one CI run failed on that ResourceWarning in the
    # next test. `open_nats` closes it.
    wrong = re.sub(r"//[^@]+@", "//producer:wrong@", secured.settings("producer").nats_url)
    refusals = Refusals()
    refused = False
    try:
        await open_nats(
            servers=wrong,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
            error_cb=refusals.on_error,
        )
    except nats.errors.Error as exc:
        refused = "Authorization Violation" in str(exc)
    assert refused, refusals.errors
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


async def _connect_when_admitted(system: Secured, identity: str, stack: AsyncExitStack) -> tuple[Nats, Refusals]:
    url = system.settings(identity).nats_url
    deadline = time.monotonic() + DEFAULT_TIMEOUT_S
    while True:
        try:
            probe = await open_nats(servers=url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2)
        except (nats.errors.Error, OSError):
            # Authorization is refused until the server has reloaded its users.
            assert time.monotonic() < deadline, f"{identity} was never admitted"
            await asyncio.sleep(0.1)
            continue
        await probe.close()
        return await _raw(system, identity, stack)


async def test_an_actor_added_to_a_running_server_gets_its_own_inbox(secured: Secured) -> None:
    env = add_actor_identity(secured.config.out_dir, "carol")
    assert env.stat().st_mode & 0o777 == 0o600
    reload_server(secured.pid)
    async with AsyncExitStack() as stack:
        carol, refusals = await _connect_when_admitted(secured, "carol", stack)
        assert (await carol.jetstream().stream_info(f"OBJ_{DATASETS_BUCKET}")).config.name
        await carol.subscribe("_INBOX.alice.>")
        await refusals.wait_for("_INBOX.alice.>")
        # The users that existed keep their passwords through the reload.
        for name in ("alice", "producer", "operator"):
            await _raw(secured, name, stack)
    assert {(user, kind) for user, kind, _ in secured.violations()} == {("carol", "Subscription")}


async def test_operator_lists_and_revokes_api_keys_within_its_rights(secured: Secured) -> None:
    operator = secured.settings("operator")
    async with Client.connect(operator, source="tests/operator") as ops:
        api_key = await issue_key_on_bus(ops.js, operator, "webapp", ["iris"])
        records, unreadable = await list_keys_on_bus(ops.js)
        assert [r.client for r in records] == ["webapp"] and unreadable == []
        assert api_key.startswith(f"mlw_{records[0].key_id}_")
        await delete_key_on_bus(ops.js, records[0].key_id)
        assert await list_keys_on_bus(ops.js) == ([], [])
    async with AsyncExitStack() as stack:
        # The producer can do neither: API keys are the operator's.
        nc, refusals = await _raw(secured, "producer", stack)
        with pytest.raises(nats.errors.TimeoutError):
            await nc.jetstream(timeout=1.0).key_value(API_KEYS_BUCKET)
        await refusals.wait_for(f"$JS.API.STREAM.INFO.KV_{API_KEYS_BUCKET}")
    assert {(user, kind) for user, kind, _ in secured.violations()} == {("producer", "Publish")}


async def test_signer_lists_its_bundles_and_the_auditor_reads_them_for_a_bom(secured: Secured) -> None:
    """issue 11: artifact-signer's OSV re-check lists `mlw-artifacts`; `registry bom` (auditor) gets one."""
    async with AsyncExitStack() as stack:
        signer, _ = await _raw(secured, "artifact-signer", stack)
        auditor, _ = await _raw(secured, "auditor", stack)
        store = await signer.jetstream().object_store(ARTIFACTS_BUCKET)
        await store.put("bundles/iris/1/checks.sigstore.json", b"{}")
        assert [o.name for o in await store.list(ignore_deletes=True)] == ["bundles/iris/1/checks.sigstore.json"]
        readable = await auditor.jetstream().object_store(ARTIFACTS_BUCKET)
        assert (await readable.get("bundles/iris/1/checks.sigstore.json")).data == b"{}"
    assert secured.violations() == []
