"""serving-monitor on a real bus: admission acts on detection (issue 9).

A client whose logged traffic is extraction-like is denied at `mlw.serving.admit` with the reason,
in the reply and the audit trail; the flag survives a restart of serving-monitor, and
`mlwarden serving clear` lets the client in again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from mlwarden.cli import main
from services.serving_monitor.app import Monitor
from services.serving_monitor.flags import FlagReason
from services.serving_monitor.keystore import issue_key_on_bus, register_profile_on_bus, register_schema_on_bus
from services.serving_monitor.ood import fit_reference
from services.serving_monitor.validation import FeatureSchema, FeatureSpec
from shared.events import AdmitReply, AdmitRequest, AuditQuery, PredictionRecord
from shared.topology import Subjects
from tests._poll import until

D = 4
FEATURES = [f"f{i}" for i in range(D)]
MODEL = "fraud"


def records(client: str, x: Any) -> list[PredictionRecord]:
    return [
        PredictionRecord(client=client, features=dict(zip(FEATURES, r.tolist(), strict=True)), prediction=0) for r in x
    ]


async def ready_monitor(running: Any, key: str) -> Monitor:
    monitor = running.apps["serving-monitor"].get("monitor", Monitor)
    await until(lambda: monitor.profiles.get(MODEL), what="serving-monitor to load the profile")
    await until(lambda: monitor.schemas.get(MODEL), what="serving-monitor to load the schema")
    await until(lambda: monitor.keys.authenticate(key, MODEL).ok, what="serving-monitor to load the key")
    return monitor


def _flagged_for_extraction(monitor: Monitor, client: str) -> bool:
    flag = monitor.flags.for_client(client)
    return flag is not None and flag.reason == FlagReason.SUSPECTED_EXTRACTION


async def admit(running: Any, key: str, row: dict[str, float | None]) -> AdmitReply:
    reply: AdmitReply = await running.client.admit(AdmitRequest(api_key=key, model=MODEL, inputs=[row]))
    return reply


async def test_an_extracting_client_is_denied_until_an_operator_clears_it_also_across_a_restart(bus: Any) -> None:
    running = await bus("audit-log", "serving-monitor")
    js = running.client.js
    train = np.random.default_rng(0).normal(size=(3000, D)) * 5.0 + 50.0
    profile = fit_reference(train, FEATURES, MODEL)
    await register_profile_on_bus(js, profile)
    await register_schema_on_bus(
        js, FeatureSchema(model=MODEL, features=[FeatureSpec(name=f, min=-1e6, max=1e6) for f in FEATURES])
    )
    thief = await issue_key_on_bus(js, running.settings, "thief", [MODEL])
    user = await issue_key_on_bus(js, running.settings, "user", [MODEL])
    monitor = await ready_monitor(running, thief)
    row = dict(zip(FEATURES, train[0].tolist(), strict=True))
    assert (await admit(running, thief, row)).allowed

    # A boundary walk with the service's defaults: 100 steps of 0.08 robust sigmas from a real
    # point, 8 sigmas in all (HopSkipJump-style; extraction.py's near-duplicate chains).
    direction = np.ones(D) / np.sqrt(D)
    walk = train[0] + np.outer(np.linspace(0.0, 8.0, 100), direction * np.asarray(profile.scale))
    benign = train[1:101]
    await running.client.log_predictions(MODEL, records("thief", walk) + records("user", benign))
    # The walk ends 8 sigmas out: OOD may flag it first, the extraction flag then takes precedence.
    await until(lambda: _flagged_for_extraction(monitor, "thief"), what="the walk to flag the thief")

    reply = await admit(running, thief, row)
    assert (reply.allowed, reply.reason, reply.client) == (False, "suspected_extraction", "thief")
    assert (await admit(running, user, row)).allowed

    async def denial_audited() -> bool:
        page = await running.client.audit_query(AuditQuery(type=Subjects.VERDICT_ADMISSION))
        return any(
            e.event["data"]["reason"] == "suspected_extraction" and e.event["data"]["client"] == "thief"
            for e in page.entries
        )

    await until(denial_audited, what="the denial, with its reason, in the audit trail")

    # The flag lives in the state bucket: a restarted serving-monitor (detector state gone) still denies.
    await running.stop("serving-monitor")
    await running.start("serving-monitor")
    monitor = await ready_monitor(running, thief)
    await until(lambda: monitor.flags.for_client("thief"), what="the restarted serving-monitor to load the flag")
    assert (await admit(running, thief, row)).reason == "suspected_extraction"

    argv = [
        "serving",
        "clear",
        "thief",
        "--nats",
        running.settings.nats_url,
        "--data-dir",
        str(running.settings.data_dir),
    ]
    assert await asyncio.to_thread(main, argv) == 0
    await until(lambda: monitor.flags.for_client("thief") is None, what="serving-monitor to drop the cleared flag")
    reply = await admit(running, thief, row)
    assert (reply.allowed, reply.reason) == (True, "ok")
    # Clearing what is not flagged is an error, not a silent success.
    assert await asyncio.to_thread(main, argv) == 2
