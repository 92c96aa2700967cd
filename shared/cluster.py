"""A JetStream cluster of `nats-server` children on loopback: what `compose.yaml` describes
(three nodes, cluster routes, a store each), runnable on one machine (`mlwarden up --cluster 3`,
tests/integration/test_it_cluster.py).

Every port (client, route, monitoring) is one the OS said was free; each node has its own
JetStream store under `base_dir/<server_name>` and a `server_name`, which is what
`js.stream_info(...).cluster.leader` reports. A node killed with `kill` restarts with
`restart` on the same ports and store, so it rejoins and catches up (DESIGN.md principle 9).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared.embedded import EmbeddedNats, EmbeddedNatsError, free_port

#: How long `start` and `restart` wait for every node's `/healthz` (JetStream current).
READY_TIMEOUT_S = 60.0


@dataclass
class ClusterNode:
    """One node: its server and the ports it routes and reports on."""

    server_name: str
    server: EmbeddedNats
    route_port: int
    monitor_port: int

    @property
    def url(self) -> str:
        """The node's client URL."""
        return self.server.url

    @property
    def running(self) -> bool:
        """Whether its process is alive."""
        return self.server.process is not None and self.server.process.poll() is None

    def healthy(self) -> bool:
        """Whether `/healthz` answers ok: the node is up, JetStream enabled and its streams current."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=1.0) as reply:
                status: object = json.loads(reply.read()).get("status")
                return status == "ok"
        except (OSError, ValueError, urllib.error.URLError):
            return False


@dataclass
class EmbeddedCluster:
    """`size` nats-server processes on 127.0.0.1, fully routed, JetStream on each."""

    base_dir: Path
    size: int = 3
    name: str = "mlw"
    nodes: list[ClusterNode] = field(default_factory=list, init=False)

    @property
    def urls(self) -> str:
        """Every node's client URL, comma-separated (what `MLW_NATS_URL` takes)."""
        return ",".join(node.url for node in self.nodes)

    def node(self, server_name: str) -> ClusterNode:
        """The node called `server_name` (as a stream's `cluster.leader` names it)."""
        for node in self.nodes:
            if node.server_name == server_name:
                return node
        raise KeyError(server_name)

    def start(self, timeout: float = READY_TIMEOUT_S) -> EmbeddedCluster:
        """Start every node and wait until each reports healthy; on failure stop them all."""
        if self.size < 1:
            raise EmbeddedNatsError(f"a cluster needs at least one node, not {self.size}")
        route_ports = [free_port() for _ in range(self.size)]
        for i in range(self.size):
            server_name = f"{self.name}-{i + 1}"
            routes = ", ".join(f'"nats://127.0.0.1:{p}"' for j, p in enumerate(route_ports) if j != i)
            monitor_port = free_port()
            extra = (
                f'server_name: "{server_name}"\n'
                f'http: "127.0.0.1:{monitor_port}"\n'
                f'cluster {{ name: "{self.name}", listen: "127.0.0.1:{route_ports[i]}", routes: [{routes}] }}\n'
            )
            server = EmbeddedNats(self.base_dir / server_name, extra_config=extra)
            self.nodes.append(ClusterNode(server_name, server, route_ports[i], monitor_port))
        try:
            for node in self.nodes:
                node.server.start()
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_healthy(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until every running node reports healthy (a JetStream meta leader exists and
        the node's streams are current)."""
        deadline = time.monotonic() + timeout
        waiting = [node for node in self.nodes if node.running]
        while waiting:
            waiting = [node for node in waiting if not node.healthy()]
            if not waiting:
                return
            if time.monotonic() >= deadline:
                names = ", ".join(node.server_name for node in waiting)
                raise EmbeddedNatsError(f"cluster nodes not healthy after {timeout:g} s: {names}")
            time.sleep(0.1)

    def kill(self, server_name: str) -> None:
        """SIGKILL one node, as a crash would."""
        self.node(server_name).server.kill()

    def restart(self, server_name: str, timeout: float = READY_TIMEOUT_S) -> None:
        """Start a stopped node again on its ports and store; wait until it has caught up."""
        node = self.node(server_name)
        node.server.start()
        self.wait_healthy(timeout)

    def stop(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL)."""
        for node in self.nodes:
            node.server.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
