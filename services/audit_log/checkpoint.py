"""Signed checkpoints: audit-log's Ed25519 signature over (origin, tree size, root hash, time).

A checkpoint is what makes the Merkle tree useful to someone who does not trust the database:
once a checkpoint for size n is published outside SQL (the JetStream stream `MLW_CHECKPOINTS`,
which denies delete and purge, and a local mirror file), any later change to the first n
entries, and their removal, is detected by recomputing the root (`verify.verify_trail`).

The signed message is a checkpoint *note* in the shape of the C2SP tlog-checkpoint format
(https://c2sp.org/tlog-checkpoint): origin line, decimal tree size, base64 root hash, plus one
extension line with the signing time::

    mlwarden/audit-log\\n
    1234\\n
    <base64 of the 32-byte root>\\n
    timestamp 1714564800123\\n

Text rather than JSON, so that it can never be confused with a signed envelope (canonical JSON
objects start with `{`, which an origin may not), and so a verifier in any language rebuilds it
with string formatting alone. See docs/audit-proofs.md.
"""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from shared.errors import InputError, MlwardenError, SignatureError
from shared.events import AuditCheckpoint
from shared.signing import KeyHistory, SigningKey, verify_signature

DEFAULT_ORIGIN: Final = "mlwarden/audit-log"
#: An origin is one line that cannot start a JSON object.
_ORIGIN = re.compile(r"^[^\s{][^\n\r]{0,255}$")


class CheckpointError(MlwardenError, ValueError):
    """A checkpoint that is malformed, badly signed or inconsistent with an earlier one."""

    def __init__(self, reason: str, *, tree_size: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tree_size = tree_size


def checkpoint_note(origin: str, tree_size: int, root: bytes, timestamp_ms: int) -> bytes:
    """The exact bytes a checkpoint signature covers."""
    if not _ORIGIN.match(origin):
        raise InputError(f"checkpoint origin must be one line not starting with '{{' or a space: {origin!r}")
    if tree_size < 0 or timestamp_ms < 0 or len(root) != 32:
        raise InputError("checkpoint needs a non-negative size and time and a 32-byte root")
    return f"{origin}\n{tree_size}\n{base64.b64encode(root).decode()}\ntimestamp {timestamp_ms}\n".encode()


def sign_checkpoint(
    key: SigningKey, tree_size: int, root: bytes, *, timestamp_ms: int, origin: str = DEFAULT_ORIGIN
) -> AuditCheckpoint:
    """Sign a checkpoint for the first `tree_size` entries with root `root`."""
    note = checkpoint_note(origin, tree_size, root, timestamp_ms)
    return AuditCheckpoint(
        origin=origin,
        tree_size=tree_size,
        root_hash=root.hex(),
        timestamp_ms=timestamp_ms,
        key_id=key.key_id,
        signature=key.sign(note),
    )


#: audit-log's key as a verifier holds it: one public key (`--key`), or its history from the trust store.
AuditKey = Ed25519PublicKey | KeyHistory


def verify_checkpoint(checkpoint: AuditCheckpoint, public: AuditKey) -> None:
    """Raise CheckpointError unless `public` signed exactly this checkpoint.

    With audit-log's `KeyHistory` from the trust store, the key current at the checkpoint's
    timestamp must have signed it: checkpoints signed before a key rotation still verify.
    """
    note = checkpoint_note(
        checkpoint.origin, checkpoint.tree_size, bytes.fromhex(checkpoint.root_hash), checkpoint.timestamp_ms
    )
    try:
        if isinstance(public, KeyHistory):
            public.verify_at(note, checkpoint.signature, checkpoint.timestamp_ms / 1000)
        else:
            verify_signature(public, note, checkpoint.signature)
    except SignatureError as exc:
        raise CheckpointError(
            f"checkpoint at tree size {checkpoint.tree_size}: {exc.reason}", tree_size=checkpoint.tree_size
        ) from exc


@dataclass(frozen=True, slots=True)
class CheckpointPolicy:
    """When to sign: every `every_entries` new entries, or `every_seconds` after new entries arrived."""

    every_entries: int = 1000
    every_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.every_entries < 1 or not self.every_seconds > 0:
            raise InputError("checkpoint policy needs every_entries >= 1 and every_seconds > 0")

    def due(self, tree_size: int, last: AuditCheckpoint | None, now_ms: int) -> bool:
        """Whether a checkpoint for `tree_size` should be signed now."""
        last_size = last.tree_size if last is not None else 0
        if tree_size <= last_size:
            return False
        if tree_size - last_size >= self.every_entries:
            return True
        last_ms = last.timestamp_ms if last is not None else 0
        return now_ms - last_ms >= self.every_seconds * 1000


class CheckpointMirror:
    """The local copy of every checkpoint: one JSON object a line, appended and fsynced.

    The authoritative copy is the JetStream stream; this file lets `audit verify` work when the
    bus is down. A torn last line (a crash while writing) is ignored; any other malformed line
    is an error, since nobody but audit-log writes here.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, checkpoint: AuditCheckpoint) -> None:
        """Add one checkpoint durably."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = orjson.dumps(checkpoint.model_dump(mode="json")) + b"\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> list[AuditCheckpoint]:
        """Every checkpoint, in the order written (empty when the file does not exist)."""
        if not self.path.exists():
            return []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, torn = lines[:-1], lines[-1]
        del torn  # no trailing newline: the write of this line never finished
        found: list[AuditCheckpoint] = []
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                found.append(AuditCheckpoint.model_validate(orjson.loads(line)))
            except (orjson.JSONDecodeError, ValidationError) as exc:
                raise CheckpointError(f"{self.path}:{number}: not a checkpoint: {str(exc)[:200]}") from exc
        return found

    def latest(self) -> AuditCheckpoint | None:
        """The last checkpoint written, if any."""
        found = self.read()
        return found[-1] if found else None
