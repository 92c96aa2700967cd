"""The one error base of the project; structured fields, turned into exit codes only at the edges."""

from __future__ import annotations

import errno
from enum import StrEnum


class MlwardenError(Exception):
    """Base of every error mlwarden raises on purpose."""


class InvalidMessage(MlwardenError, ValueError):
    """A message that can never be processed: bad JSON, wrong schema, non-finite numbers, too big."""

    def __init__(self, reason: str, *, subject: str = "", size: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.subject = subject
        self.size = size


class SignatureError(MlwardenError, ValueError):
    """A signature that is missing, malformed, from an unknown key or that does not verify."""

    def __init__(self, reason: str, *, signer: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.signer = signer


class TransientError(MlwardenError, RuntimeError):
    """A failure that may succeed on retry (an object not yet readable, a database lock)."""


class InputError(MlwardenError, ValueError):
    """Input a user handed to a command or a service that it cannot work with (exit code 2)."""


class FailureClass(StrEnum):
    """What a handler failure says about the message (DESIGN.md principle 6, issue 13)."""

    #: The message can never be processed (bad JSON, wrong schema, too big): dead-letter it now.
    INPUT = "input"
    #: A resource the work needs is missing for now (database, disk, object store, NATS): retry
    #: for as long as it takes, never spending the message's delivery attempts.
    INFRASTRUCTURE = "infrastructure"
    #: An unexpected exception: retry a few times, then dead-letter it with an alert.
    BUG = "bug"


# Third-party infrastructure errors, by (module, class name) so that this module imports neither
# nats nor SQLAlchemy (every CLI command imports it). A class matches if it or a base is listed;
# tests/unit/test_failure_classes.py imports each one so a renamed class fails a test.
_INFRA_CLASSES: frozenset[tuple[str, str]] = frozenset(
    {
        # SQLAlchemy wraps the driver's errors: OperationalError is "the database is not there or
        # refused the write" (readonly file, disk full, connection refused, lock timeout).
        ("sqlalchemy.exc", "OperationalError"),
        ("sqlalchemy.exc", "InterfaceError"),
        ("sqlalchemy.exc", "DisconnectionError"),
        ("sqlalchemy.exc", "TimeoutError"),  # the connection pool is exhausted
        ("sqlite3", "OperationalError"),
        ("psycopg", "OperationalError"),
        # nats-py: the connection or the server, not the message.
        ("nats.errors", "TimeoutError"),
        ("nats.errors", "NoRespondersError"),
        ("nats.errors", "StaleConnectionError"),
        ("nats.errors", "OutboundBufferLimitError"),
        ("nats.errors", "ConnectionClosedError"),
        ("nats.errors", "ConnectionDrainingError"),
        ("nats.errors", "ConnectionReconnectingError"),
        ("nats.errors", "NoServersError"),
        ("nats.errors", "SlowConsumerError"),
        ("nats.js.errors", "ServiceUnavailableError"),
        ("nats.js.errors", "ServerError"),
        ("nats.js.errors", "NoStreamResponseError"),
    }
)

# OSErrors that name a wrong path rather than a missing resource: a retry cannot fix them, so
# they are bugs (bounded retries), not outages. Everything else from the OS (ENOSPC, EROFS, EIO,
# EACCES on a file made immutable, connection refused, timeouts) is infrastructure.
_PATH_ERRNOS: frozenset[int] = frozenset({errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP})


def classify_failure(exc: BaseException) -> FailureClass:
    """Which of the three failure classes `exc`, raised by a handler, belongs to."""
    if isinstance(exc, InvalidMessage):
        return FailureClass.INPUT
    if isinstance(exc, TransientError):
        return FailureClass.INFRASTRUCTURE
    for cls in type(exc).__mro__:
        if (cls.__module__, cls.__qualname__) in _INFRA_CLASSES:
            return FailureClass.INFRASTRUCTURE
        # A JetStream API error with a 5xx code: the server (or its store) is in trouble,
        # e.g. "insufficient resources" when its disk is full.
        if (cls.__module__, cls.__qualname__) == ("nats.js.errors", "APIError"):
            code = getattr(exc, "code", None)
            return FailureClass.INFRASTRUCTURE if isinstance(code, int) and code >= 500 else FailureClass.BUG
    if isinstance(exc, OSError):
        return FailureClass.BUG if exc.errno in _PATH_ERRNOS else FailureClass.INFRASTRUCTURE
    return FailureClass.BUG
