"""A race on a real bus (issue 11): two promotion requests for one model and stage (different
versions) approved at once, with a journal write failing once and a registry-gate restart in the
middle. Exactly one version ends current, every decided request left exactly one stage change,
the stage changes' order is the order the verdicts went out in, and the journal replays to the
very state registry-gate holds (also after another restart)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from mlwarden.bootstrap import actor_key
from services.registry_gate import app as gate_app
from services.registry_gate.app import Gate, _load_state
from services.registry_gate.gate import RegistryState
from shared.errors import TransientError
from shared.events import AuditQuery, RegistryStatus
from shared.topology import Subjects
from tests._poll import until
from tests.integration.test_it_registry_lifecycle import ROOTS, _about, _status, _verdicts


def _gate(running: Any) -> Gate:
    gate: Gate = running.apps["registry-gate"].state["gate"]
    return gate


async def _replay_and_memory(running: Any) -> tuple[RegistryState, RegistryState]:
    """The journal's replay, and the state registry-gate holds in memory (read under its lock;
    call once registry-gate has settled: each replay opens a key watcher)."""
    gate = _gate(running)
    async with gate.lock:
        return await _load_state(gate.runtime), gate.state


def _shown(status: RegistryStatus) -> Any:
    # What `registry status` shows, without the clock-dependent parts of pending requests.
    return (
        status.current,
        sorted((p.request_id, p.decision, tuple(p.approvers), p.policy_version) for p in status.promotions),
    )


async def test_two_promotions_for_one_stage_approved_at_once_end_with_one_current_version(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first stage change's journal write fails once (a KV hiccup): the approval that caused it
    # is retried, and the change must still reach the journal.
    journal = Gate.journal
    failed: list[str] = []

    async def flaky(self: Gate, kind: str, ident: str, fact: BaseModel, *, once: bool = False) -> None:
        if kind == "change" and not failed:
            failed.append(ident)
            raise TransientError("injected: the state bucket did not answer")
        await journal(self, kind, ident, fact, once=once)

    monkeypatch.setattr(gate_app.Gate, "journal", flaky)
    running = await bus("audit-log", "registry-gate")
    client = running.client
    alice, bob, carol = (actor_key(running.settings, n) for n in ("alice", "bob", "carol"))
    async with client.watch() as watcher:
        await _verdicts(running)
        requests = {
            version: await client.request_promotion(
                alice, model="churn", version=version, stage="production", root_digest=ROOTS[version]
            )
            for version in ("1", "2")
        }
        for request in requests.values():
            assert await watcher.wait(_about(request.id, "pending"), 20)
        # Every approval of both requests at once.
        await asyncio.gather(
            *(
                client.approve(reviewer, request_id=request.id, model="churn", version=version, stage="production")
                for version, request in requests.items()
                for reviewer in (bob, carol)
            )
        )
        # Restart in the middle: as soon as the first of the two is promoted.
        first = await watcher.wait(
            lambda e: any(_about(r.id, "promoted")(e) for r in requests.values()),
            30,
        )
        assert first is not None
        # At any moment between two events, the journal holds what registry-gate holds.
        replayed, memory = await _replay_and_memory(running)
        assert replayed.to_dict() == memory.to_dict()
        await running.stop("registry-gate")
        await running.start("registry-gate")
        for request in requests.values():
            assert await watcher.wait(_about(request.id, "promoted"), 30), request.id
    assert failed, "the injected journal failure happened"
    await until(running.settled, what="registry-gate consumed every approval")

    # The journal replays to exactly the state in memory.
    replayed, memory = await _replay_and_memory(running)
    assert replayed.to_dict() == memory.to_dict()
    changes = replayed.history("churn", "production")
    assert [c.seq for c in changes] == sorted({c.seq for c in changes}) and len(changes) == 2
    assert sorted(c.request_id for c in changes) == sorted(r.id for r in requests.values())
    # Exactly one version is current: the one whose change came last.
    status = await _status(running)
    assert [(c.stage, c.version, c.request_id) for c in status.current] == [
        ("production", changes[-1].version, changes[-1].request_id)
    ]

    # The order of the changes is the order the signed `promoted` verdicts were stored in.
    async def promoted_order() -> list[str] | None:
        page = await client.audit_query(
            AuditQuery(type=Subjects.VERDICT_PROMOTION, decision="promoted", subject=None, limit=100)
        )
        seen: list[str] = []
        for entry in sorted(page.entries, key=lambda e: e.seq):
            request_id = entry.event["data"]["request_id"]
            if request_id not in seen:
                seen.append(request_id)
        return seen if len(seen) == 2 else None

    order = await until(promoted_order, what="both promotions in the audit trail")
    assert order == [c.request_id for c in changes]

    # Another restart replays to the same state and shows the same thing.
    before = _shown(status)
    await running.stop("registry-gate")
    await running.start("registry-gate")
    assert _shown(await _status(running)) == before
    again, memory = await _replay_and_memory(running)
    assert again == memory == replayed
