"""A service's HTTP endpoints for operators (issue 10): `/metrics` (Prometheus), `/healthz`
(the process and its event loop are alive) and `/readyz` (it does its work: 503 with the reasons
otherwise).

The server is asyncio's own (`asyncio.start_server`) on the service's event loop, not
prometheus_client's threaded WSGI server, for two reasons: that server answers the metrics on
every path, so it cannot serve the probes; and readiness is the event loop's state (the NATS
connection, the consumers), which the loop reads without locks. It answers one GET or HEAD per
connection (`Connection: close`) and nothing else, and `stop()` closes the listening socket and
every open connection, so a stopped service leaves no socket and no task behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

log = logging.getLogger("mlwarden.probes")

#: A request head larger than this is refused (a probe's is a few hundred bytes).
MAX_HEAD_BYTES = 8192
#: A client that has not sent its request head by then is disconnected.
READ_TIMEOUT_S = 5.0

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True, slots=True)
class ReadinessState:
    """What readiness is decided from, read off a running service."""

    #: Start-up has finished (consumers started, endpoints subscribed).
    started: bool
    #: Shutdown has begun.
    stopping: bool
    #: The NATS connection is up (not connecting, reconnecting or closed).
    connected: bool
    #: The trust store is loaded and holds this service's own key.
    trust_loaded: bool
    #: Durable consumers whose FastStream subscriber is not running.
    stopped_consumers: Sequence[str] = ()
    #: Durable consumers JetStream does not know (or could not be asked about), with why.
    missing_consumers: Sequence[str] = ()
    #: What the service's own checks report (`ServiceApp.ready_when`).
    service_problems: Sequence[str] = ()


def readiness_problems(state: ReadinessState) -> list[str]:
    """Why the service is not ready; empty when it is."""
    if state.stopping:
        return ["stopping"]
    problems: list[str] = []
    if not state.connected:
        problems.append("not connected to NATS")
    if not state.trust_loaded:
        problems.append("trust store not loaded")
    if not state.started:
        problems.append("starting")
    problems += [f"consumer {name} not running" for name in state.stopped_consumers]
    problems += [f"consumer {name}" for name in state.missing_consumers]
    problems += state.service_problems
    return problems


#: `metrics(accept header)` -> (body, content type).
MetricsSource = Callable[[str | None], Awaitable[tuple[bytes, str]]]
#: `readiness()` -> the problems (empty when ready).
ReadinessSource = Callable[[], Awaitable[list[str]]]


class ProbeServer:
    """`/metrics`, `/healthz` and `/readyz` on `host:port` (port 0: one the OS picks)."""

    def __init__(self, host: str, port: int, *, metrics: MetricsSource, readiness: ReadinessSource) -> None:
        self.host = host
        self.requested_port = port
        self._metrics = metrics
        self._readiness = readiness
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The port it listens on (the OS's choice when asked for 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the probe server is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        """Its base URL, e.g. http://127.0.0.1:9460."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen; raises OSError when the port is taken."""
        self._server = await asyncio.start_server(
            self._serve, self.host, self.requested_port, limit=MAX_HEAD_BYTES, reuse_address=True
        )

    async def stop(self) -> None:
        """Stop listening and close every open connection (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        await server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)  # type: ignore[arg-type]
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                return
            method, status, body, content_type = await self._answer(head)
            writer.write(_response(status, body, content_type, head_only=method == "HEAD"))
            await writer.drain()
        except ConnectionError:
            pass  # the client went away: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._connections.discard(task)  # type: ignore[arg-type]

    async def _answer(self, head: bytes) -> tuple[str, int, bytes, str]:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return "GET", 400, b"bad request\n", _TEXT
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return method, 405, b"only GET and HEAD\n", _TEXT
        path = target.split("?", 1)[0]
        if path == "/healthz":
            return method, 200, b"ok\n", _TEXT
        if path == "/readyz":
            problems = await self._readiness()
            if problems:
                return method, 503, ("not ready: " + "; ".join(problems) + "\n").encode(), _TEXT
            return method, 200, b"ready\n", _TEXT
        if path == "/metrics":
            accept = next(
                (line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("accept:")), None
            )
            body, content_type = await self._metrics(accept)
            return method, 200, body, content_type
        return method, 404, b"not found: /metrics, /healthz, /readyz\n", _TEXT


def _response(status: int, body: bytes, content_type: str, *, head_only: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head if head_only else head + body


async def http_get(url: str, *, timeout: float = 10.0) -> tuple[int, bytes]:
    """GET `url` (http://host:port/path) from a `ProbeServer`: (status, body). For tests and the
    demo; it reads one `Connection: close` response to its end."""
    rest = url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), timeout)
    try:
        writer.write(f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body
