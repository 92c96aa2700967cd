"""The `mlwarden` commands producers, subscribers and auditors type, against a live bus."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
from _poll import until
from sklearn.datasets import load_iris


def _env(settings: Any) -> dict[str, str]:
    return {**os.environ, "MLW_NATS_URL": settings.nats_url, "MLW_DATA_DIR": str(settings.data_dir)}


async def _mlwarden(settings: Any, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlwarden",
        *args,
        env=_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


class Watch:
    """`mlwarden watch` running in the background, its output read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.lines.append(line.decode())

    def saw(self, *parts: str) -> str | None:
        """The first line so far containing every part."""
        return next((line for line in self.lines if all(p in line for p in parts)), None)

    async def interrupt(self) -> int:
        """Ctrl-C, as a person stops it; the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.proc.wait(), 60)
        await self._reader
        return code


async def test_publish_watch_and_query_from_the_command_line(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    x, y = load_iris(return_X_y=True)
    data = tmp_path / "iris.csv"
    data.write_text("a,b,c,d,label\n" + "\n".join(",".join(map(str, r)) + f",{t}" for r, t in zip(x, y, strict=True)))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlwarden", "watch", env=_env(running.settings), stdout=asyncio.subprocess.PIPE
    )
    watch = Watch(proc)
    try:
        # `watch` prints this line once its subscriptions are flushed to the server.
        await until(lambda: watch.saw("watching"), what=f"the watcher to subscribe: {watch.lines}")
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
        await until(lambda: watch.saw("mlw.verdict.dataset", "dataset:iris:1"), what=f"the verdict: {watch.lines}")
    finally:
        code = await watch.interrupt()
    assert code == 0, watch.lines

    async def verdict_row() -> Any:
        code, out = await _mlwarden(
            running.settings, "audit", "query", "--type", "mlw.verdict.dataset", "--format", "json"
        )
        assert code == 0, out
        return orjson.loads(out)["entries"]

    entries = await until(verdict_row, what="the dataset verdict in the audit trail")
    assert entries[0]["subject"] == "dataset:iris:1"
    assert entries[0]["service"] == "data-guard"


async def test_publish_promotion_signed_with_the_actor_key(bus: Any) -> None:
    running = await bus("audit-log", "registry-gate")
    key = running.settings.actors_dir / "mallory.pem"
    args = ["publish", "promotion", "--key", str(key), "--actor", "mallory", "--model", "m", "--version", "1"]
    code, out = await _mlwarden(running.settings, *args, "--root-digest", "ab" * 32)
    assert code == 0, out

    async def gate_rows() -> Any:
        code, out = await _mlwarden(
            running.settings, "audit", "query", "--service", "registry-gate", "--format", "json"
        )
        assert code == 0, out
        return orjson.loads(out)["entries"]

    entries = await until(gate_rows, what="registry-gate's verdict in the audit trail")
    assert entries[0]["decision"] == "rejected"
    assert entries[0]["actor"] == "mallory"


async def test_keys_commands_register_list_rotate_revoke_and_export(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "registry-gate")
    settings = running.settings
    code, out = await _mlwarden(settings, "keys", "add-actor", "erin", "--roles", "reviewer")
    assert code == 0, out
    key_file = settings.actors_dir / "erin.pem"
    assert key_file.exists() and (key_file.stat().st_mode & 0o777) == 0o600
    code, out = await _mlwarden(settings, "keys", "list", "--format", "json")
    assert code == 0, out
    listed = {row["id"]: row for row in orjson.loads(out)["identities"]}
    assert listed["erin"]["roles"] == ["reviewer"] and listed["erin"]["status"] == "active"
    assert listed["data-guard"]["kind"] == "service"
    # An untrusted entry written straight into the bucket is listed as such, never as an identity.
    kv = await running.client.js.key_value("mlw-trust")
    await kv.put("eve", b"AAAA")
    code, out = await _mlwarden(settings, "keys", "list", "--format", "json")
    doc = orjson.loads(out)
    assert "eve" not in {row["id"] for row in doc["identities"]}
    assert [u["key"] for u in doc["untrusted"]] == ["eve"]
    code, out = await _mlwarden(settings, "keys", "rotate", "erin")
    assert code == 0 and "key 2 of 2" in out, out
    code, out = await _mlwarden(settings, "keys", "revoke", "erin", "--reason", "left the team")
    assert code == 0 and "revoked" in out, out
    code, out = await _mlwarden(settings, "keys", "list", "--format", "json")
    erin = next(row for row in orjson.loads(out)["identities"] if row["id"] == "erin")
    assert erin["status"] == "revoked" and erin["keys"] == 2
    pem = tmp_path / "audit-log.pub.pem"
    code, out = await _mlwarden(settings, "keys", "export", "audit-log", "--out", str(pem))
    assert code == 0 and pem.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----"), out
