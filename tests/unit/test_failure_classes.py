"""Every handler failure has one class (issue 13): the real third-party classes, imported here,
so a class renamed upstream fails this test instead of silently becoming a bug."""

from __future__ import annotations

import errno
import sqlite3

import nats.errors
import nats.js.errors
import psycopg
import pytest
import sqlalchemy.exc

from services.audit_log.errors import StoreUnavailableError
from shared.errors import FailureClass, InvalidMessage, classify_failure

INFRA: list[BaseException] = [
    sqlalchemy.exc.OperationalError("INSERT", None, Exception("attempt to write a readonly database")),
    sqlalchemy.exc.InterfaceError("SELECT", None, Exception("connection closed")),
    sqlalchemy.exc.DisconnectionError(),
    sqlalchemy.exc.TimeoutError(),
    sqlite3.OperationalError("database or disk is full"),
    psycopg.OperationalError("connection refused"),
    nats.errors.TimeoutError(),
    nats.errors.NoRespondersError(),
    nats.errors.ConnectionClosedError(),
    nats.errors.ConnectionReconnectingError(),
    nats.errors.OutboundBufferLimitError(),
    nats.js.errors.ServiceUnavailableError(),
    nats.js.errors.NoStreamResponseError(),
    nats.js.errors.APIError(code=503, description="insufficient resources"),
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EROFS, "Read-only file system"),
    ConnectionRefusedError(),
    TimeoutError(),
    StoreUnavailableError("down", url="sqlite://"),
]
BUGS: list[BaseException] = [
    KeyError("x"),
    ValueError("x"),
    FileNotFoundError(errno.ENOENT, "gone"),
    nats.js.errors.NotFoundError(),
    nats.js.errors.APIError(code=400, description="bad request"),
]


@pytest.mark.parametrize("exc", INFRA, ids=lambda e: type(e).__name__)
def test_infrastructure_failures_are_retried_without_limit(exc: BaseException) -> None:
    assert classify_failure(exc) is FailureClass.INFRASTRUCTURE


@pytest.mark.parametrize("exc", BUGS, ids=lambda e: type(e).__name__)
def test_unexpected_exceptions_are_bugs(exc: BaseException) -> None:
    assert classify_failure(exc) is FailureClass.BUG


def test_input_that_can_never_succeed_is_input() -> None:
    assert classify_failure(InvalidMessage("bad schema")) is FailureClass.INPUT
