"""What every `mlwarden` subcommand shares: exit codes, consoles, settings from flags, times."""

from __future__ import annotations

import argparse
import re
import sys
import time
import unicodedata
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape

from shared.settings import Settings

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2
out = Console()
err = Console(stderr=True)


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
