"""`mlwarden up`: embedded nats-server (unless a URL is given) plus every service as its own
process; Ctrl-C stops all of them cleanly. `mlwarden up --cluster 3` runs a three-node JetStream
cluster on loopback instead (`shared.cluster`, what compose.yaml describes) with every stream and
bucket replicated three times (`MLW_JS_REPLICAS`), the services given every node's URL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlwarden.bootstrap import bootstrap, init_keys, root_key_path
from shared.bus import close_nats, connect
from shared.cluster import EmbeddedCluster
from shared.embedded import EmbeddedNats
from shared.errors import MlwardenError
from shared.settings import Settings
from shared.topology import SERVICES

READY_TIMEOUT_S = 60.0
#: How long `stop` waits for the services (each stops within `shared.service.STOP_GRACE_S`).
STOP_TIMEOUT_S = 15.0


class SupervisorError(MlwardenError, RuntimeError):
    """A service of `mlwarden up` exited or did not get ready."""


async def _bootstrap(settings: Settings) -> None:
    nc = await connect(settings, name="mlwarden/up")
    try:
        await bootstrap(nc.jetstream(), settings)
    finally:
        await close_nats(nc)


@dataclass
class System:
    """A running mlwarden: the NATS server it may own and one process per service."""

    data_dir: Path
    nats_url: str | None = None
    port: int = 0
    nats: EmbeddedNats | None = None
    #: Nodes of an embedded JetStream cluster to run instead of one server (0: one server).
    cluster_size: int = 0
    cluster: EmbeddedCluster | None = None
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    #: Serve each service's metrics and probes on `metrics_port + i` (i: its place in SERVICES;
    #: 0: a free port each); None: no metrics.
    metrics_port: int | None = None

    @property
    def url(self) -> str:
        """The NATS URL the services use."""
        if self.nats_url:
            return self.nats_url
        if self.cluster is not None:
            return self.cluster.urls
        assert self.nats is not None
        return self.nats.url

    @property
    def replicas(self) -> int:
        """Copies of each stream and bucket: one per node of the embedded cluster, at most 3
        (JetStream's usual maximum that still survives a node loss); else the environment's."""
        if self.cluster_size:
            return min(self.cluster_size, 3)
        return Settings().js_replicas

    def start(self) -> System:
        """Start NATS (when embedded) and every service; wait until each reports ready.

        Interrupted or failed half-way (Ctrl-C, SIGTERM, a service that exits), it stops what it
        started before raising.
        """
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> System:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Keys and the registry policy exist before any service reads them.
        init_keys(Settings(data_dir=self.data_dir))
        if self.nats_url is None and self.cluster_size:
            # Its own folder: a data dir used with one server keeps that server's store.
            self.cluster = EmbeddedCluster(self.data_dir / "nats-cluster", size=self.cluster_size).start()
        elif self.nats_url is None:
            self.nats = EmbeddedNats(self.data_dir / "nats", port=self.port).start()
        settings = Settings(data_dir=self.data_dir, nats_url=self.url, js_replicas=self.replicas)
        if root_key_path(settings).exists():
            # The operator's root key is here (dev): register every service key, signed by it,
            # before any service checks that its key is the trusted one.
            asyncio.run(_bootstrap(settings))
        logs = self.data_dir / "logs"
        logs.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "MLW_DATA_DIR": str(self.data_dir),
            "MLW_NATS_URL": self.url,
            "MLW_JS_REPLICAS": str(self.replicas),
        }
        env.pop("MLW_METRICS_PORT", None)  # set per service below, or not at all
        # audit-log first: it creates the topology and must see everything from the start.
        for index, name in enumerate(SERVICES):
            if self.metrics_port is not None:
                # Several services on one host: one port each (`mlwarden up --metrics-port`).
                env["MLW_METRICS_PORT"] = str(self.metrics_port + index if self.metrics_port else 0)
            ready = self.data_dir / "run" / f"{name}.ready"
            ready.unlink(missing_ok=True)
            with (logs / f"{name}.log").open("ab") as log_file:
                # The child keeps its own copy of the descriptor; ours closes here.
                self.processes[name] = subprocess.Popen(
                    [sys.executable, "-m", "mlwarden", "run", name, "--ready-file", str(ready)],
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        deadline = time.monotonic() + READY_TIMEOUT_S
        for name, proc in self.processes.items():
            ready = self.data_dir / "run" / f"{name}.ready"
            while not ready.exists():
                if proc.poll() is not None:
                    raise SupervisorError(f"{name} exited with {proc.returncode}; see {logs / (name + '.log')}")
                if time.monotonic() > deadline:
                    # Most often NATS is unreachable: the log says "waiting for NATS at ...".
                    raise SupervisorError(f"{name} not ready after {READY_TIMEOUT_S:g} s; see {logs / (name + '.log')}")
                time.sleep(0.05)
        return self

    def metrics_urls(self) -> dict[str, str]:
        """Each started service's metrics base URL (from its ready file), when it serves one."""
        urls: dict[str, str] = {}
        for name in self.processes:
            ready = self.data_dir / "run" / f"{name}.ready"
            lines = ready.read_text().splitlines() if ready.exists() else []
            if len(lines) > 1 and lines[1]:
                urls[name] = lines[1]
        return urls

    def stop(self) -> None:
        """SIGTERM every service, wait, then stop NATS."""
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self.processes.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.processes.clear()
        if self.nats is not None:
            self.nats.stop()
            self.nats = None
        if self.cluster is not None:
            self.cluster.stop()
            self.cluster = None

    def __enter__(self) -> System:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
