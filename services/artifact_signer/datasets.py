"""data-guard's decision on each training dataset a build names, for the provenance (issue 12).

Design: look the decision up in data-guard's own record of the version, in the state bucket,
rather than consume `mlw.verdict.dataset`. Only data-guard may write `data-guard.` keys
(`shared.permissions`), a judged (dataset, version) is created once and never replaced, and the
record is there whenever the build is judged, however long after the verdict (a consumer would
need its own store and would miss verdicts emitted before it existed). A record about other bytes
than the build names, or no record, is `unknown`: never assumed to have passed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import orjson
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError

from shared.events import DatasetRef, Decision
from shared.topology import STATE_BUCKET


def record_key(dataset: str, version: str) -> str:
    """The key of data-guard's record of a judged version (`services.data_guard.app._record_key`)."""
    return "data-guard.dataset." + hashlib.sha256(f"{dataset}\0{version}".encode()).hexdigest()[:40]


def decision_in(record: bytes | None, ref: DatasetRef) -> Decision | None:
    """data-guard's decision in `record` if it is about exactly the bytes `ref` names, else None."""
    if not record:
        return None
    try:
        raw = orjson.loads(record)
        if raw.get("sha256") != ref.sha256 or (raw.get("dataset"), raw.get("version")) != (ref.dataset, ref.version):
            return None
        return Decision(raw.get("decision"))
    except (orjson.JSONDecodeError, ValueError, AttributeError):
        return None


async def dataset_decisions(js: JetStreamContext, datasets: Sequence[DatasetRef]) -> dict[str, Decision]:
    """sha256 -> data-guard's decision, for the datasets it judged with those bytes."""
    out: dict[str, Decision] = {}
    if not datasets:
        return out
    try:
        kv = await js.key_value(STATE_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return out
    for ref in datasets:
        try:
            entry = await kv.get(record_key(ref.dataset, ref.version))
        except (KeyNotFoundError, NotFoundError):
            continue
        decision = decision_in(entry.value, ref)
        if decision is not None:
            out[ref.sha256] = decision
    return out
