"""registry-gate's wiring: signed promotion, demotion and rollback requests and approvals in,
verified verdicts from data-guard and artifact-signer in, `mlw.verdict.promotion` out. The decision
is `gate.evaluate`; a periodic tick re-evaluates open requests so expiry needs no event (issue 11).

The policy in force is journaled like every other fact: the policy file is version 1 at the first
start only; later versions are signed `mlw.registry.policy` changes (`policy.change_policy`),
answered on `mlw.verdict.policy`, and a restart resumes with the latest applied version.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from pydantic import BaseModel

from services.registry_gate.gate import (
    AnyRequest,
    ConflictingEvent,
    GateDecision,
    RecordedApproval,
    RecordedRecall,
    RecordedRequest,
    RegistryState,
    RequestExpired,
    StageChange,
    artifact_recalls,
    closing_fact,
    dataset_recall,
    evaluate,
    key_recalls,
    recall_prefix,
    recalls,
)
from services.registry_gate.policy import (
    AppliedPolicy,
    PolicyError,
    RegistryPolicy,
    change_policy,
    document_sha256,
    initial_policy,
    read_policy_file,
)
from shared.aio import TASK_STOP_S, cancel_and_wait
from shared.bus import ServiceRuntime
from shared.envelope import Envelope
from shared.errors import SignatureError
from shared.events import (
    ApprovalGiven,
    ArtifactVerdict,
    DatasetRecallRequested,
    DatasetVerdict,
    Decision,
    DemotionRequested,
    PolicyChangeRequested,
    PolicyVerdict,
    PromotionRequested,
    PromotionVerdict,
    RecalledVersion,
    RecallVerdict,
    RegistryStatus,
    RegistryStatusRequest,
    RollbackRequested,
    Severity,
)
from shared.service import ServiceApp
from shared.settings import Settings
from shared.signing import Identity
from shared.topology import STATE_BUCKET, Subjects

SERVICE = "registry-gate"
#: The trust-store role an actor needs to recall a dataset (`mlwarden recall dataset`, issue 11).
RECALL_ROLE = "recall-officer"
#: The trust-store role an actor needs to change the registry policy (`mlwarden registry policy
#: apply`, issue 11). Not a policy role: the policy cannot grant the right to change itself.
POLICY_ROLE = "policy-admin"
#: The CloudEvents subject of policy changes and their verdicts (`audit query --subject`).
POLICY_SUBJECT = "policy:registry"
JOURNAL_PREFIX = "registry-gate."
log = logging.getLogger("mlwarden.registry-gate")

Clock = Callable[[], float]


def tick_interval(policy: RegistryPolicy) -> float:
    """How often open requests are re-evaluated for expiry: a tenth of the shortest TTL, between
    0.2 s and 30 s (an expiry is published at most that late)."""
    shortest = min((stage.request_ttl_s for stage in policy.stages.values()), default=300.0)
    return min(30.0, max(0.2, shortest / 10))


class Gate:
    """registry-gate's state and what it publishes; one event at a time under a lock."""

    def __init__(
        self, runtime: ServiceRuntime, policy: RegistryPolicy, state: RegistryState, clock: Clock = time.time
    ) -> None:
        self.runtime = runtime
        self.policy = policy
        self.state = state
        self.clock = clock
        self.lock = asyncio.Lock()
        # The last decision published per request: re-evaluations that change nothing stay quiet.
        self.last: dict[str, PromotionVerdict] = {}

    def policy_now(self) -> RegistryPolicy:
        """The policy with the actors and roles the trust store holds right now (a revoked
        actor's request or approval stops counting at once)."""
        return self.policy.with_trust(self.runtime.trust)

    async def journal(self, kind: str, ident: str, fact: BaseModel, *, once: bool = False) -> None:
        """Persist one recorded fact before acking the event that carried it.

        The state is a journal of facts, one key each (written once, O(1) per event); start-up
        replays them through the same `record_*` methods, whose merge rules are order-free.
        With `once` the key must be new or hold exactly this fact (a policy version is never
        rewritten, also not by a second registry-gate racing this one): ConflictingEvent if not.
        """
        kv = await self.runtime.js.key_value(STATE_BUCKET)
        key, value = _journal_key(kind, ident), fact.model_dump_json().encode()
        if not once:
            await kv.put(key, value)
            return
        try:
            await kv.create(key, value)
        except KeyWrongLastSequenceError:
            if (await kv.get(key)).value != value:
                raise ConflictingEvent(kind, ident) from None

    async def journaled(self, kind: str, ident: str) -> bytes | None:
        """The journaled fact `kind`/`ident`, if there is one."""
        kv = await self.runtime.js.key_value(STATE_BUCKET)
        try:
            return (await kv.get(_journal_key(kind, ident))).value
        except KeyNotFoundError:
            return None

    def policy_in_force(self) -> AppliedPolicy:
        """The applied policy version in force (recorded at start, so there always is one)."""
        applied = self.state.policy()
        assert applied is not None, "registry-gate records version 1 at start"
        return applied

    async def change_policy(self, event: Envelope[PolicyChangeRequested], signer: str) -> None:
        """A verified change by `signer` (who holds the policy-admin role): apply it as the next
        version, journal it, answer `applied`, and re-evaluate the open requests under it; or
        refuse it with every problem (the version in force stays)."""
        data = event.data
        applied = self.state.policy_applied_by(event.id)  # a redelivery applies nothing again
        if applied is None:
            try:
                applied = change_policy(
                    self.policy_in_force(),
                    data.document,
                    signer=signer,
                    request_id=event.id,
                    reason=data.reason,
                    expected_version=data.expected_version,
                    at=self.clock(),
                )
            except PolicyError as exc:
                await self.refuse_policy(event, signer, exc.problems)
                return
        try:
            await self.journal("policy", f"v{applied.version}", applied, once=True)
            affected = self.state.record_policy(applied)
        except ConflictingEvent as exc:
            await self.runtime.alert("conflicting_event", Severity.FAIL, str(exc), in_reply_to=event.id)
            await self.refuse_policy(event, signer, [f"version {applied.version} was applied by another change"])
            return
        self.policy = self.policy_in_force().rules()
        verdict = PolicyVerdict(
            decision="applied",
            version=applied.version,
            sha256=applied.sha256,
            previous_version=applied.version - 1,
            requester=signer,
            reason=data.reason,
            request_id=event.id,
            in_reply_to=event.id,
        )
        await self.runtime.emit(Subjects.VERDICT_POLICY, verdict, in_reply_to=event.id, about=POLICY_SUBJECT)
        await self.decide(affected, event.id)

    async def refuse_policy(self, event: Envelope[PolicyChangeRequested], requester: str, problems: list[str]) -> None:
        """A signed `rejected` policy verdict listing every problem; nothing changes. A change
        whose signature held also raises a `policy_rejected` alert (a refused signature was
        alerted as `forged_identity` already)."""
        data = event.data
        current = self.policy_in_force()
        verdict = PolicyVerdict(
            decision="rejected",
            version=current.version,
            sha256=document_sha256(data.document),
            problems=problems,
            requester=requester,
            reason=data.reason,
            request_id=event.id,
            in_reply_to=event.id,
        )
        await self.runtime.emit(Subjects.VERDICT_POLICY, verdict, in_reply_to=event.id, about=POLICY_SUBJECT)
        if not any(p.startswith("signature: ") for p in problems):
            await self.runtime.alert(
                "policy_rejected",
                Severity.FAIL,
                f"policy change {event.id} by {requester} refused; version {current.version} stays: "
                + "; ".join(problems),
                in_reply_to=event.id,
                requester=requester,
                problems=len(problems),
                version=current.version,
            )

    async def apply(
        self, event_id: str, kind: str, record: Callable[[], list[str]], fact: BaseModel, *, always: bool
    ) -> None:
        """Record a verified fact, journal it, and publish what it changes (under the lock)."""
        try:
            ids = record()
        except ConflictingEvent as exc:
            await self.runtime.alert("conflicting_event", Severity.FAIL, str(exc), in_reply_to=event_id)
            return
        # The journal write and the verdicts go out together (one round trip, not two); both
        # are stored before the event is acked.
        await asyncio.gather(self.journal(kind, event_id, fact), self.decide(ids, event_id, always=always))

    async def decide(self, request_ids: list[str], cause: str, *, always: bool = False) -> None:
        """Evaluate each request and publish its verdict when it changed (or `always`); record
        and journal what a decided request changes (a stage's current version, an expiry)."""
        queue = list(dict.fromkeys(request_ids))
        while queue:
            request_id = queue.pop(0)
            if self.state.request(request_id) is None:
                continue
            now = self.clock()
            decision = evaluate(request_id, self.state, self.policy_now(), now=now)
            queue += [rid for rid in await self.close(decision, now) if rid not in queue and rid != request_id]
            verdict = decision.to_verdict(in_reply_to=cause)
            previous = self.last.get(request_id)
            if not always and previous is not None and _same(previous, verdict):
                continue
            self.last[request_id] = verdict
            await self.runtime.emit(
                Subjects.VERDICT_PROMOTION,
                verdict,
                in_reply_to=f"{request_id}:{cause}",
                about=f"model:{verdict.model}:{verdict.version}",
            )

    async def close(self, decision: GateDecision, now: float) -> list[str]:
        """Journal and record the fact a final decision leaves, once; return the requests it affects.

        Journaled first: once recorded, the request is closed and no later event leaves the fact
        again, so a fact recorded but not journaled (a failed write) would be lost at the next
        restart, and the request decided anew, perhaps after a rival (issue 11's race test).
        """
        match closing_fact(decision, self.state, now):
            case StageChange() as change:
                await self.journal("change", change.request_id, change)
                return self.state.record_change(change)
            case RequestExpired() as fact:
                await self.journal("expiry", fact.request_id, fact)
                self.state.record_expiry(fact)
                return []
            case None:
                return []

    async def recall(self, sha256: str, cause: str) -> None:
        """Take out of their stages the model versions trained on bytes now judged `fail`
        (issue 11); see `pull`."""
        changes = recalls(self.state, self.policy_now(), sha256, now=self.clock())
        await self.pull(changes, cause, dataset_sha256=sha256)

    async def recall_revoked(self) -> None:
        """Take out of their stages the model versions whose placement relied on a signature of an
        identity the trust store now holds revoked (issue 11); see `pull`. Run at start (a key
        revoked while registry-gate was down) and on every trust-store change."""
        revoked = {
            key_id: identity.revoked_at
            for key_id in self.runtime.trust.ids()
            if (identity := self.runtime.trust.identity(key_id)) is not None and identity.revoked_at is not None
        }
        changes = key_recalls(self.state, self.policy_now(), revoked, now=self.clock())
        await self.pull(changes, "trust-store", revoked=",".join(sorted(revoked)))

    async def on_trust_change(self, identity: Identity) -> None:
        """A trust-store update (root-verified by the runtime): a revocation recalls."""
        if identity.revoked_at is None:
            return
        async with self.lock:
            await self.recall_revoked()

    async def recall_dataset(self, recorded: RecordedRecall) -> None:
        """An operator's verified dataset recall: record and journal it, pull every model version
        trained on it, and answer with a signed `recalled` verdict (issue 11)."""
        try:
            affected = self.state.record_recall(recorded)
        except ConflictingEvent as exc:
            await self.runtime.alert("conflicting_event", Severity.FAIL, str(exc), in_reply_to=recorded.request_id)
            return
        await self.journal("recall", recorded.request_id, recorded)
        changes = dataset_recall(self.state, self.policy_now(), recorded.request_id, now=self.clock())
        wanted = recorded.recall
        await self.pull(changes, recorded.request_id, dataset=wanted.dataset, dataset_version=wanted.version)
        # Every change this recall made, also when this is a redelivery (the verdict's id is
        # derived from the request's, so JetStream keeps one copy).
        done = self.state.changes_by(recall_prefix(recorded.request_id) + "-")
        verdict = RecallVerdict(
            dataset=wanted.dataset,
            version=wanted.version,
            sha256=wanted.sha256,
            decision="recalled",
            reasons=[wanted.reason],
            requester=recorded.signer,
            request_id=recorded.request_id,
            in_reply_to=recorded.request_id,
            recalled=[
                RecalledVersion(model=c.model, version=c.replaced or "", stage=c.stage, root_digest=c.root_digest)
                for c in done
            ],
            policy_version=self.policy.version or None,
        )
        await self.runtime.emit(
            Subjects.VERDICT_RECALL,
            verdict,
            in_reply_to=recorded.request_id,
            about=f"dataset:{wanted.dataset}:{wanted.version}",
        )
        await self.decide(affected, recorded.request_id)

    async def reject_recall(self, event: Envelope[DatasetRecallRequested], reason: str) -> None:
        """A recall whose signature or role does not hold is refused with a signed verdict
        (verify_actor alerted); nothing is recorded or pulled."""
        data = event.data
        verdict = RecallVerdict(
            dataset=data.dataset,
            version=data.version,
            sha256=data.sha256,
            decision="rejected",
            reasons=[f"recall refused: {reason}"],
            requester=data.requester,
            request_id=event.id,
            in_reply_to=event.id,
            policy_version=self.policy.version or None,
        )
        await self.runtime.emit(
            Subjects.VERDICT_RECALL, verdict, in_reply_to=event.id, about=f"dataset:{data.dataset}:{data.version}"
        )

    async def pull(self, changes: list[StageChange], cause: str, **evidence: str) -> None:
        """Record and journal each recall change, publish it as a `demoted` verdict with action
        `recall`, alert, and re-evaluate the pending requests of the same model and stage."""
        affected: list[str] = []
        for change in changes:
            # Journaled first, as in `close`: a recall is derived once, from state in memory.
            await self.journal("change", change.request_id, change)
            affected += self.state.record_change(change)
            version = change.replaced or ""
            artifact = self.state.artifact_verdict(change.model, version)
            verdict = PromotionVerdict(
                model=change.model,
                version=version,
                stage=change.stage,
                decision="demoted",
                reasons=[f"recalled from {change.stage}: {change.reason}"],
                requester=SERVICE,
                request_id=change.request_id,
                in_reply_to=cause,
                action="recall",
                root_digest=change.root_digest,
                manifest_key=artifact.manifest_key if artifact is not None else None,
                provenance_key=artifact.provenance_key if artifact is not None else None,
                policy_version=change.policy_version,
            )
            await self.runtime.emit(
                Subjects.VERDICT_PROMOTION,
                verdict,
                in_reply_to=f"{change.request_id}:{cause}",
                about=f"model:{change.model}:{version}",
            )
            await self.runtime.alert(
                "recall",
                Severity.FAIL,
                f"{change.model} {version} recalled from {change.stage}: {change.reason}",
                in_reply_to=f"{change.request_id}:{cause}",
                model=change.model,
                version=version,
                stage=change.stage,
                **evidence,
            )
        await self.decide(sorted(set(affected)), cause)

    def open_requests(self) -> list[str]:
        """Requests neither decided nor expired: the tick re-evaluates them."""
        return [rid for rid in self.state.request_ids() if not self.state.closed(rid)]

    async def reject_unsigned(self, event: Envelope[Any], action: str, reason: str) -> None:
        """A request whose signature does not hold is rejected outright (verify_actor alerted)."""
        data = event.data
        verdict = PromotionVerdict(
            model=data.model,
            version=data.version,
            stage=data.stage,
            decision="rejected",
            reasons=[f"request signature invalid: {reason}"],
            requester=data.requester,
            request_id=event.id,
            in_reply_to=event.id,
            action=action,  # type: ignore[arg-type]
            root_digest=getattr(data, "root_digest", ""),
            policy_version=self.policy.version or None,
        )
        await self.runtime.emit(
            Subjects.VERDICT_PROMOTION, verdict, in_reply_to=event.id, about=f"model:{data.model}:{data.version}"
        )


