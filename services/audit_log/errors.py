"""Errors of the audit-log domain; all subclass `shared.errors.MlwardenError`."""

from __future__ import annotations

from shared.errors import InvalidMessage, MlwardenError, TransientError


class StoreUnavailableError(TransientError):
    """The database could not be reached or was locked; the batch was not written (retry it)."""

    def __init__(self, reason: str, *, url: str) -> None:
        super().__init__(f"audit store {url}: {reason}")
        self.reason = reason
        #: The database URL with any password hidden.
        self.url = url


class ConcurrentAppendError(TransientError):
    """Another writer appended between this writer's read of the head and its insert.

    The whole batch was rolled back, so nothing was half-written and the chain did not fork;
    retrying appends it after the other writer's rows.
    """

    def __init__(self, reason: str, *, url: str, first_seq: int) -> None:
        super().__init__(f"audit store {url}: concurrent append at seq {first_seq}: {reason}")
        self.reason = reason
        self.url = url
        #: The seq this writer tried to give its first row.
        self.first_seq = first_seq


class CorruptEntryError(MlwardenError, ValueError):
    """A stored entry cannot be read back (its body is not JSON): run `verify_chain`."""

    def __init__(self, reason: str, *, seq: int) -> None:
        super().__init__(f"audit entry seq {seq}: {reason}")
        self.reason = reason
        self.seq = seq


class TreeError(MlwardenError, ValueError):
    """The stored Merkle tree does not cover or does not match the entries."""

    def __init__(self, reason: str, *, seq: int) -> None:
        super().__init__(f"audit tree: {reason}")
        self.reason = reason
        #: The first entry the problem concerns.
        self.seq = seq


class SubjectMismatch(InvalidMessage):
    """An envelope whose `type` is not the subject it arrived on: recorded as a rejection only."""

    def __init__(self, *, claimed: str, arrived_on: str, size: int) -> None:
        super().__init__(
            f"type {claimed!r} differs from the subject {arrived_on!r} the message arrived on",
            subject=arrived_on,
            size=size,
        )
        #: The type the envelope claims.
        self.claimed = claimed
        #: The subject it really arrived on.
        self.arrived_on = arrived_on


class FencedError(MlwardenError, PermissionError):
    """This writer's fencing token is not the newest claim in the store: another audit-log
    instance took the writer lease since, so this one must not commit (issue 13)."""

    def __init__(self, *, epoch: str, token: int, current_epoch: str, current_token: int) -> None:
        super().__init__(
            f"audit writer fenced: token {token} (epoch {epoch!r}) is not the newest claim"
            f" {current_token} (epoch {current_epoch!r})"
        )
        #: This writer's lease epoch and token.
        self.epoch = epoch
        self.token = token
        #: The newest claim in the store.
        self.current_epoch = current_epoch
        self.current_token = current_token
