"""Clients under a fail-level extraction or OOD alert, and what admission does about them (issue 9).

A detector's fail-level alert about a client becomes a `Flag`. serving-monitor stores it in the
`mlw-state` bucket under `serving-monitor.flagged.` (so it survives a restart and every instance
follows it with a watcher) and `mlw.serving.admit` denies or slows the flagged client, giving the
flag's reason, until an operator clears it (`mlwarden serving clear CLIENT`). An owner-level
alert (`acme.*`, the union of an owner's keys) flags every key of that owner.

Pure: no NATS import; the bucket adapters are in `keystore.py`.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from services.serving_monitor.abuse import AlertSpec
from services.serving_monitor.detectors import OWNER_SUFFIX, owner_of
from services.serving_monitor.errors import ServingMonitorError
from services.serving_monitor.extraction import (
    KIND_BOUNDARY_WALK,
    KIND_COVERAGE,
    KIND_DISTRIBUTION,
    KIND_EXTRACTION,
)
from services.serving_monitor.ood import KIND_OOD
from shared.events import Severity

#: Keys of flags in `mlw-state`; serving-monitor writes them, the operator deletes them.
FLAG_PREFIX = "serving-monitor.flagged."
_CLIENT_KEY = FLAG_PREFIX + "client."
_OWNER_KEY = FLAG_PREFIX + "owner."
#: A client id as `auth.ApiKeyRecord` allows it; also a valid tail of a KV key.
_CLIENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class FlagReason(StrEnum):
    """The reason `AdmitReply.reason` and `AdmissionVerdict.reason` give for a flagged client."""

    SUSPECTED_EXTRACTION = "suspected_extraction"
    OUT_OF_DISTRIBUTION = "out_of_distribution"


#: Alert kinds that flag a client at fail level, and the reason admission then gives.
FLAGGING_KINDS: dict[str, FlagReason] = {
    KIND_EXTRACTION: FlagReason.SUSPECTED_EXTRACTION,
    KIND_BOUNDARY_WALK: FlagReason.SUSPECTED_EXTRACTION,
    KIND_DISTRIBUTION: FlagReason.SUSPECTED_EXTRACTION,
    KIND_COVERAGE: FlagReason.SUSPECTED_EXTRACTION,
    KIND_OOD: FlagReason.OUT_OF_DISTRIBUTION,
}


#: Which reason a client's flag keeps when several detectors fire: extraction is the graver and
#: more specific finding (a walk far from the data is also out of distribution), so an OOD flag
#: is upgraded to extraction and never the reverse, whatever order one batch's alerts come in.
_RANK: dict[FlagReason, int] = {FlagReason.OUT_OF_DISTRIBUTION: 0, FlagReason.SUSPECTED_EXTRACTION: 1}


def replaces(flag: Flag, known: Flag | None) -> bool:
    """Whether a newly raised `flag` should replace the client's `known` one: only a graver reason
    does (the first alert of a reason keeps its record)."""
    return known is None or _RANK[flag.reason] > _RANK[known.reason]


class NotAClient(ServingMonitorError, ValueError):
    """A client id that cannot be flagged (nor be a key in the state bucket)."""

    def __init__(self, client: str) -> None:
        super().__init__(f"not a client id: {client[:80]!r} (letters, digits, '.', '_', '-'; or OWNER.*)")
        self.client = client


class Flag(BaseModel):
    """One flagged client (or owner, `acme.*`), as stored in `mlw-state`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client: str = Field(max_length=130, description="the client id, or `OWNER.*` for all of an owner's keys")
    reason: FlagReason = Field(description="what admission replies with")
    kind: str = Field(max_length=64, description="the alert kind that raised the flag")
    model: str = Field(max_length=128, description="the model the alert was about")
    message: str = Field(max_length=1000, description="the alert's message, for the operator")
    since: float = Field(description="unix seconds the flag was raised")


def flag_key(client: str) -> str:
    """The state-bucket key of `client`'s flag (`acme.*` -> the owner key of `acme`)."""
    if client.endswith(OWNER_SUFFIX):
        owner = client[: -len(OWNER_SUFFIX)]
        if _CLIENT_RE.fullmatch(owner) is None or owner_of(owner) != owner:
            raise NotAClient(client)
        return _OWNER_KEY + owner
    if _CLIENT_RE.fullmatch(client) is None:
        raise NotAClient(client)
    return _CLIENT_KEY + client


def client_of_key(key: str) -> str | None:
    """The client (or `OWNER.*`) a flag key is about; None for a key that is not a flag's."""
    if key.startswith(_OWNER_KEY):
        return key[len(_OWNER_KEY) :] + OWNER_SUFFIX
    if key.startswith(_CLIENT_KEY):
        return key[len(_CLIENT_KEY) :]
    return None


def flag_from_alert(spec: AlertSpec, now: float) -> Flag | None:
    """The flag a detector's alert raises: fail-level extraction, boundary-walk or OOD alerts only
    (a warning is for a human to look at, not a reason to refuse service)."""
    reason = FLAGGING_KINDS.get(spec.kind)
    if reason is None or spec.severity != Severity.FAIL:
        return None
    try:
        flag_key(spec.client)
    except NotAClient:
        return None  # a client id the model server logged but no API key can have
    return Flag(
        client=spec.client, reason=reason, kind=spec.kind, model=spec.model, message=spec.message[:1000], since=now
    )


class FlagTable:
    """The flags one serving-monitor instance follows: one per client or owner, constant size each."""

    def __init__(self) -> None:
        self._flags: dict[str, Flag] = {}

    def __len__(self) -> int:
        return len(self._flags)

    def set(self, flag: Flag) -> None:
        """Add or replace `flag.client`'s flag."""
        self._flags[flag.client] = flag

    def remove(self, client: str) -> None:
        """Drop `client`'s flag (cleared by an operator)."""
        self._flags.pop(client, None)

    def get(self, client: str) -> Flag | None:
        """`client`'s own flag, exactly (`acme.*` for an owner's)."""
        return self._flags.get(client)

    def for_client(self, client: str) -> Flag | None:
        """The flag admission applies to `client`: its own, else its owner's."""
        flag = self._flags.get(client)
        if flag is None:
            owner = owner_of(client)
            if owner != client:
                flag = self._flags.get(owner + OWNER_SUFFIX)
        return flag