def _journal_key(kind: str, ident: str) -> str:
    return f"{JOURNAL_PREFIX}{kind}.{hashlib.sha256(ident.encode()).hexdigest()[:40]}"


def _same(a: PromotionVerdict, b: PromotionVerdict) -> bool:
    return (a.decision, a.reasons, a.approvers, a.manifest_key) == (b.decision, b.reasons, b.approvers, b.manifest_key)


async def _load_state(runtime: ServiceRuntime) -> RegistryState:
    """Replay the journal: verdicts first, then requests, approvals, stage changes (in their
    recorded order), expiries and operators' recalls."""
    kv = await runtime.js.key_value(STATE_BUCKET)
    facts: dict[str, list[bytes]] = {
        "artifact": [],
        "dataset": [],
        "request": [],
        "approval": [],
        "change": [],
        "expiry": [],
        "recall": [],
        "policy": [],
    }
    try:
        # (nats-py 2.16's `keys(filters=...)` finds nothing for a wildcard filter: filter here.)
        keys = [k for k in await kv.keys() if k.startswith(JOURNAL_PREFIX)]
    except NoKeysError:
        keys = []
    for key in keys:
        entry = await kv.get(key)
        kind = key[len(JOURNAL_PREFIX) :].split(".", 1)[0]
        if entry.value and kind in facts:
            facts[kind].append(entry.value)
    state = RegistryState()
    for raw in facts["artifact"]:
        state.record_artifact_verdict(ArtifactVerdict.model_validate_json(raw))
    for raw in facts["dataset"]:
        state.record_dataset_verdict(DatasetVerdict.model_validate_json(raw))
    # In arrival order, as they were recorded (the journal's keys are unordered): the approvers
    # of a decision are listed in that order, and a restart must not reorder them.
    requests = sorted(
        (RecordedRequest.model_validate_json(raw) for raw in facts["request"]),
        key=lambda r: (r.opened_at or 0.0, r.request_id),
    )
    for req in requests:
        state.record_request(req.request_id, req.request, req.signer, opened_at=req.opened_at)
    approvals = sorted(
        (RecordedApproval.model_validate_json(raw) for raw in facts["approval"]),
        key=lambda a: (a.received_at or 0.0, a.event_id),
    )
    for appr in approvals:
        state.record_approval(appr.event_id, appr.approval, appr.signer, received_at=appr.received_at)
    for change in sorted((StageChange.model_validate_json(raw) for raw in facts["change"]), key=lambda c: c.seq):
        state.record_change(change)
    for raw in facts["expiry"]:
        state.record_expiry(RequestExpired.model_validate_json(raw))
    for raw in facts["recall"]:
        state.record_recall(RecordedRecall.model_validate_json(raw))
    for raw in facts["policy"]:
        state.record_policy(AppliedPolicy.model_validate_json(raw))
    return state


