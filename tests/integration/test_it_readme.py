"""Issue 10: the README's producer, subscriber and auditor examples run as written, in order,
against a live bus, so the README cannot drift from the commands.

The blocks marked `<!-- readme-flow: NAME -->` are run line by line with bash in a working folder
that holds what the examples name (`train.csv`, `./model-dir`, the actors' keys, `.mlwarden`).
Only placeholders are filled in (`<sha256>`, `<digest>`, `<id>`, `<event-id>`), from the JSON
that the previous `publish` printed, as a script chaining the steps would."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pickle
import re
import shlex
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from sklearn.linear_model import LogisticRegression

from tests._poll import until

README = Path(__file__).resolve().parents[2] / "README.md"
LOCK = (
    f"scikit-learn==1.9.1 --hash=sha256:{hashlib.sha256(b'a').hexdigest()}\n"
    f"numpy==2.4.6 --hash=sha256:{hashlib.sha256(b'b').hexdigest()}\n"
)


def readme_block(name: str) -> list[str]:
    """The commands of the README block marked `name` (continuation lines joined, comments cut)."""
    text = README.read_text()
    match = re.search(rf"<!-- readme-flow: {name} -->\n```bash\n(.*?)```", text, re.S)
    assert match, f"README has no block marked readme-flow: {name}"
    joined = match.group(1).replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()  # a trailing comment
        if command:
            commands.append(command)
    return commands


def _workdir(root: Path, data_dir: Path, actors: Path) -> Path:
    work = root / "work"
    work.mkdir()
    rng = np.random.default_rng(7)
    x = rng.normal(size=(400, 6))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(int)
    header = ",".join([f"f{i}" for i in range(6)] + ["churned"])
    rows = [",".join(f"{v:.6g}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)]
    (work / "train.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    model = work / "model-dir"
    model.mkdir()
    (model / "model.pkl").write_bytes(pickle.dumps(LogisticRegression(max_iter=300).fit(x, y)))
    (model / "requirements.txt").write_text(LOCK)
    for name in ("alice", "bob", "carol"):
        shutil.copy(actors / f"{name}.pem", work / f"{name}.pem")
    (work / ".mlwarden").symlink_to(data_dir)
    return work


async def _sh(command: str, env: dict[str, str], cwd: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", command, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


def _as_run_here(command: str) -> str:
    # `uv run mlwarden` in the README is this interpreter's mlwarden here (same project, same env).
    assert command.startswith("uv run mlwarden "), command
    return f"{shlex.quote(sys.executable)} -m mlwarden " + command.removeprefix("uv run mlwarden ")


async def test_readme_producer_subscriber_and_auditor_flow_runs_as_written(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard", "artifact-signer", "registry-gate")
    settings = running.settings
    work = _workdir(tmp_path, settings.data_dir, settings.actors_dir)
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "MLW_NATS_URL": settings.nats_url, "MLW_DATA_DIR": str(settings.data_dir), "HOME": str(home)}

    # The subscriber watches from before the first upload, as a deploy bot would.
    (watch_command,) = readme_block("subscriber")
    watcher = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        "exec " + _as_run_here(watch_command),
        env=env,
        cwd=work,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    lines: list[dict[str, Any]] = []
    status: list[str] = []

    async def read(stream: Any, sink: list[Any], parse: bool) -> None:
        async for raw in stream:
            sink.append(orjson.loads(raw) if parse else raw.decode())

    readers = [
        asyncio.create_task(read(watcher.stdout, lines, True)),
        asyncio.create_task(read(watcher.stderr, status, False)),
    ]
    try:
        await until(lambda: any("watching" in s for s in status), what=f"the watcher to subscribe: {status}")
        filled: dict[str, str] = {}
        for command in readme_block("producer"):
            for placeholder, value in filled.items():
                command = command.replace(placeholder, value)
            assert "<" not in command, f"a placeholder nothing filled: {command}"
            code, out = await _sh(_as_run_here(command) + " --format json", env, work)
            assert code == 0, (command, out)
            printed = orjson.loads(out)
            if "sha256" in printed:
                filled["<sha256>"] = printed["sha256"]
                filled["<event-id>"] = printed["id"]
            if "root_digest" in printed:
                filled["<digest>"] = printed["root_digest"]
                # The subscriber's artifact verdict names the digest publish printed.
                await until(
                    lambda: any(line["type"] == "mlw.verdict.artifact" for line in lines),
                    what=f"the artifact verdict: {lines}",
                    timeout=120,
                )
            if "request_id" in printed:
                filled["<id>"] = printed["request_id"]
        promoted = await until(
            lambda: next((line for line in lines if line["data"].get("decision") == "promoted"), None),
            what=f"the promotion, seen by the subscriber: {[line['data'].get('decision') for line in lines]}",
            timeout=120,
        )
        assert promoted["verified"] is True and promoted["data"]["root_digest"] == filled["<digest>"]
    finally:
        if watcher.returncode is None:
            watcher.send_signal(signal.SIGINT)
        await asyncio.wait_for(watcher.wait(), 60)
        await asyncio.gather(*readers)
    assert {line["subject"] for line in lines} == {"model:churn:3"}, "the filters let only the model's verdicts by"

    # The auditor: every command as written exits 0 (a failed check exits 1, a usage error 2).
    async def promoted_in_trail() -> bool:
        code, out = await _sh(
            f"{shlex.quote(sys.executable)} -m mlwarden audit query --decision promoted --format json", env, work
        )
        return code == 0 and bool(orjson.loads(out)["entries"])

    await until(promoted_in_trail, what="the promotion recorded in the trail", timeout=60)
    for command in readme_block("auditor"):
        command = command.replace("<event-id>", filled["<event-id>"])
        code, out = await _sh(_as_run_here(command), env, work)
        assert code == 0, (command, out)
    assert (home / "audit-cp.json").exists() and (work / "proof.json").exists()
    exported = [orjson.loads(line) for line in (work / "trail.jsonl").read_text().splitlines()]
    assert any(row.get("event_id") == filled["<id>"] for row in exported)
