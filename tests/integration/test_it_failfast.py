"""Nothing hangs, every failure is one clear line (issue 13).

A service started without NATS says it is waiting and stops on SIGTERM at once; it connects by
itself when NATS appears. A command against an unreachable NATS exits 2 with one line. The
deadlines below are generous bounds on a hang, not speed goals: the machine may be loaded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.embedded import EmbeddedNats, free_port
from tests._poll import until_sync

HANG_S = 30.0


def _closed_port_url(password: str | None = None) -> str:
    """A loopback URL nothing listens on (the OS handed the port out, and it was closed)."""
    auth = f"svc:{password}@" if password else ""
    return f"nats://{auth}127.0.0.1:{free_port()}"


def _mlwarden(*args: str, data_dir: Path, stdout: object = subprocess.PIPE) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLW_DATA_DIR": str(data_dir)}
    env.pop("MLW_NATS_URL", None)
    return subprocess.Popen(
        [sys.executable, "-m", "mlwarden", *args],
        env=env,
        stdout=stdout,  # type: ignore[arg-type]
        stderr=subprocess.STDOUT if stdout is not subprocess.PIPE else subprocess.PIPE,
        start_new_session=True,
    )


def _keys_init(data_dir: Path, *args: str) -> None:
    env = {**os.environ, "MLW_DATA_DIR": str(data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "mlwarden", "keys", "init", *args], env=env, capture_output=True, timeout=HANG_S
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_service_without_nats_says_it_is_waiting_and_stops_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    log = tmp_path / "run.log"
    url = _closed_port_url(password="s3cret")
    with log.open("wb") as sink:
        proc = _mlwarden("run", "data-guard", "--nats", url, data_dir=tmp_path / "data", stdout=sink)
    try:
        until_sync(lambda: "waiting for NATS" in log.read_text(), what="a 'waiting for NATS' line", timeout=HANG_S)
        sent = time.monotonic()
        proc.send_signal(sig)
        code = proc.wait(HANG_S)
        stopped_after = time.monotonic() - sent
    finally:
        _stop(proc)
    text = log.read_text()
    assert code == 0, text
    assert "(attempt 1)" in text
    assert url.replace("s3cret", "***") in text and "s3cret" not in text
    assert "Traceback" not in text
    print(f"{sig.name} to exit: {stopped_after:.2f} s")  # the figure, for the record (pytest -s)


def test_service_started_before_nats_connects_when_it_appears(tmp_path: Path) -> None:
    port = free_port()
    log, ready = tmp_path / "run.log", tmp_path / "run" / "data-guard.ready"
    # The operator made the keys (root.pub is what the service trusts) but has not yet
    # registered them on a bus that is not there yet.
    _keys_init(tmp_path / "data")
    with log.open("wb") as sink:
        proc = _mlwarden(
            "run",
            "data-guard",
            "--nats",
            f"nats://127.0.0.1:{port}",
            "--ready-file",
            str(ready),
            data_dir=tmp_path / "data",
            stdout=sink,
        )
    server = EmbeddedNats(tmp_path / "nats", port=port)
    try:
        until_sync(lambda: "waiting for NATS" in log.read_text(), what="a 'waiting for NATS' line", timeout=HANG_S)
        server.start()
        # The operator registers the service keys (root-signed) once the bus is there.
        _keys_init(tmp_path / "data", "--nats", server.url)
        until_sync(ready.exists, what=f"data-guard ready; log: {log}", timeout=HANG_S)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(HANG_S) == 0, log.read_text()
    finally:
        _stop(proc)
        server.stop()
    assert "connected to NATS" in log.read_text()


@pytest.mark.parametrize(
    "command",
    [
        ["health"],
        ["watch", "--seconds", "60"],
        ["audit", "query"],
        ["publish", "dataset", "{csv}", "--name", "d"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_command_against_unreachable_nats_exits_2_with_one_line(tmp_path: Path, command: list[str]) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("a,b\n1,2\n")
    args = [arg.replace("{csv}", str(csv)) for arg in command]
    url = _closed_port_url()
    started = time.monotonic()
    proc = _mlwarden(*args, "--nats", url, data_dir=tmp_path / "data")
    try:
        out, err = proc.communicate(timeout=HANG_S)
    finally:
        _stop(proc)
    elapsed = time.monotonic() - started
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2, (out, err)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: NATS unreachable at {url}"), lines
    print(f"{' '.join(command[:2])}: exit 2 after {elapsed:.2f} s")