async def _policy_at_start(g: Gate, settings: Settings) -> None:
    """The policy in force at start: the latest journaled version, or (first start) the policy
    file as version 1, journaled. A file that differs from every applied version later is not
    read as a change (that takes a signed `mlw.registry.policy`): it is alerted and ignored."""
    path = settings.registry_policy_path
    if g.state.policy() is None:
        applied = initial_policy(read_policy_file(path), path=str(path), at=g.clock())
        try:
            await g.journal("policy", "v1", applied, once=True)
        except ConflictingEvent:
            # Another registry-gate journaled version 1 first (a start race): that one is in force.
            raw = await g.journaled("policy", "v1")
            assert raw is not None
            applied = AppliedPolicy.model_validate_json(raw)
        g.state.record_policy(applied)
    else:
        with contextlib.suppress(PolicyError):
            digest = document_sha256(read_policy_file(path))
            if all(p.sha256 != digest for p in g.state.policies()):
                in_force = g.policy_in_force()
                await g.runtime.alert(
                    "policy_file_ignored",
                    Severity.WARN,
                    f"{path} differs from every applied registry policy; version {in_force.version} stays in force"
                    " (publish a change with `mlwarden registry policy apply`)",
                    in_reply_to=f"policy-file:{digest}",
                    sha256=digest,
                    version=in_force.version,
                )
    g.policy = g.policy_in_force().rules()


