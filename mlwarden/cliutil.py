"""What every `mlwarden` subcommand shares: exit codes, consoles, settings from flags, times,
and the one way commands reach the bus (`bus_client`), which turns NATS failures into one line."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import unicodedata
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import nats.errors
import orjson
from nats.aio.client import Client as Nats
from rich.console import Console
from rich.markup import escape

from shared.bus import close_nats, connect_options, open_nats
from shared.client import Client, actor_keys
from shared.errors import MlwardenError
from shared.permissions import ENDPOINTS
from shared.settings import Settings
from shared.signing import SigningKey

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
#: Width of output that goes to a pipe or a file: rich would cut tables to 80 columns there
#: ("mlw.verdi…"), which scripts then read. Tables only take the width they need.
PIPE_WIDTH = 10_000
out = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() else PIPE_WIDTH)


class HelpFormatter(argparse.HelpFormatter):
    """Help that shows each option's default, unless its text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = "default" in text.lower() or "%(default)" in text
        empty = action.default in (None, False, [], "", argparse.SUPPRESS)
        if shown or empty or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """`HelpFormatter` that keeps the description's and epilog's line breaks."""


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "nats", None):
        overrides["nats_url"] = args.nats
    if getattr(args, "db", None):
        overrides["audit_db_url"] = args.db
    return Settings(**overrides)


#: `scheme://user:password@` in any URL: the password is shown as `***`.
_URL_PASSWORD = re.compile(r"(://[^:@/,\s]+):[^@/,\s]*@")


