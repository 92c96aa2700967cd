"""Every attack of issue 3, performed on a real store (SQLite and PostgreSQL), then `mlwarden audit
verify` run on it: it must exit 1 and name the first bad entry.

The attacker has database rights: they drop the append-only triggers first, and the cleverer
one recomputes the hash chain and the Merkle tree so that the database is self-consistent. The
signed checkpoints (here in the mirror file, as when the bus is down) are what they cannot redo.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from sqlalchemy import delete, insert, select, update

from mlwarden.cli import main
from services.audit_log.checkpoint import CheckpointMirror, sign_checkpoint
from services.audit_log.settings import mirror_path
from services.audit_log.store import AuditStore, IncomingEvent, chain_hash, leaf_input
from services.audit_log.verify import verify_trail
from shared.signing import SigningKey, load_or_create_key

if TYPE_CHECKING:
    from conftest import DbTarget

EventFactory = Callable[..., bytes]
DropGuards = Callable[[AuditStore], None]
N = 12
CHECKPOINT_SIZES = (4, 8, 12)
# Port 1: nothing listens, so `audit verify` falls back to the mirror file at once.
NO_BUS = "nats://127.0.0.1:1"


class Trail:
    """A filled store, audit-log's key in the data dir, and checkpoints in the mirror."""

    def __init__(self, target: DbTarget, store: AuditStore, data_dir: Path, drop_guards: DropGuards) -> None:
        self.target = target
        self.store = store
        self.data_dir = data_dir
        self.key: SigningKey = load_or_create_key(data_dir / "keys" / "audit-log.pem", "audit-log")
        self.mirror = CheckpointMirror(mirror_path(data_dir))
        self._drop_guards = drop_guards

    def checkpoint(self, size: int) -> None:
        self.mirror.append(sign_checkpoint(self.key, size, self.store.root(size), timestamp_ms=1_000 * size))

    def verify(self, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any]]:
        capsys.readouterr()
        code = main(
            [
                "audit",
                "verify",
                "--data-dir",
                str(self.data_dir),
                "--db",
                self.target.cli_url,
                "--nats",
                NO_BUS,
                "--format",
                "json",
                *extra,
            ]
        )
        return code, orjson.loads(capsys.readouterr().out)

    def public_key_file(self) -> Path:
        """audit-log's public key as an auditor keeps it, outside the data dir."""
        path = self.data_dir.parent / "audit-log.pub.pem"
        path.write_bytes(self.key.public_pem())
        return path

    # --- what an attacker does ---------------------------------------------------------------

    def sql(self, *statements: Any) -> None:
        self._drop_guards(self.store)
        with self.store.engine.begin() as conn:
            for statement in statements:
                conn.execute(statement)

    def set_seq(self, old: int, new: int) -> None:
        t = self.store.table
        self.sql(update(t).where(t.c.seq == old).values(seq=new))

    def incoming(self) -> list[IncomingEvent]:
        fields = [f.name for f in dataclasses.fields(IncomingEvent)]
        return [IncomingEvent(**{f: getattr(e, f) for f in fields}) for e in self.store.iter_entries()]

    def rewrite(self, items: list[IncomingEvent]) -> None:
        """Replace the whole history, recomputing seq, chain and tree exactly as the writer does."""
        self.sql(delete(self.store.table), delete(self.store.tree_table))
        self.store.append_batch(items)


@pytest.fixture
def trail(
    db_target: DbTarget, store: AuditStore, tmp_path: Path, event_bytes: EventFactory, drop_guards: DropGuards
) -> Trail:
    made = Trail(db_target, store, tmp_path / "data", drop_guards)
    items = [
        IncomingEvent.from_bytes(
            event_bytes(event_id=f"e{i}", time=1_700_000_000.0 + i, data={"uploader": f"u{i}"}),
            recorded_at=1_700_000_100.0 + i,
        )
        for i in range(1, N + 1)
    ]
    for size in CHECKPOINT_SIZES:
        store.append_batch(items[size - 4 : size])
        made.checkpoint(size)
    return made