def create_app(settings: Settings | None = None, *, clock: Clock = time.time) -> ServiceApp:
    """Build registry-gate (`clock` gives unix seconds: tests may pass their own)."""
    settings = settings or Settings()
    svc = ServiceApp(SERVICE, settings)
    ticker: list[asyncio.Task[None]] = []

    def gate() -> Gate:
        return svc.get("gate", Gate)

    async def tick(g: Gate) -> None:
        while True:
            # Read each time: a policy change may shorten the TTLs.
            await asyncio.sleep(tick_interval(g.policy))
            try:
                async with g.lock:
                    for rid in g.open_requests():
                        await g.decide([rid], rid)
            except Exception:  # a bus hiccup must not end the ticking; the next tick retries
                log.exception("registry-gate tick failed")

    @svc.on_start
    async def start(runtime: ServiceRuntime) -> None:
        g = Gate(runtime, RegistryPolicy(), await _load_state(runtime), clock)
        await _policy_at_start(g, settings)
        svc.state["gate"] = g
        # Keys revoked while registry-gate was down recall now; later revocations as they come.
        async with g.lock:
            await g.recall_revoked()
        runtime.trust_listeners.append(g.on_trust_change)
        ticker.append(asyncio.create_task(tick(g)))

    @svc.on_stop
    async def stop() -> None:
        await cancel_and_wait(ticker, timeout=TASK_STOP_S)
        ticker.clear()

    async def on_request(event: Envelope[Any], action: str) -> None:
        g = gate()
        data: AnyRequest = event.data
        async with g.lock:
            try:
                signer = await g.runtime.verify_actor(event, data.requester)
            except SignatureError as exc:
                await g.reject_unsigned(event, action, exc.reason)
                return
            # The request counts from the earlier of its signed time and its arrival: a requester
            # cannot postdate it to stay open longer (issue 11).
            opened_at = min(event.time.timestamp(), g.clock())
            # A redelivery keeps (and journals again) the first arrival's time: journaling the
            # later one would move the request's expiry at the next restart.
            seen = g.state.request(event.id)
            if seen is not None and seen.opened_at is not None:
                opened_at = seen.opened_at
            record = partial(g.state.record_request, event.id, data, signer, opened_at=opened_at)
            fact = RecordedRequest(request_id=event.id, signer=signer, action=action, request=data, opened_at=opened_at)  # type: ignore[arg-type]
            await g.apply(event.id, "request", record, fact, always=True)

    async def on_promotion(event: Envelope[PromotionRequested]) -> None:
        """A promotion request, signed by its requester: decide promoted, pending, rejected or expired."""
        await on_request(event, "promotion")

    async def on_demotion(event: Envelope[DemotionRequested]) -> None:
        """A demotion request, signed by its requester: approved like a promotion to that stage."""
        await on_request(event, "demotion")

    async def on_rollback(event: Envelope[RollbackRequested]) -> None:
        """A rollback request to a version the stage held before: approved and checked like a promotion."""
        await on_request(event, "rollback")

    async def on_approval(event: Envelope[ApprovalGiven]) -> None:
        """An approval, signed by its approver: counts towards the stage's approvals until the request expires."""
        g = gate()
        async with g.lock:
            try:
                signer = await g.runtime.verify_actor(event, event.data.approver)
            except SignatureError:
                return  # alerted by verify_actor; a forged approval counts for nothing
            # Registry-gate's own clock: an approver could backdate the signed time.
            received_at = g.clock()
            # A redelivery keeps (and journals again) the first arrival's time: journaling the
            # later one could make an approval that counted arrive "after expiry" at the next
            # restart (issue 11's race test caught it).
            seen = g.state.approval(event.id)
            if seen is not None and seen.received_at is not None:
                received_at = seen.received_at
            fact = RecordedApproval(event_id=event.id, signer=signer, approval=event.data, received_at=received_at)
            record = partial(g.state.record_approval, event.id, event.data, signer, received_at=received_at)
            await g.apply(event.id, "approval", record, fact, always=True)

    async def on_artifact_verdict(event: Envelope[ArtifactVerdict]) -> None:
        """artifact-signer's verdict: acted upon only when its signature verifies."""
        g = gate()
        try:
            await g.runtime.verify_verdict(event)
        except SignatureError:
            return  # alerted by verify_verdict; a forged verdict changes nothing
        async with g.lock:
            record = partial(g.state.record_artifact_verdict, event.data)
            await g.apply(event.id, "artifact", record, event.data, always=False)
            if event.data.decision is Decision.FAIL:
                # e.g. artifact-signer's re-check after an OSV update (issue 11): pull it.
                changes = artifact_recalls(g.state, g.policy_now(), event.data.model, event.data.version, now=g.clock())
                await g.pull(changes, event.id, artifact_verdict=event.id)

    async def on_dataset_verdict(event: Envelope[DatasetVerdict]) -> None:
        """data-guard's verdict: acted upon only when its signature verifies."""
        g = gate()
        try:
            await g.runtime.verify_verdict(event)
        except SignatureError:
            return
        async with g.lock:
            record = partial(g.state.record_dataset_verdict, event.data)
            await g.apply(event.id, "dataset", record, event.data, always=False)
            if event.data.decision is Decision.FAIL:
                await g.recall(event.data.sha256, event.id)

    async def on_recall(event: Envelope[DatasetRecallRequested]) -> None:
        """A dataset recall, signed by an actor holding the recall-officer role: every model
        version trained on it leaves the stages whose policy says recall; refused otherwise."""
        g = gate()
        async with g.lock:
            try:
                # The identity and the role come from the verified key, never from `requester`.
                signer = await g.runtime.verify_actor(event, event.data.requester, role=RECALL_ROLE)
            except SignatureError as exc:
                await g.reject_recall(event, exc.reason)
                return
            recorded = RecordedRecall(request_id=event.id, signer=signer, recall=event.data, at=g.clock())
            await g.recall_dataset(recorded)

    async def on_policy(event: Envelope[PolicyChangeRequested]) -> None:
        """A registry policy change, signed by an actor holding the policy-admin role: validated,
        applied as the next version and answered on mlw.verdict.policy; refused with every
        problem otherwise (the version in force stays)."""
        g = gate()
        async with g.lock:
            try:
                # The identity and the role come from the verified key, never from `requester`.
                signer = await g.runtime.verify_actor(event, event.data.requester, role=POLICY_ROLE)
            except SignatureError as exc:
                await g.refuse_policy(event, event.data.requester, [f"signature: {exc.reason}"])
                return
            await g.change_policy(event, signer)

    routes_events: dict[str, tuple[type[Any], Any]] = {
        Subjects.PROMOTION_REQUESTED: (PromotionRequested, on_promotion),
        Subjects.APPROVAL_GIVEN: (ApprovalGiven, on_approval),
        Subjects.DEMOTION_REQUESTED: (DemotionRequested, on_demotion),
        Subjects.ROLLBACK_REQUESTED: (RollbackRequested, on_rollback),
        Subjects.RECALL_REQUESTED: (DatasetRecallRequested, on_recall),
        Subjects.POLICY_CHANGE: (PolicyChangeRequested, on_policy),
    }
    # One at a time, in stream order. The decisions would come out the same in any order (the
    # state is order-free), but the sequence of published verdicts would not: people read it.
    svc.consume_routes("mlw.registry.>", routes_events, batch=1, doc=on_promotion.__doc__)
    routes_verdicts: dict[str, tuple[type[Any], Any]] = {
        Subjects.VERDICT_ARTIFACT: (ArtifactVerdict, on_artifact_verdict),
        Subjects.VERDICT_DATASET: (DatasetVerdict, on_dataset_verdict),
    }
    svc.consume_routes("mlw.verdict.>", routes_verdicts, batch=16, doc=on_artifact_verdict.__doc__)

    @svc.reply(Subjects.REGISTRY_STATUS, RegistryStatusRequest)
    async def status(request: RegistryStatusRequest) -> RegistryStatus:
        """Where each request of a model (version) stands, the current version per stage, and
        the requests still pending (every model when none is named)."""
        g = gate()
        async with g.lock:
            found: list[PromotionVerdict] = []
            policy = g.policy_now()
            now = g.clock()
            for request_id in g.state.request_ids():
                recorded = g.state.request(request_id)
                if recorded is None or (request.model is not None and recorded.request.model != request.model):
                    continue
                if request.version is not None and recorded.request.version != request.version:
                    continue
                found.append(evaluate(request_id, g.state, policy, now=now).to_verdict(in_reply_to=request_id))
            current = [c.current() for c in g.state.currents() if request.model is None or c.model == request.model]
            # A decided request re-evaluated after its facts changed (an approver's key revoked)
            # may read `pending` again; it is closed all the same (issue 11).
            pending = [v for v in found if v.decision == "pending" and not g.state.closed(v.request_id)]
            policy_now = g.policy_in_force().in_force()
        return RegistryStatus(promotions=found, current=current, pending=pending, policy=policy_now)

    return svc
