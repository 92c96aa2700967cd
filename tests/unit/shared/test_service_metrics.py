"""mlwarden's own metrics (issue 10): verdicts by decision, alerts by kind, dead letters and
consumer backlog, each service in a registry of its own."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from shared.events import Alert, DatasetVerdict, Decision, Severity
from shared.metrics import ServiceMetrics


def _samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.exposition(None)
    assert content_type.startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def _verdict(decision: Decision) -> DatasetVerdict:
    return DatasetVerdict(dataset="iris", version="1", sha256="", decision=decision, in_reply_to="e1")


def test_verdicts_are_counted_by_type_and_decision() -> None:
    metrics = ServiceMetrics("data-guard")
    metrics.emitted("mlw.verdict.dataset", _verdict(Decision.PASS))
    metrics.emitted("mlw.verdict.dataset", _verdict(Decision.FAIL))
    metrics.emitted("mlw.verdict.dataset", _verdict(Decision.FAIL))
    samples = _samples(metrics)
    labels = (("decision", "fail"), ("service", "data-guard"), ("type", "mlw.verdict.dataset"))
    assert samples[("mlwarden_verdicts_total", labels)] == 2.0


def test_alerts_are_counted_by_kind_and_other_events_are_not_counted() -> None:
    metrics = ServiceMetrics("serving-monitor")
    metrics.emitted("mlw.alert.serving-monitor", Alert(kind="extraction", severity=Severity.FAIL, message="m"))
    metrics.emitted("mlw.deadletter.serving-monitor", Alert(kind="x", severity=Severity.FAIL, message="m"))
    samples = _samples(metrics)
    labels = (("kind", "extraction"), ("service", "serving-monitor"), ("severity", "fail"))
    assert samples[("mlwarden_alerts_total", labels)] == 1.0
    assert not any(name == "mlwarden_verdicts_total" for name, _ in samples)
    assert sum(v for (name, _), v in samples.items() if name == "mlwarden_alerts_total") == 1.0


def test_dead_letters_and_consumer_backlog() -> None:
    metrics = ServiceMetrics("audit-log")
    metrics.dead_lettered("mlw.dataset.uploaded")
    metrics.dead_lettered("mlw.audit.query", 3)
    metrics.consumer("MLW_EVENTS", "audit-log-events", pending=7, ack_pending=2)
    samples = _samples(metrics)
    assert samples[("mlwarden_dead_letters_total", (("service", "audit-log"), ("subject", "mlw.audit.query")))] == 3
    consumer = (("durable", "audit-log-events"), ("service", "audit-log"), ("stream", "MLW_EVENTS"))
    assert samples[("mlwarden_consumer_pending_messages", consumer)] == 7
    assert samples[("mlwarden_consumer_ack_pending_messages", consumer)] == 2


def test_two_services_in_one_process_keep_separate_registries() -> None:
    first, second = ServiceMetrics("data-guard"), ServiceMetrics("data-guard")
    first.emitted("mlw.verdict.dataset", _verdict(Decision.PASS))
    assert not any(name == "mlwarden_verdicts_total" for name, _ in _samples(second))


def test_openmetrics_is_served_when_asked_for() -> None:
    body, content_type = ServiceMetrics("data-guard").exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")
