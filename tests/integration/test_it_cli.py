"""The `mlwarden` commands producers, subscribers and auditors type, against a live bus."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson
from sklearn.datasets import load_iris


async def _mlwarden(settings: Any, *args: str) -> tuple[int, str]:
    env = {**os.environ, "MLW_NATS_URL": settings.nats_url, "MLW_DATA_DIR": str(settings.data_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlwarden",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


async def test_publish_watch_and_query_from_the_command_line(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    x, y = load_iris(return_X_y=True)
    data = tmp_path / "iris.csv"
    data.write_text("a,b,c,d,label\n" + "\n".join(",".join(map(str, r)) + f",{t}" for r, t in zip(x, y, strict=True)))
    watch = asyncio.create_task(_mlwarden(running.settings, "watch", "--seconds", "8"))
    await asyncio.sleep(2.0)  # the watcher subscribes before we publish
    code, out = await _mlwarden(
        running.settings,
        "publish",
        "dataset",
        str(data),
        "--name",
        "iris",
        "--label",
        "label",
        "--uploader",
        "pipeline",
    )
    assert code == 0, out
    assert "published mlw.dataset.uploaded" in out
    code, watched = await watch
    assert code == 0
    assert "mlw.verdict.dataset" in watched
    assert "dataset:iris:1" in watched
    code, out = await _mlwarden(running.settings, "audit", "query", "--type", "mlw.verdict.dataset", "--format", "json")
    assert code == 0, out
    page = orjson.loads(out)
    assert page["entries"][0]["subject"] == "dataset:iris:1"
    assert page["entries"][0]["service"] == "data-guard"


async def test_publish_promotion_signed_with_the_actor_key(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    key = running.settings.actors_dir / "mallory.pem"
    args = ["publish", "promotion", "--key", str(key), "--actor", "mallory", "--model", "m", "--version", "1"]
    code, out = await _mlwarden(running.settings, *args, "--root-digest", "ab" * 32)
    assert code == 0, out
    for _ in range(50):
        code, out = await _mlwarden(
            running.settings, "audit", "query", "--service", "registry-gate", "--format", "json"
        )
        entries = orjson.loads(out)["entries"]
        if entries:
            break
        await asyncio.sleep(0.2)
    assert entries[0]["decision"] == "rejected"
    assert entries[0]["actor"] == "mallory"
