"""Equivocation: one event id, two different bodies (issue 8).

An event id names one statement. A second body under the same id, whether a producer that
says one thing to one consumer and another to the next, or a forgery sent after the real
event, must not vanish as a "duplicate": audit-log keeps the first copy where it is and
appends an `mlw.audit.equivocation` entry holding both hashes and the second body, and
raises an alert. A byte-identical (or canonically identical) redelivery is still a silent
no-op: that is JetStream's at-least-once delivery, not a second statement.

The evidence entry's id is derived from (event id, SHA-256 of the second body), so the
redelivery of the same second copy finds it and adds nothing. Ids are free text, so a
producer could publish an event under that derived id first to make the evidence look
recorded already; the writer therefore only accepts a stored entry under a derived id when
its body is exactly the evidence it would write, tries a few derived ids, and falls back to
a random one (evidence recorded twice rather than not at all).
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

import orjson

from shared.canonical import canonical_json
from shared.events import AuditEquivocation, Severity

#: The type (and subject label) of audit-log's evidence entries.
EQUIVOCATION_TYPE: Final = "mlw.audit.equivocation"
#: CloudEvents source of the evidence entries.
SOURCE: Final = "mlwarden/audit-log"
#: Derived ids tried for one evidence entry before a random one.
ID_ATTEMPTS: Final = 4
#: Members that legitimately differ when a service re-signs the same statement later.
_RESIGNED: Final = frozenset({"time", "signature"})
_NS: Final = uuid.UUID("0b6f4a52-3c55-4c1e-9d3a-5a0f1c2e7b44")


@dataclass(frozen=True, slots=True)
class Equivocation:
    """A second, different body for an event id the trail already holds."""

    #: The envelope id both copies claim.
    event_id: str
    #: Event id of the evidence entry (`mlw.audit.equivocation`).
    record_id: str
    #: seq of the first copy.
    first_seq: int
    first_sha256: str
    second_sha256: str
    #: Top-level envelope members whose values differ, sorted.
    differs_in: tuple[str, ...]
    #: False when the evidence entry was already stored (a redelivery of the second copy).
    new: bool = True

    @property
    def severity(self) -> Severity:
        """FAIL when the statement itself differs; WARN when only the time and signature do."""
        return Severity.WARN if set(self.differs_in) <= _RESIGNED else Severity.FAIL


def sha256_hex(body: str) -> str:
    """SHA-256 of a body as received (the stored text is the received UTF-8)."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def differing_members(first: str, second: str) -> tuple[str, ...]:
    """The top-level members whose canonical JSON differs; empty when the bodies say the same."""
    if first == second:
        return ()
    a, b = orjson.loads(first), orjson.loads(second)
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return ("body",) if canonical_json(a) != canonical_json(b) else ()
    return tuple(sorted(k for k in a.keys() | b.keys() if canonical_json(a.get(k)) != canonical_json(b.get(k))))


def record_ids(event_id: str, second_sha256: str) -> list[str]:
    """The derived ids an evidence entry may take, in the order they are tried."""
    return [str(uuid.uuid5(_NS, f"{event_id}\x00{second_sha256}\x00{n}")) for n in range(ID_ATTEMPTS)]


def random_record_id() -> str:
    """The fallback id when every derived one is taken by something else."""
    return str(uuid.uuid4())


def evidence_body(
    record_id: str,
    *,
    event_id: str,
    first_seq: int,
    first_body: str,
    second_body: str,
    subject: str | None,
    time: float,
) -> str:
    """The envelope text of one evidence entry; the same inputs always give the same bytes."""
    data = AuditEquivocation(
        event_id=event_id,
        first_seq=first_seq,
        first_sha256=sha256_hex(first_body),
        second_sha256=sha256_hex(second_body),
        differs_in=list(differing_members(first_body, second_body)),
        second_body=second_body,
    )
    envelope: dict[str, object] = {
        "specversion": "1.0",
        "id": record_id,
        "source": SOURCE,
        "type": EQUIVOCATION_TYPE,
        "time": datetime.fromtimestamp(time, UTC).isoformat(),
        "datacontenttype": "application/json",
        "data": data.model_dump(mode="json"),
    }
    if subject is not None:
        envelope["subject"] = subject
    return orjson.dumps(envelope, option=orjson.OPT_SORT_KEYS).decode()