def redact_urls(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***` (as
    `Settings.nats_url_redacted` does), for error messages that may quote a URL."""
    return _URL_PASSWORD.sub(r"\1:***@", text)


def printable(value: object) -> str:
    """A stored or received value made safe for a terminal and for rich: control and bidi
    characters removed (ANSI escapes, OSC 8 links, U+202E) and rich markup escaped, so what a
    producer wrote is shown, never interpreted (issue 8)."""
    text = "" if value is None else str(value)
    # Cc: C0/C1 controls (ESC, BEL, ...); Cf: format characters (bidi overrides, zero-width).
    kept = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cc", "Cf"))
    return escape(kept)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str) -> float:
    """'7d', '12h', '30m' (relative to now), unix seconds, or an ISO 8601 time."""
    match = _DURATION.match(value.strip())
    if match:
        return time.time() - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    from datetime import UTC, datetime

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a time: {value!r} (try 7d, 12h or 2026-11-01T00:00)") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


# --- the bus, from a command ---------------------------------------------------------------

#: How long a command tries to reach NATS in all. Issue 13: a command fails within 5 s, and the
#: interpreter and imports take a second of that on a loaded machine.
CONNECT_DEADLINE_S = 2.5
#: One connection attempt; a refused port fails at once, a black-holed one takes this long.
CONNECT_ATTEMPT_S = 2.0
#: Time to flush and close a connection on the way out.
CLOSE_TIMEOUT_S = 2.0

# nats-py lower-cases the server's `-ERR 'Permissions Violation for Publish to "subject"'`.
_VIOLATION = re.compile(r'permissions violation for (publish|subscription) to "([^"]*)"', re.IGNORECASE)
_RESPONDER = {subject: service for service, subjects in ENDPOINTS.items() for subject in subjects}


class BusError(MlwardenError, ConnectionError):
    """The bus could not do what a command asked (exit code 2, one line)."""


class BusUnreachable(BusError):
    """No NATS server could be reached (or it refused the credentials) before the deadline."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"NATS unreachable at {url}: {reason}")
        self.url = url
        self.reason = reason


class PermissionDenied(BusError, PermissionError):
    """The server refused this identity a publish or a subscription."""

    def __init__(self, operation: str, subject: str) -> None:
        super().__init__(f"NATS permissions violation: this identity may not {operation.lower()} to {subject!r}")
        self.operation = operation
        self.subject = subject


class NoReply(BusError, TimeoutError):
    """A request was not answered (nobody serves the subject, or not in time)."""

    def __init__(self, subject: str, detail: str) -> None:
        service = _RESPONDER.get(subject)
        hint = f" (is {service} running?)" if service else ""
        super().__init__(f"no reply on {subject}: {detail}{hint}")
        self.subject = subject


class _Refusals:
    """The connection's error callback: keeps the last error, and turns a permissions violation
    into an immediate failure of the command instead of a timeout much later (nats-py reports
    violations only to this callback; the request itself just waits)."""

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.armed = False
        self.last: Exception | None = None
        self.denied: PermissionDenied | None = None

    async def on_error(self, exc: Exception) -> None:
        """nats-py `error_cb`."""
        match = _VIOLATION.search(str(exc))
        if match is None:
            self.last = exc
            return
        if self.denied is None:
            self.denied = PermissionDenied(match.group(1), match.group(2))
            if self.armed and self.task is not None:
                self.task.cancel()

    def reason(self, fallback: BaseException) -> str:
        """Why the connection failed, in one line."""
        exc = self.last or fallback
        if isinstance(exc, TimeoutError):  # nats-py's attempts and our deadline say nothing more
            return f"no answer within {CONNECT_DEADLINE_S:g} s"
        return (str(exc).strip() or type(exc).__name__).splitlines()[0]


class CliClient(Client):
    """A `Client` whose requests fail with a `NoReply` naming the subject."""

    async def request(self, subject: str, body: bytes, timeout: float = 5.0) -> bytes:
        """A raw request/reply."""
        try:
            return await super().request(subject, body, timeout)
        except nats.errors.NoRespondersError:
            raise NoReply(subject, "nothing answers it") from None
        except nats.errors.TimeoutError:
            raise NoReply(subject, f"no answer within {timeout:g} s") from None


async def _open(settings: Settings, source: str, refusals: _Refusals) -> Nats:
    options = connect_options(settings)
    # A command retries briefly, then says so; services wait for NATS as long as it takes.
    options.update(max_reconnect_attempts=3, reconnect_time_wait=0.25)
    try:
        return await asyncio.wait_for(
            open_nats(
                name=source,
                connect_timeout=CONNECT_ATTEMPT_S,
                allow_reconnect=True,
                error_cb=refusals.on_error,
                **options,
            ),
            CONNECT_DEADLINE_S,
        )
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        raise BusUnreachable(settings.nats_url_redacted, refusals.reason(exc)) from None


async def _close(nc: Nats) -> None:
    await close_nats(nc, timeout=CLOSE_TIMEOUT_S)


@asynccontextmanager
async def bus_client(
    settings: Settings, *, source: str, keys: Iterable[SigningKey] | None = None
) -> AsyncIterator[Client]:
    """Connect within `CONNECT_DEADLINE_S`, yield a client, close on exit.

    The one place where a command's NATS failures become `BusError`s, which `main` prints as
    one line with exit code 2: unreachable, permissions violation (with the subject), a request
    nobody answers, a JetStream call that times out.
    """
    task = asyncio.current_task()
    refusals = _Refusals(task)
    nc = await _open(settings, source, refusals)
    refusals.armed = True
    try:
        yield CliClient(nc, source=source, keys=actor_keys(settings) if keys is None else keys)
    except asyncio.CancelledError:
        if refusals.denied is None or task is None:
            raise
        task.uncancel()
        raise refusals.denied from None
    except nats.errors.TimeoutError:
        if refusals.denied is not None:
            raise refusals.denied from None
        raise BusError(f"NATS at {settings.nats_url_redacted} did not answer in time") from None
    except nats.errors.NoRespondersError:
        raise BusError("no responders (is JetStream enabled on the server?)") from None
    finally:
        refusals.armed = False
        try:
            await _close(nc)
        except asyncio.CancelledError:
            # A violation reported as the command finished: its cancel lands here.
            if refusals.denied is None or task is None:
                raise
            task.uncancel()
            raise refusals.denied from None
