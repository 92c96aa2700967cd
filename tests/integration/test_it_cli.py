"""The `mlwarden` commands producers, subscribers and auditors type, against a live bus."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Any

import orjson
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests._poll import until


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

    @classmethod
    async def started(cls, settings: Any, *args: str, stderr: bool = False) -> Watch:
        """`mlwarden watch ARGS` once it has subscribed (it prints "watching" when its
        subscriptions are flushed to the server); with `stderr`, stderr is read with stdout."""
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "mlwarden", "watch", *args),
            env=_env(settings),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if stderr else None,
        )
        watch = cls(proc)
        try:
            await until(lambda: watch.saw("watching"), what=f"the watcher to subscribe: {watch.lines}")
        except BaseException:
            await watch.interrupt()
            raise
        return watch

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
    watch = await Watch.started(running.settings)
    try:
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


LOCK = (
    f"scikit-learn==1.9.1 --hash=sha256:{hashlib.sha256(b'a').hexdigest()}\n"
    f"numpy==2.4.6 --hash=sha256:{hashlib.sha256(b'b').hexdigest()}\n"
)


async def test_commands_chain_through_json_output(bus: Any, tmp_path: Path) -> None:
    # Issue 10: a pipeline scripted from the CLI alone, each step reading what the one before
    # printed: dataset sha256 -> model build -> its root digest -> promotion request id.
    running = await bus("audit-log", "data-guard", "artifact-signer", "registry-gate")
    x, y = load_iris(return_X_y=True)
    data = tmp_path / "iris.csv"
    data.write_text("a,b,c,d,label\n" + "\n".join(",".join(map(str, r)) + f",{t}" for r, t in zip(x, y, strict=True)))
    folder = tmp_path / "chain-model"
    folder.mkdir()
    (folder / "model.pkl").write_bytes(pickle.dumps(LogisticRegression(max_iter=300).fit(x, y)))
    (folder / "requirements.txt").write_text(LOCK)
    # Under --format json the "watching" status line is on stderr, read here with stdout.
    watch = await Watch.started(
        running.settings, "--format", "json", "--type", "mlw.verdict.*", "--subject", "model:chain:*", stderr=True
    )
    try:
        code, out = await _mlwarden(
            running.settings,
            "publish",
            "dataset",
            str(data),
            "--name",
            "chain",
            "--label",
            "label",
            "--format",
            "json",
            "--actor",
            "pipeline",
        )
        assert code == 0, out
        uploaded = orjson.loads(out)
        assert uploaded["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
        assert uploaded["type"] == "mlw.dataset.uploaded" and uploaded["subject"] == "dataset:chain:1"
        code, out = await _mlwarden(
            running.settings,
            *("publish", "model", str(folder), "--name", "chain", "--lockfile", str(folder / "requirements.txt")),
            *("--dataset", f"chain:1:{uploaded['sha256']}", "--format", "json", "--actor", "ci-bot"),
        )
        assert code == 0, out
        built = orjson.loads(out)

        def artifact_verdict() -> dict[str, Any] | None:
            rows = [orjson.loads(line) for line in watch.lines if line.startswith("{")]
            return next((r for r in rows if r["type"] == "mlw.verdict.artifact"), None)

        verdict = await until(artifact_verdict, what=f"the artifact verdict as a JSON line: {watch.lines}", timeout=90)
        # The digest printed at publish time is the one artifact-signer signed, from its own copy.
        assert verdict["verified"] is True and verdict["subject"] == "model:chain:1"
        assert verdict["data"]["root_digest"] == built["root_digest"], verdict["data"]
        code, out = await _mlwarden(
            running.settings,
            *("publish", "promotion", "--model", "chain", "--version", "1", "--stage", "production"),
            *("--root-digest", built["root_digest"], "--actor", "alice", "--format", "json"),
        )
        assert code == 0, out
        request = orjson.loads(out)
        assert request["request_id"] == request["id"] and request["type"] == "mlw.registry.promotion"
        decided = await until(
            lambda: next(
                (
                    r
                    for r in (orjson.loads(line) for line in watch.lines if line.startswith("{"))
                    if r["type"] == "mlw.verdict.promotion"
                ),
                None,
            ),
            what=f"registry-gate's answer to the request: {watch.lines}",
            timeout=60,
        )
        assert decided["data"]["request_id"] == request["request_id"]
    finally:
        code = await watch.interrupt()
    assert code == 0, watch.lines
    # The filters held: only verdicts about the model came through (not the dataset verdict).
    rows = [orjson.loads(line) for line in watch.lines if line.startswith("{")]
    assert rows and all(r["type"].startswith("mlw.verdict.") and r["subject"].startswith("model:chain:") for r in rows)
