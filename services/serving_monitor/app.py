"""serving-monitor's wiring: answer `mlw.serving.admit`, watch prediction logs for abuse.

Key records, feature schemas, reference profiles and flagged clients are followed live from their
key-value buckets (a watcher, so a flood of made-up key ids costs no bucket look-ups). A fail-level
extraction or OOD alert flags its client in `mlw-state` (`flags.py`): every instance, and this
one after a restart, then denies or slows it at admission until an operator clears the flag.
Denials are published as signed `mlw.verdict.admission` events, coalesced per client, model and
reason every half second so a flood cannot turn into a flood of audit rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

import numpy as np
import orjson
from nats.js.kv import KV_DEL, KV_PURGE

from services.serving_monitor.abuse import AlertSpec, record_invalid
from services.serving_monitor.admission import Admission
from services.serving_monitor.auth import ApiKeyRecord, ApiKeyStore
from services.serving_monitor.detectors import Detectors
from services.serving_monitor.errors import ServingMonitorError
from services.serving_monitor.flags import (
    FLAG_PREFIX,
    Flag,
    FlagTable,
    client_of_key,
    flag_from_alert,
    flag_key,
    replaces,
)
from services.serving_monitor.keystore import PROFILE_PREFIX, SCHEMA_PREFIX, load_pepper, put_flag_on_bus
from services.serving_monitor.ood import ReferenceProfile
from services.serving_monitor.ratelimit import GcraLimiter
from services.serving_monitor.settings import FlagPolicy, ServingSettings
from services.serving_monitor.validation import FeatureSchema, SchemaRegistry
from shared.bus import ServiceRuntime
from shared.envelope import Envelope
from shared.errors import SignatureError
from shared.events import AdmissionVerdict, AdmitReply, AdmitRequest, PredictionBatch
from shared.service import ServiceApp
from shared.settings import Settings
from shared.topology import API_KEYS_BUCKET, STATE_BUCKET, Subjects

SERVICE = "serving-monitor"
#: The trust-store role an actor needs to log predictions.
MODEL_SERVER_ROLE = "model-server"
log = logging.getLogger("mlwarden.serving-monitor")


class Monitor:
    """The live state: keys, schemas, profiles, flags, limiter, detectors and pending denial counts."""

    def __init__(self, runtime: ServiceRuntime, settings: Settings, cfg: ServingSettings) -> None:
        self.runtime = runtime
        self.keys = ApiKeyStore(load_pepper(settings))
        self.schemas = SchemaRegistry()
        self.limiter = GcraLimiter(cfg.rate_per_second, cfg.burst)
        self.flags = FlagTable()
        slow = GcraLimiter(cfg.flagged_rate_per_second, cfg.flagged_burst)
        self.admission = Admission(
            self.keys,
            self.limiter,
            self.schemas,
            self.flags,
            slow_limiter=slow if cfg.flagged_policy is FlagPolicy.SLOW else None,
        )
        self.detectors = Detectors.from_settings(cfg)
        self.profiles: dict[str, ReferenceProfile] = {}
        self.flush_s = cfg.denial_flush_s
        self.denials: Counter[tuple[str, str, str]] = Counter()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Follow the key and schema buckets; flush denial counts periodically."""
        js = self.runtime.js
        keys_kv = await js.key_value(API_KEYS_BUCKET)
        state_kv = await js.key_value(STATE_BUCKET)
        key_watch = await keys_kv.watchall()
        schema_watch = await state_kv.watch(SCHEMA_PREFIX + ">")
        profile_watch = await state_kv.watch(PROFILE_PREFIX + ">")
        flag_watch = await state_kv.watch(FLAG_PREFIX + ">")
        self.tasks = [
            asyncio.create_task(self._follow(key_watch, self._on_key, self.keys.remove), name="sm:keys"),
            asyncio.create_task(self._follow(schema_watch, self._on_schema), name="sm:schemas"),
            asyncio.create_task(self._follow(profile_watch, self._on_profile), name="sm:profiles"),
            asyncio.create_task(self._follow(flag_watch, self._on_flag, self._on_flag_cleared), name="sm:flags"),
            asyncio.create_task(self._flush_loop(), name="sm:denials"),
        ]
        # The watchers deliver the current values first; wait briefly so the first requests
        # after start-up see the keys that already exist.
        await asyncio.sleep(0.2)

    async def stop(self) -> None:
        """Cancel the background tasks and publish what is pending."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.flush()

    async def _follow(self, watcher: Any, apply: Any, remove: Any = None) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            if entry.operation in (KV_DEL, KV_PURGE):
                # A delete marker has an empty value: it is not a record to parse (issue 8: the
                # parse failed, was logged and ignored, and a deleted API key kept working).
                if remove is not None:
                    remove(entry.key)
                continue
            if entry.value is None:
                continue
            try:
                apply(entry.key, entry.value)
            except (ServingMonitorError, ValueError) as exc:
                # A forged or malformed record is refused, never trusted.
                log.warning("serving-monitor: refused %s: %s", entry.key, exc)

    def _on_key(self, key: str, value: bytes) -> None:
        record = ApiKeyRecord.from_dict(orjson.loads(value))
        if record.key_id != key:
            raise ValueError(f"record for {record.key_id} stored under {key}")
        self.keys.add(record)

    def _on_schema(self, key: str, value: bytes) -> None:
        schema = FeatureSchema.model_validate(orjson.loads(value))
        if SCHEMA_PREFIX + schema.model != key:
            raise ValueError(f"schema for {schema.model} stored under {key}")
        self.schemas.register(schema)

    def _on_profile(self, key: str, value: bytes) -> None:
        profile = ReferenceProfile.from_dict(orjson.loads(value))
        if PROFILE_PREFIX + profile.model != key:
            raise ValueError(f"profile for {profile.model} stored under {key}")
        # A new reference changes what "OOD" and the standardised space mean: start clients afresh.
        self.detectors.forget_model(profile.model)
        self.profiles[profile.model] = profile

    def _on_flag(self, key: str, value: bytes) -> None:
        flag = Flag.model_validate_json(value)
        if flag_key(flag.client) != key:
            raise ValueError(f"flag of {flag.client} stored under {key}")
        self.flags.set(flag)

    def _on_flag_cleared(self, key: str) -> None:
        client = client_of_key(key)
        if client is not None:
            self.flags.remove(client)

    async def raise_flags(self, alerts: list[AlertSpec]) -> None:
        """Flag the clients of fail-level extraction and OOD alerts, here at once and in the
        state bucket for the other instances and the next start."""
        for spec in alerts:
            flag = flag_from_alert(spec, time.time())
            if flag is None:
                continue
            if not replaces(flag, self.flags.get(flag.client)):
                continue  # already flagged for this or for something graver
            self.flags.set(flag)
            await put_flag_on_bus(self.runtime.js, flag)

    def observe(self, batch: PredictionBatch) -> list[AlertSpec]:
        """Every detector over one logged batch: abuse always, OOD and extraction with a profile."""
        schema = self.schemas.get(batch.model)
        profile = self.profiles.get(batch.model)
        records = batch.records
        invalid = np.fromiter((record_invalid(r.features, schema) for r in records), dtype=bool, count=len(records))
        x = profile.matrix([r.features for r in records]) if profile is not None else None
        clients = [r.client for r in records]
        return self.detectors.observe(batch.model, clients, invalid, x, profile, time.monotonic())

    def admit(self, request: AdmitRequest) -> AdmitReply:
        """Decide one admission; remember a denial for the audit trail."""
        reply = self.admission.decide(request, time.monotonic())
        if not reply.allowed:
            self.denials[(reply.client or "anonymous", request.model, reply.reason)] += 1
        return reply

    async def flush(self) -> None:
        """Publish coalesced denials."""
        pending, self.denials = self.denials, Counter()
        for (client, model, reason), count in pending.items():
            verdict = AdmissionVerdict(client=client, model=model, decision="deny", reason=reason, count=count)
            await self.runtime.emit(Subjects.VERDICT_ADMISSION, verdict, about=f"model:{model}")

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            if self.denials:
                try:
                    await self.flush()
                except Exception as exc:  # noqa: BLE001 - keep serving; counts resume next round
                    log.warning("serving-monitor: denial flush failed: %r", exc)


def create_app(settings: Settings | None = None, cfg: ServingSettings | None = None) -> ServiceApp:
    """Build serving-monitor."""
    settings = settings or Settings()
    cfg = cfg or ServingSettings()
    svc = ServiceApp(SERVICE, settings)

    def monitor() -> Monitor:
        return svc.get("monitor", Monitor)

    @svc.on_start
    async def start(runtime: ServiceRuntime) -> None:
        svc.state["monitor"] = Monitor(runtime, settings, cfg)
        await svc.state["monitor"].start()

    @svc.on_stop
    async def stop() -> None:
        if "monitor" in svc.state:
            await svc.state["monitor"].stop()

    @svc.reply(Subjects.SERVING_ADMIT, AdmitRequest)
    async def admit(request: AdmitRequest) -> AdmitReply:
        """May this call proceed? API key, scope, detector flags (extraction, OOD), per-client rate
        limit, input validation."""
        return monitor().admit(request)

    @svc.consume(Subjects.PREDICTION_LOGGED, PredictionBatch)
    async def on_predictions(event: Envelope[PredictionBatch]) -> None:
        """A batch of served predictions, signed by a model server: per-client volume, invalid
        inputs, OOD inputs, extraction."""
        m = monitor()
        try:
            # Forged logs could frame an honest client or hide an attacker: only an actor holding
            # the model-server role may log predictions (verify_actor alerts on a refusal).
            await m.runtime.verify_actor(event, None, role=MODEL_SERVER_ROLE)
        except SignatureError:
            return
        alerts = m.observe(event.data)
        for spec in alerts:
            await m.runtime.emit(
                Subjects.alert(SERVICE), spec.to_alert(), in_reply_to=event.id, kind=f"{spec.kind}:{spec.client}"
            )
        # After the alerts, before the ack: a redelivered batch raises the flag again, idempotently.
        await m.raise_flags(alerts)

    return svc
