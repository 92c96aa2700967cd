"""Signed checkpoints: the note format, signatures, the mirror file and the policy."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from services.audit_log.checkpoint import (
    CheckpointError,
    CheckpointMirror,
    CheckpointPolicy,
    checkpoint_note,
    sign_checkpoint,
    verify_checkpoint,
)
from shared.errors import InputError
from shared.signing import SigningKey, verify_signature

ROOT = bytes(range(32))
KEY = SigningKey.generate("audit-log")


def test_the_note_is_the_documented_text() -> None:
    note = checkpoint_note("mlwarden/audit-log", 1234, ROOT, 1_714_564_800_123)
    b64 = base64.b64encode(ROOT).decode()
    assert note == f"mlwarden/audit-log\n1234\n{b64}\ntimestamp 1714564800123\n".encode()


def test_a_signed_checkpoint_verifies_with_plain_ed25519_over_the_note() -> None:
    cp = sign_checkpoint(KEY, 7, ROOT, timestamp_ms=5)
    verify_checkpoint(cp, KEY.private.public_key())
    # A third party needs nothing of ours: Ed25519 over the note they rebuild.
    verify_signature(KEY.private.public_key(), checkpoint_note(cp.origin, 7, ROOT, 5), cp.signature)
    assert (cp.tree_size, cp.root_hash, cp.key_id) == (7, ROOT.hex(), "audit-log")


@pytest.mark.parametrize(
    "change",
    [{"tree_size": 8}, {"root_hash": "ff" * 32}, {"timestamp_ms": 6}, {"origin": "mlwarden/other"}],
)
def test_any_changed_field_breaks_the_signature(change: dict[str, object]) -> None:
    cp = sign_checkpoint(KEY, 7, ROOT, timestamp_ms=5)
    with pytest.raises(CheckpointError):
        verify_checkpoint(cp.model_copy(update=change), KEY.private.public_key())


def test_another_key_is_refused() -> None:
    cp = sign_checkpoint(SigningKey.generate("audit-log"), 7, ROOT, timestamp_ms=5)
    with pytest.raises(CheckpointError):
        verify_checkpoint(cp, KEY.private.public_key())


@pytest.mark.parametrize("origin", ["", "{json", " spaced", "two\nlines"])
def test_bad_origins_are_refused(origin: str) -> None:
    with pytest.raises(InputError):
        checkpoint_note(origin, 1, ROOT, 1)


def test_mirror_round_trip_and_a_torn_last_line(tmp_path: Path) -> None:
    mirror = CheckpointMirror(tmp_path / "sub" / "cps.jsonl")
    assert mirror.read() == [] and mirror.latest() is None
    cps = [sign_checkpoint(KEY, n, ROOT, timestamp_ms=n) for n in (1, 2, 3)]
    for cp in cps:
        mirror.append(cp)
    assert mirror.read() == cps
    with mirror.path.open("ab") as fh:
        fh.write(b'{"origin": "half a li')  # a crash mid-write
    assert mirror.latest() == cps[-1]


def test_mirror_with_a_garbled_line_is_an_error(tmp_path: Path) -> None:
    mirror = CheckpointMirror(tmp_path / "cps.jsonl")
    mirror.append(sign_checkpoint(KEY, 1, ROOT, timestamp_ms=1))
    with mirror.path.open("ab") as fh:
        fh.write(b"garbage\n")
    with pytest.raises(CheckpointError):
        mirror.read()


def test_policy_by_count_and_by_time() -> None:
    policy = CheckpointPolicy(every_entries=100, every_seconds=5.0)
    last = sign_checkpoint(KEY, 50, ROOT, timestamp_ms=10_000)
    assert not policy.due(50, last, now_ms=99_999)  # nothing new
    assert not policy.due(149, last, now_ms=14_999)  # too few, too soon
    assert policy.due(150, last, now_ms=10_001)  # enough entries
    assert policy.due(51, last, now_ms=15_000)  # long enough
    assert policy.due(1, None, now_ms=10**13)
    with pytest.raises(InputError):
        CheckpointPolicy(every_entries=0)
