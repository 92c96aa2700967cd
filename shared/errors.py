"""The one error base of the project; structured fields, turned into exit codes only at the edges."""

from __future__ import annotations


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
