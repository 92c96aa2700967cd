"""One service's Prometheus metrics (issue 10), in a registry of its own so several services can
run in one process (tests, benchmarks) without their metrics colliding.

FastStream's NATS Prometheus middleware counts what the durable consumers receive and times the
handlers, per subject (`faststream_received_messages_total`,
`faststream_received_processed_messages_duration_seconds`, with `app_name` = the service).
mlwarden adds what only it knows:

| metric | labels | what |
|---|---|---|
| `mlwarden_verdicts_total` | service, type, decision | verdicts this service signed and published |
| `mlwarden_alerts_total` | service, kind, severity | alerts (detector findings, forged verdicts, outages) |
| `mlwarden_dead_letters_total` | service, subject | messages dead-lettered, and refused requests recorded |
| `mlwarden_consumer_pending_messages` | service, stream, durable | JetStream `num_pending`, sampled at each scrape |
| `mlwarden_consumer_ack_pending_messages` | service, stream, durable | delivered, not yet acked, sampled likewise |
| `mlwarden_ready` | service | 1 while `/readyz` would answer 200 |
| `mlwarden_audit_entries_total` | service, outcome | audit-log: entries appended (`stored`) or skipped (`duplicate`) |
| `mlwarden_audit_batch_duration_seconds` | service | audit-log: one fetched batch, from the writer to its commit |

audit-log reads its consumers with plain nats-py fetch loops (group commit, issue 3), not
FastStream subscribers, so its ingestion is measured by the last two rather than the middleware.

Label values come from code and the topology (subjects, decisions, alert kinds), never from
message content, so the series stay bounded.
"""

from __future__ import annotations

from typing import Any

from faststream.nats.prometheus import NatsPrometheusMiddleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder

from shared.topology import Subjects

#: The verdict subjects' common prefix (`mlw.verdict.dataset`, ...).
_VERDICT_PREFIX = "mlw.verdict."


class ServiceMetrics:
    """The metrics of one service instance."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.verdicts = Counter(
            "mlwarden_verdicts",
            "Verdicts this service signed and published, by type and decision.",
            ["service", "type", "decision"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "mlwarden_alerts",
            "Alerts this service published, by kind (detector, forged verdict, outage) and severity.",
            ["service", "kind", "severity"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "mlwarden_dead_letters",
            "Messages this service dead-lettered (and refused requests it recorded), by original subject.",
            ["service", "subject"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "mlwarden_consumer_pending_messages",
            "Messages of the stream not yet delivered to this durable consumer (JetStream num_pending).",
            ["service", "stream", "durable"],
            registry=self.registry,
        )
        self.ack_pending = Gauge(
            "mlwarden_consumer_ack_pending_messages",
            "Messages delivered to this durable consumer and not acknowledged yet (num_ack_pending).",
            ["service", "stream", "durable"],
            registry=self.registry,
        )
        self.audit_entries = Counter(
            "mlwarden_audit_entries",
            "audit-log: entries appended to the trail (stored) or skipped as already there (duplicate).",
            ["service", "outcome"],
            registry=self.registry,
        )
        self.audit_batch_seconds = Histogram(
            "mlwarden_audit_batch_duration_seconds",
            "audit-log: seconds from handing a fetched batch to the writer to its commit.",
            ["service"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "mlwarden_ready", "1 while the service is ready (/readyz answers 200).", ["service"], registry=self.registry
        )

    def audit_batch(self, *, inserted: int, duplicates: int, seconds: float) -> None:
        """Record one audit-log batch committed: entries stored and skipped, and how long it took."""
        self.audit_entries.labels(self.service, "stored").inc(inserted)
        self.audit_entries.labels(self.service, "duplicate").inc(duplicates)
        self.audit_batch_seconds.labels(self.service).observe(seconds)

    def middleware(self) -> NatsPrometheusMiddleware:
        """FastStream's middleware, counting and timing the consumers into this registry."""
        return NatsPrometheusMiddleware(registry=self.registry, app_name=self.service)

    def emitted(self, subject: str, data: Any) -> None:
        """Count one published event if it is a verdict or an alert."""
        if subject.startswith(_VERDICT_PREFIX):
            decision = getattr(data, "decision", None)
            self.verdicts.labels(self.service, subject, _text(decision)).inc()
        elif subject == Subjects.alert(self.service):
            self.alerts.labels(
                self.service, _text(getattr(data, "kind", None)), _text(getattr(data, "severity", None))
            ).inc()

    def dead_lettered(self, subject: str, count: int = 1) -> None:
        """Count `count` messages from `subject` set aside as dead letters."""
        self.dead_letters.labels(self.service, subject).inc(count)

    def consumer(self, stream: str, durable: str, *, pending: int, ack_pending: int) -> None:
        """Record one sample of a durable consumer's backlog."""
        self.pending.labels(self.service, stream, durable).set(pending)
        self.ack_pending.labels(self.service, stream, durable).set(ack_pending)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the text format the scraper asked for (Prometheus or OpenMetrics)."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def _text(value: object) -> str:
    """A label value: an enum's value, a string, or "none"."""
    if value is None:
        return "none"
    return str(getattr(value, "value", value))