def forged(event_bytes: EventFactory, event_id: str = "forged") -> IncomingEvent:
    return IncomingEvent.from_bytes(
        event_bytes(event_id=event_id, data={"uploader": "mallory"}), recorded_at=1_700_000_050.0
    )


def test_an_intact_trail_verifies(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = trail.verify(capsys)
    assert code == 0, report
    assert (report["entries"], report["checkpoints"], report["verified_size"]) == (N, 3, N)
    assert report["root_hash"] == trail.store.root(N).hex()
    assert "mirror" in report["checkpoint_source"]


# --- attacks a plain edit makes: the chain names the exact entry ----------------------------


@pytest.mark.parametrize(("column", "value"), [("body", '{"forged": true}'), ("actor", "mallory"), ("time", 1.0)])
def test_changed_field(trail: Trail, capsys: pytest.CaptureFixture[str], column: str, value: object) -> None:
    t = trail.store.table
    trail.sql(update(t).where(t.c.seq == 6).values({column: value}))
    code, report = trail.verify(capsys)
    assert code == 1
    assert report["first_bad_seq"] == 6


@pytest.mark.parametrize("seq", [1, 6, 9])
def test_deleted_entry_in_the_middle(trail: Trail, capsys: pytest.CaptureFixture[str], seq: int) -> None:
    t = trail.store.table
    trail.sql(delete(t).where(t.c.seq == seq))
    code, report = trail.verify(capsys)
    assert (code, report["first_bad_seq"]) == (1, seq)
    assert "missing" in report["reason"]


def test_deleted_newest_entry(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    t = trail.store.table
    trail.sql(delete(t).where(t.c.seq == N))
    code, report = trail.verify(capsys)
    assert (code, report["first_bad_seq"]) == (1, N)
    assert "removed" in report["reason"]


def test_two_entries_swapped(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    trail.set_seq(3, 1000)
    trail.set_seq(7, 3)
    trail.set_seq(1000, 7)
    code, report = trail.verify(capsys)
    assert (code, report["first_bad_seq"]) == (1, 3)


def test_inserted_entry(trail: Trail, capsys: pytest.CaptureFixture[str], event_bytes: EventFactory) -> None:
    # Shift entries 6.. up by one, then insert a correctly hashed row linked to entry 5.
    for seq in range(N, 5, -1):
        trail.set_seq(seq, seq + 1)
    prev = trail.store.select_entries(trail.store.table.c.seq == 5)[0].entry_hash
    item = forged(event_bytes)
    row = {**dataclasses.asdict(item), "seq": 6, "prev_hash": prev, "entry_hash": chain_hash(prev, leaf_input(6, item))}
    trail.sql(insert(trail.store.table).values(row))
    code, report = trail.verify(capsys)
    assert code == 1
    # The forged row itself links correctly; its leaf is not the stored tree's leaf 6.
    assert report["first_bad_seq"] == 6


# --- the same attacks with chain and tree recomputed: the checkpoints catch them ------------


def test_changed_field_with_chain_and_tree_recomputed(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    items = trail.incoming()
    items[5] = dataclasses.replace(items[5], decision="pass", actor="mallory")
    trail.rewrite(items)
    code, report = trail.verify(capsys)
    assert code == 1
    # Entry 6 lies between the checkpoints for 4 and 8: that range is named.
    assert report["first_bad_seq"] == 5
    assert "entries 5..8" in report["reason"]
    assert report["verified_size"] == 4


def test_deleted_middle_entry_with_chain_and_tree_recomputed(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    items = trail.incoming()
    del items[9]
    trail.rewrite(items)
    code, report = trail.verify(capsys)
    # Entry 10 is gone: 9..12 is the range no checkpoint vouches for any more.
    assert (code, report["first_bad_seq"]) == (1, 9)
    assert "9..12" in report["reason"]


def test_swap_with_chain_and_tree_recomputed(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    items = trail.incoming()
    items[1], items[2] = items[2], items[1]
    trail.rewrite(items)
    code, report = trail.verify(capsys)
    assert (code, report["first_bad_seq"]) == (1, 1)


def test_insert_with_chain_and_tree_recomputed(
    trail: Trail, capsys: pytest.CaptureFixture[str], event_bytes: EventFactory
) -> None:
    items = trail.incoming()
    items.insert(10, forged(event_bytes))
    trail.rewrite(items)
    code, report = trail.verify(capsys)
    assert (code, report["first_bad_seq"]) == (1, 9)


@pytest.mark.parametrize(("removed", "first_unproven"), [(1, 9), (3, 9), (5, 5)])
def test_truncation_with_chain_and_tree_recomputed(
    trail: Trail, capsys: pytest.CaptureFixture[str], removed: int, first_unproven: int
) -> None:
    trail.rewrite(trail.incoming()[: N - removed])
    code, report = trail.verify(capsys)
    assert code == 1
    # The first entry after the last checkpoint that still matches.
    assert report["first_bad_seq"] == first_unproven
    assert "removed" in report["reason"]


def test_truncation_by_deleting_rows_and_tree_nodes(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    # The newest two entries and every tree node they completed, removed in SQL.
    s, t = trail.store.table, trail.store.tree_table
    trail.sql(delete(s).where(s.c.seq > N - 2), delete(t).where(t.c.tree_size > N - 2))
    code, report = trail.verify(capsys)
    assert (code, report["first_bad_seq"]) == (1, 9)
    assert "removed" in report["reason"]


def test_a_tampered_tree_node_is_named(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    t = trail.store.tree_table
    trail.sql(update(t).where(t.c.tree_size == 8, t.c.level == 2).values(hash=b"\x00" * 32))
    code, report = trail.verify(capsys)
    assert (code, report["first_bad_seq"]) == (1, 5)
    assert "Merkle node" in report["reason"]


# --- attacks on the checkpoints themselves ----------------------------------------------------


def test_forged_checkpoint_in_the_mirror(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    # Rewrite the history and sign matching checkpoints with a key of the attacker's.
    items = trail.incoming()
    items[2] = dataclasses.replace(items[2], actor="mallory")
    trail.rewrite(items)
    mallory = SigningKey.generate("audit-log")
    trail.mirror.path.unlink()
    for size in CHECKPOINT_SIZES:
        trail.mirror.append(sign_checkpoint(mallory, size, trail.store.root(size), timestamp_ms=size))
    code, report = trail.verify(capsys)
    assert code == 1
    assert "forged checkpoint" in report["reason"]


def test_a_shrinking_checkpoint_sequence_is_refused(trail: Trail) -> None:
    cps = trail.mirror.read()
    public = trail.key.private.public_key()
    report = verify_trail(trail.store, [cps[1], cps[0]], public)
    assert not report.ok and "shrank" in report.reason


def test_a_forked_checkpoint_is_refused(trail: Trail) -> None:
    other = sign_checkpoint(trail.key, 8, b"\x11" * 32, timestamp_ms=9_000)
    cp4, cp8, cp12 = trail.mirror.read()
    report = verify_trail(trail.store, [cp4, cp8, other, cp12], trail.key.private.public_key())
    assert not report.ok and "forked" in report.reason


def test_checkpoints_without_a_key_do_not_pass(trail: Trail) -> None:
    report = verify_trail(trail.store, trail.mirror.read(), None)
    assert not report.ok


def test_later_unsigned_appends_still_verify(trail: Trail, event_bytes: EventFactory) -> None:
    trail.store.append_batch([forged(event_bytes, "late")])
    report = verify_trail(trail.store, trail.mirror.read(), trail.key.private.public_key())
    assert report.ok, report.reason
    assert (report.entries, report.verified_size) == (N + 1, N)


def test_verify_reads_the_trail_in_chunks(trail: Trail) -> None:
    report = verify_trail(trail.store, trail.mirror.read(), trail.key.private.public_key(), chunk=5)
    assert report.ok and report.entries == N
    with trail.store.engine.connect() as conn:
        assert conn.execute(select(trail.store.tree_table.c.tree_size)).first() is not None


# --- issue 8: no anchor, no "intact" -------------------------------------------------------------


def truncate_and_remove_the_mirror(trail: Trail, newest: int = 3) -> None:
    """Drop the newest entries with chain and tree recomputed, then delete the checkpoint mirror."""
    trail.rewrite(trail.incoming()[:-newest])
    trail.mirror.path.unlink()


def test_verify_fails_closed_when_the_newest_entries_and_the_mirror_are_removed(
    trail: Trail, capsys: pytest.CaptureFixture[str]
) -> None:
    truncate_and_remove_the_mirror(trail)
    # The bus is unreachable and the mirror is gone: nothing outside the database vouches for it.
    code, report = trail.verify(capsys)
    assert code == 1, report
    assert report["ok"] is False and report["anchored"] is False
    assert "no signed checkpoint" in report["reason"]
    # The auditor may accept an unanchored check explicitly; it still says so.
    code, report = trail.verify(capsys, "--allow-unanchored")
    assert code == 0, report
    assert (report["ok"], report["anchored"], report["entries"]) == (True, False, N - 3)


def test_verify_fails_closed_in_text_mode_too(trail: Trail, capsys: pytest.CaptureFixture[str]) -> None:
    truncate_and_remove_the_mirror(trail)
    capsys.readouterr()
    argv = ["audit", "verify", "--data-dir", str(trail.data_dir), "--db", trail.target.cli_url, "--nats", NO_BUS]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "UNANCHORED" in captured.out and "intact" not in captured.out


def test_a_trusted_checkpoint_kept_by_the_auditor_catches_truncation_without_stream_or_mirror(
    trail: Trail, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    witness = tmp_path / "auditor" / "audit-checkpoint.json"
    key = trail.public_key_file()
    base = ["audit", "checkpoint", "--data-dir", str(trail.data_dir), "--db", trail.target.cli_url, "--nats", NO_BUS]
    assert main([*base, "--key", str(key), "--out", str(witness)]) == 0
    assert orjson.loads(witness.read_bytes())["tree_size"] == N
    truncate_and_remove_the_mirror(trail)
    code, report = trail.verify(capsys, "--trusted-checkpoint", str(witness), "--key", str(key))
    assert code == 1, report
    assert report["trusted_checkpoint"] == N
    assert "removed" in report["reason"] and f"signed for {N} entries but the trail holds {N - 3}" in report["reason"]
    # Even an auditor who allows unanchored checks is not told "intact" below their checkpoint.
    code, report = trail.verify(capsys, "--trusted-checkpoint", str(witness), "--key", str(key), "--allow-unanchored")
    assert code == 1, report


def test_a_trusted_checkpoint_needs_a_key_from_outside_the_data_dir(
    trail: Trail, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    witness = tmp_path / "cp.json"
    witness.write_text(trail.mirror.read()[-1].model_dump_json())
    # Only the data dir's key, which whoever controls the data dir can replace: refused (usage).
    code = main(
        [
            "audit",
            "verify",
            "--data-dir",
            str(trail.data_dir),
            "--db",
            trail.target.cli_url,
            "--nats",
            NO_BUS,
            "--trusted-checkpoint",
            str(witness),
        ]
    )
    assert code == 2
    # A witness file signed by another key is refused too.
    other = SigningKey.generate("audit-log")
    forged = sign_checkpoint(other, N, trail.store.root(N), timestamp_ms=1)
    witness.write_text(forged.model_dump_json())
    code, _ = trail.verify(capsys, "--trusted-checkpoint", str(witness), "--key", str(trail.public_key_file()))
    assert code == 1


def test_the_witness_refuses_to_replace_its_checkpoint_with_a_shorter_history(
    trail: Trail, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    witness = tmp_path / "cp.json"
    key = trail.public_key_file()
    base = ["audit", "checkpoint", "--data-dir", str(trail.data_dir), "--db", trail.target.cli_url, "--nats", NO_BUS]
    assert main([*base, "--key", str(key), "--out", str(witness)]) == 0
    kept = witness.read_bytes()
    # The attacker rewrites the trail shorter and signs a matching checkpoint with a stolen key.
    trail.rewrite(trail.incoming()[:-3])
    trail.mirror.path.unlink()
    trail.checkpoint(N - 3)
    assert main([*base, "--key", str(key), "--out", str(witness)]) == 1
    assert witness.read_bytes() == kept
