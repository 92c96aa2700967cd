"""audit-log labels entries by verified signers only (issue 8): `source`, `uploader` and other
fields an unverified sender writes label nothing."""

from __future__ import annotations

import time

from services.audit_log.store import IncomingEvent
from shared.envelope import new_event
from shared.events import Alert, DatasetUploaded, DatasetVerdict, Decision, ObjectRef, Severity
from shared.signing import SigningKey, TrustStore
from shared.topology import Subjects

GUARD = SigningKey.generate("data-guard")
PIPELINE = SigningKey.generate("pipeline")
MALLORY = SigningKey.generate("mallory")
TRUST = TrustStore()
TRUST.add("data-guard", GUARD.public_b64(), kind="service")
TRUST.add("pipeline", PIPELINE.public_b64(), kind="actor")
TRUST.add("mallory", MALLORY.public_b64(), kind="actor")

UPLOAD = DatasetUploaded(
    dataset="sales",
    version="1",
    location=ObjectRef(kind="object", bucket="mlw-datasets", key="sales/1"),
    sha256="ab" * 32,
    format="csv",
    uploader="pipeline",
)
VERDICT = DatasetVerdict(
    dataset="sales", version="1", sha256="ab" * 32, decision=Decision.PASS, uploader="pipeline", in_reply_to="u1"
)


def _entry(subject: str, data: object, key: SigningKey | None, source: str = "mlwarden/client") -> IncomingEvent:
    event = new_event(subject, data, source=source)  # type: ignore[type-var]
    if key is not None:
        event = event.signed(key)
    return IncomingEvent.from_bytes(event.to_bytes(), recorded_at=time.time(), arrived_on=subject, trust=TRUST)


def test_a_producer_event_is_labelled_by_its_signer_not_by_the_field_it_claims() -> None:
    honest = _entry(Subjects.DATASET_UPLOADED, UPLOAD, PIPELINE)
    assert (honest.actor, honest.service) == ("pipeline", None)
    forged = _entry(Subjects.DATASET_UPLOADED, UPLOAD, MALLORY)  # claims uploader "pipeline"
    assert forged.actor == "mallory"


def test_unsigned_events_and_forged_sources_label_nothing() -> None:
    unsigned = _entry(Subjects.DATASET_UPLOADED, UPLOAD, None, source="mlwarden/registry-gate")
    assert (unsigned.service, unsigned.actor, unsigned.client) == (None, None, None)
    # a verdict signed by an actor (or by the wrong service) is not data-guard's verdict
    by_actor = _entry(Subjects.VERDICT_DATASET, VERDICT, MALLORY, source="mlwarden/data-guard")
    assert (by_actor.service, by_actor.actor, by_actor.decision) == (None, None, "pass")
    # an unknown key named after a service
    impostor = _entry(Subjects.VERDICT_DATASET, VERDICT, SigningKey.generate("data-guard"), "mlwarden/data-guard")
    assert impostor.service is None


def test_a_service_verdict_is_labelled_by_the_service_and_the_actor_it_vouches_for() -> None:
    entry = _entry(Subjects.VERDICT_DATASET, VERDICT, GUARD, source="mlwarden/data-guard")
    assert (entry.service, entry.actor) == ("data-guard", "pipeline")


def test_a_service_key_cannot_sign_a_producer_event_or_another_services_alert() -> None:
    assert _entry(Subjects.DATASET_UPLOADED, UPLOAD, GUARD).actor is None
    alert = Alert(kind="x", severity=Severity.WARN, message="m")
    assert _entry(Subjects.alert("registry-gate"), alert, GUARD).service is None
    assert _entry(Subjects.alert("data-guard"), alert, GUARD).service == "data-guard"
