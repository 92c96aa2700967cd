"""serving-monitor on a real bus: a registered reference profile turns on OOD and extraction alerts."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlwarden.cli import main
from services.serving_monitor.app import Monitor
from services.serving_monitor.extraction import ExtractionMonitor
from services.serving_monitor.keystore import register_profile_on_bus
from services.serving_monitor.ood import ReferenceProfile, fit_reference
from services.serving_monitor.queries import QueryParams
from shared.events import PredictionRecord
from shared.topology import Subjects
from tests._poll import until

D = 5
FEATURES = [f"f{i}" for i in range(D)]
MIX = np.random.default_rng(1).normal(size=(D, D)) * 0.5 + np.eye(D)


def natural(n: int, seed: int) -> Any:
    return np.random.default_rng(seed).normal(size=(n, D)) @ MIX + np.arange(D) * 10.0


def records(client: str, x: Any) -> list[PredictionRecord]:
    return [
        PredictionRecord(client=client, features=dict(zip(FEATURES, r.tolist(), strict=True)), prediction=0) for r in x
    ]


async def test_ood_and_extraction_clients_alert_and_a_benign_client_does_not(bus: Any) -> None:
    running = await bus("serving-monitor")
    train = natural(4000, 0)
    profile = fit_reference(train, FEATURES, "fraud")
    await register_profile_on_bus(running.client.js, profile)
    # The service follows the bucket through a watcher.
    svc = running.apps["serving-monitor"]
    monitor = svc.get("monitor", Monitor)
    await until(lambda: monitor.profiles.get("fraud"), what="serving-monitor to load the profile")
    # This test is about the wiring (logs in, alerts out); the defaults are calibrated on realistic
    # traffic (issue 9) and a 200-query grid is below their test cadence: run PRADA as the paper does.
    monitor.detectors.extraction = ExtractionMonitor(
        w_threshold=0.84, params=QueryParams(test_every=1, repeat_radius=0.0)
    )

    lo, hi = train.min(axis=0), train.max(axis=0)
    grid = np.stack(np.meshgrid(*[np.linspace(a, b, 4) for a, b in zip(lo, hi, strict=True)]), axis=-1)
    probing = grid.reshape(-1, D)[:200]  # an even probe of the feature box: extraction-like
    shifted = natural(200, 2) + 3.0 * np.asarray(profile.scale)  # far from the training data
    benign = natural(200, 3)
    async with running.client.watch() as watcher:
        for i in range(0, 200, 50):
            batch = (
                records("thief", probing[i : i + 50])
                + records("drifter", shifted[i : i + 50])
                + records("user", benign[i : i + 50])
            )
            await running.client.log_predictions("fraud", batch)

        def alert(kind: str, client: str) -> Any:
            return lambda e: (
                e.type == Subjects.alert("serving-monitor") and e.data.kind == kind and e.data.client == client
            )

        assert await watcher.wait(alert("serving.extraction", "thief"), 30) is not None
        assert await watcher.wait(alert("serving.ood", "drifter"), 30) is not None
        # Every batch processed (its alerts published before its ack), then a round trip on the
        # watcher's connection: no alert about "user" is still on its way.
        await until(lambda: svc.runtime.processed >= 4, what="serving-monitor to process the four batches")
        await running.client.nc.flush()
    alerted = {(e.data.kind, e.data.client) for e in watcher.events if e.type == Subjects.alert("serving-monitor")}
    assert not any(client == "user" for _, client in alerted), alerted


async def test_fit_profile_command_publishes_a_versioned_profile_the_service_follows(bus: Any, tmp_path: Path) -> None:
    running = await bus("serving-monitor")
    monitor = running.apps["serving-monitor"].get("monitor", Monitor)
    train = natural(1000, 0)
    csv = tmp_path / "ref.csv"
    csv.write_text(
        ",".join([*FEATURES, "label"]) + "\n" + "".join(",".join([*map(repr, r.tolist()), "1"]) + "\n" for r in train)
    )
    argv = ["serving", "fit-profile", str(csv), "--model", "fraud", "--label", "label"]
    argv += ["--nats", running.settings.nats_url, "--data-dir", str(running.settings.data_dir)]
    argv += ["--out", str(tmp_path / "profile.json")]
    assert await asyncio.to_thread(main, argv) == 0
    followed = await until(lambda: monitor.profiles.get("fraud"), what="serving-monitor to follow the profile")
    # The service's own fit of the same rows, versioned by time and the reference's hash.
    expected = fit_reference(train, FEATURES, "fraud", version=followed.version)
    assert followed.to_dict() == expected.to_dict() and followed.version.endswith(
        hashlib.sha256(csv.read_bytes()).hexdigest()[:16]
    )
    written = ReferenceProfile.from_dict(orjson.loads((tmp_path / "profile.json").read_bytes()))
    assert written.to_dict() == followed.to_dict()

    # A second fit, under an explicit version, replaces it in the running service.
    assert await asyncio.to_thread(main, [*argv, "--version", "v2"]) == 0
    await until(lambda: monitor.profiles["fraud"].version == "v2", what="serving-monitor to follow the new version")
    # A reference without the label's column, or a missing file, is an input error (exit 2).
    assert await asyncio.to_thread(main, [*argv[:6], "--label", "nope", *argv[6:]]) == 2
    assert await asyncio.to_thread(main, ["serving", "fit-profile", str(tmp_path / "none.csv"), "--model", "m"]) == 2
