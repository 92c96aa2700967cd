"""run_query on SQLite and PostgreSQL: each filter, ANDed filters, time range, pagination."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from services.audit_log.errors import CorruptEntryError
from services.audit_log.query import run_query
from services.audit_log.store import AuditStore, IncomingEvent
from shared.errors import InputError
from shared.events import AuditQuery

EventFactory = Callable[..., bytes]
DropGuards = Callable[[AuditStore], None]
T = 1_700_000_000.0

# (id, type, source, subject, time offset, data)
ROWS: list[tuple[str, str, str, str, float, dict[str, object]]] = [
    ("up1", "mlw.dataset.uploaded", "mlwarden/cli", "dataset:iris:1", 0, {"uploader": "alice"}),
    (
        "dv1",
        "mlw.verdict.dataset",
        "mlwarden/data-guard",
        "dataset:iris:1",
        10,
        {"uploader": "alice", "decision": "pass"},
    ),
    ("mb1", "mlw.model.built", "mlwarden/cli", "model:churn:3", 20, {"builder": "ci"}),
    (
        "av1",
        "mlw.verdict.artifact",
        "mlwarden/artifact-signer",
        "model:churn:3",
        30,
        {"builder": "ci", "decision": "fail"},
    ),
    ("pr1", "mlw.registry.promotion", "mlwarden/cli", "model:churn:3", 40, {"requester": "bob"}),
    (
        "pv1",
        "mlw.verdict.promotion",
        "mlwarden/registry-gate",
        "model:churn:3",
        50,
        {"requester": "bob", "decision": "rejected"},
    ),
    (
        "ad1",
        "mlw.verdict.admission",
        "mlwarden/serving-monitor",
        "model:churn",
        60,
        {"client": "c9", "decision": "deny"},
    ),
    (
        "dv2",
        "mlw.verdict.dataset",
        "mlwarden/data-guard",
        "dataset:iris:2",
        70,
        {"uploader": "carol", "decision": "fail"},
    ),
]


@pytest.fixture
def seeded(store: AuditStore, event_bytes: EventFactory) -> AuditStore:
    items = [
        IncomingEvent.from_bytes(
            event_bytes(event_id=i, type_=ty, source=src, subject=sub, time=T + dt, data=data),
            recorded_at=T + 100 + dt,
        )
        for i, ty, src, sub, dt, data in ROWS
    ]
    # Two batches, so pagination crosses a commit boundary.
    store.append_batch(items[:3])
    store.append_batch(items[3:])
    return store


def ids(store: AuditStore, **filters: object) -> list[str]:
    page = run_query(store, AuditQuery.model_validate(filters))
    return [e.event_id for e in page.entries]


def test_no_filter_returns_everything_newest_first(seeded: AuditStore) -> None:
    assert ids(seeded) == [r[0] for r in reversed(ROWS)]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"service": "data-guard"}, ["dv2", "dv1"]),
        ({"type": "mlw.verdict.dataset"}, ["dv2", "dv1"]),
        ({"subject": "model:churn:3"}, ["pv1", "pr1", "av1", "mb1"]),
        ({"actor": "alice"}, ["dv1", "up1"]),
        ({"actor": "c9"}, ["ad1"]),
        ({"decision": "fail"}, ["dv2", "av1"]),
        ({"service": "nobody"}, []),
    ],
)
def test_each_filter(seeded: AuditStore, filters: dict[str, object], expected: list[str]) -> None:
    assert ids(seeded, **filters) == expected


def test_filters_are_anded(seeded: AuditStore) -> None:
    assert ids(seeded, service="data-guard", decision="fail") == ["dv2"]
    assert ids(seeded, subject="model:churn:3", actor="ci", type="mlw.verdict.artifact") == ["av1"]
    assert ids(seeded, service="data-guard", actor="bob") == []


def test_time_range_is_since_inclusive_until_exclusive(seeded: AuditStore) -> None:
    assert ids(seeded, since=T + 20, until=T + 50) == ["pr1", "av1", "mb1"]
    assert ids(seeded, since=T + 60) == ["dv2", "ad1"]
    assert ids(seeded, until=T + 10) == ["up1"]
    assert ids(seeded, since=T + 10, until=T + 60, decision="fail") == ["av1"]


def test_client_filter(seeded: AuditStore) -> None:
    page = run_query(seeded, AuditQuery(client="c9"))
    assert [e.event_id for e in page.entries] == ["ad1"]


def test_pagination_walks_every_entry_once(seeded: AuditStore) -> None:
    seen: list[str] = []
    cursor: int | None = None
    pages = 0
    while True:
        page = run_query(seeded, AuditQuery(limit=3, cursor=cursor))
        seen.extend(e.event_id for e in page.entries)
        pages += 1
        if page.next_cursor is None:
            break
        assert page.next_cursor == page.entries[-1].seq
        cursor = page.next_cursor
    assert seen == [r[0] for r in reversed(ROWS)]
    assert pages == 3


def test_pagination_with_a_filter_and_an_exact_last_page(seeded: AuditStore) -> None:
    first = run_query(seeded, AuditQuery(subject="model:churn:3", limit=2))
    assert [e.event_id for e in first.entries] == ["pv1", "pr1"]
    second = run_query(seeded, AuditQuery(subject="model:churn:3", limit=2, cursor=first.next_cursor))
    assert [e.event_id for e in second.entries] == ["av1", "mb1"]
    # Exactly `limit` left: no phantom third page.
    assert second.next_cursor is None


def test_entries_carry_columns_and_the_parsed_event(seeded: AuditStore) -> None:
    (entry,) = run_query(seeded, AuditQuery(type="mlw.verdict.admission")).entries
    assert (entry.service, entry.actor, entry.decision) == ("serving-monitor", "c9", "deny")
    assert entry.time == T + 60
    assert entry.recorded_at == T + 160
    assert entry.event["id"] == "ad1"
    assert entry.event["data"] == {"client": "c9", "decision": "deny"}
    stored = seeded.find("ad1")
    assert stored is not None
    assert entry.entry_hash == stored.entry_hash


@pytest.mark.parametrize("bound", ["since", "until"])
def test_non_finite_time_bound_is_refused(seeded: AuditStore, bound: str) -> None:
    with pytest.raises(InputError):
        run_query(seeded, AuditQuery.model_validate({bound: float("nan")}))


def test_unreadable_body_is_reported_not_crashed_on(seeded: AuditStore, drop_guards: DropGuards) -> None:
    drop_guards(seeded)
    with seeded.engine.begin() as conn:
        conn.execute(seeded.table.update().where(seeded.table.c.seq == 8).values(body="{oops"))
    with pytest.raises(CorruptEntryError) as info:
        run_query(seeded, AuditQuery())
    assert info.value.seq == 8
    # The rest of the trail stays queryable.
    assert ids(seeded, cursor=8)[0] == "ad1"
    assert orjson.loads(seeded.find("ad1").body)["id"] == "ad1"  # type: ignore[union-attr]


@pytest.mark.parametrize("max_subjects", [64, 1])
def test_a_subject_prefix_pages_in_time_order_across_its_subjects(
    store: AuditStore, event_bytes: EventFactory, monkeypatch: pytest.MonkeyPatch, max_subjects: int
) -> None:
    # Per-subject pages merged (the default), or one range when the prefix has too many subjects.
    monkeypatch.setattr("services.audit_log.query.MAX_PREFIX_SUBJECTS", max_subjects)
    subjects = ["model:churn", "model:churn:1", "model:churn:2", "model:churnx:1", "model:churn0:1", "model:chur"]
    items = [
        IncomingEvent.from_bytes(
            event_bytes(event_id=f"s{i}", subject=subjects[i % len(subjects)], time=T + (i * 7) % 30),
            recorded_at=T,
        )
        for i in range(30)
    ]
    store.append_batch(items)
    wanted = sorted(
        ((it.time, i + 1) for i, it in enumerate(items) if it.subject in subjects[:3]),
        reverse=True,
    )
    seen: list[tuple[float, int]] = []
    cursor: int | None = None
    while True:
        page = run_query(store, AuditQuery(subject="model:churn:*", limit=4, cursor=cursor))
        seen += [(e.time, e.seq) for e in page.entries]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == wanted
