"""An AsyncAPI 3.0 document of the whole bus, generated from the one place subjects and schemas
are declared (`shared.topology`, `shared.events`), so the documentation cannot drift."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from shared import events
from shared.envelope import Envelope
from shared.topology import CONSUMERS, STREAMS, VERDICT_SIGNERS, Subjects, model_for_type

#: Who sends and who receives each stored subject.
_FLOWS: dict[str, tuple[str, list[str]]] = {
    Subjects.DATASET_UPLOADED: ("producers (signed)", ["data-guard", "audit-log"]),
    Subjects.DATASET_ACCESS: ("people and jobs reading data (signed)", ["data-guard", "audit-log"]),
    Subjects.DATASET_APPROVAL: ("data stewards and the identity provider (signed)", ["data-guard", "audit-log"]),
    Subjects.MODEL_BUILT: ("producers (signed)", ["artifact-signer", "audit-log"]),
    Subjects.PROMOTION_REQUESTED: ("people (signed)", ["registry-gate", "audit-log"]),
    Subjects.APPROVAL_GIVEN: ("people (signed)", ["registry-gate", "audit-log"]),
    Subjects.PREDICTION_LOGGED: ("model servers (signed)", ["serving-monitor", "audit-log"]),
    Subjects.VERDICT_DATASET: ("data-guard", ["registry-gate", "audit-log", "subscribers"]),
    Subjects.VERDICT_ACCESS: ("data-guard", ["audit-log", "data owners"]),
    Subjects.VERDICT_ARTIFACT: ("artifact-signer", ["registry-gate", "audit-log", "subscribers"]),
    Subjects.VERDICT_PROMOTION: ("registry-gate", ["audit-log", "subscribers"]),
    Subjects.VERDICT_ADMISSION: ("serving-monitor", ["audit-log"]),
}

_REQUESTS: dict[str, tuple[str, type[BaseModel], type[BaseModel]]] = {
    Subjects.SERVING_ADMIT: ("serving-monitor", events.AdmitRequest, events.AdmitReply),
    Subjects.AUDIT_QUERY: ("audit-log", events.AuditQuery, events.AuditPage),
    Subjects.ARTIFACT_VERIFY: ("artifact-signer", events.ArtifactVerifyRequest, events.ArtifactVerifyReply),
    Subjects.REGISTRY_STATUS: ("registry-gate", events.RegistryStatusRequest, events.RegistryStatus),
}


def _key(subject: str) -> str:
    return subject.replace(".", "_").replace("<", "").replace(">", "")


def _envelope_schema(model: type[BaseModel]) -> dict[str, Any]:
    schema: dict[str, Any] = Envelope[model].model_json_schema()  # type: ignore[valid-type]
    return schema


def build_asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document as a JSON-able dict."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}

    def stream_of(subject: str) -> str:
        for spec in STREAMS:
            for pattern in spec.subjects:
                if subject.startswith(pattern.rstrip(">").rstrip(".")):
                    return spec.name
        return "-"

    stored = dict(_FLOWS)
    stored[Subjects.ALERT_PREFIX + ".{service}"] = ("any service", ["audit-log", "subscribers"])
    stored[Subjects.DEADLETTER_PREFIX + ".{service}"] = ("any service", ["audit-log"])
    for subject, (sender, receivers) in stored.items():
        base = subject.replace(".{service}", ".x")
        model = model_for_type(base)
        if model is None:  # declared but without a schema yet: nothing to document
            continue
        key = _key(subject.replace(".{service}", ""))
        signer = VERDICT_SIGNERS.get(subject)
        messages[key] = {
            "name": model.__name__,
            "title": model.__name__,
            "summary": (model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {"type": "object", "properties": {"Nats-Msg-Id": {"type": "string"}}},
            "payload": _envelope_schema(model),
        }
        description = f"JetStream stream {stream_of(base)}. Sent by {sender}; read by {', '.join(receivers)}."
        if signer:
            description += f" Signed by {signer}; consumers verify the signature and the signer."
        channel: dict[str, Any] = {
            "address": subject,
            "description": description,
            "messages": {key: {"$ref": f"#/components/messages/{key}"}},
        }
        if "{service}" in subject:
            channel["parameters"] = {"service": {"description": "the emitting service"}}
        channels[key] = channel
        operations[f"send_{key}"] = {"action": "send", "channel": {"$ref": f"#/channels/{key}"}}
        operations[f"receive_{key}"] = {"action": "receive", "channel": {"$ref": f"#/channels/{key}"}}

    for subject, (owner, request, reply) in _REQUESTS.items():
        key = _key(subject)
        messages[f"{key}_request"] = {"name": request.__name__, "payload": request.model_json_schema()}
        messages[f"{key}_reply"] = {
            "name": reply.__name__,
            "payload": {"oneOf": [reply.model_json_schema(), events.ErrorReply.model_json_schema()]},
        }
        channels[key] = {
            "address": subject,
            "description": f"Request/reply (core NATS, queue group {owner}): plain JSON body, not an envelope.",
            "messages": {
                "request": {"$ref": f"#/components/messages/{key}_request"},
                "reply": {"$ref": f"#/components/messages/{key}_reply"},
            },
        }
        operations[f"answer_{key}"] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{key}"},
            "reply": {"messages": [{"$ref": f"#/channels/{key}/messages/reply"}]},
        }

    durables = {
        service: [f"{c.durable} on {c.stream} ({', '.join(c.filter_subjects)})" for c in specs]
        for service, specs in CONSUMERS.items()
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "mlwarden bus",
            "version": "1",
            "description": "Every stored message is a CloudEvents 1.0 envelope whose `type` is its subject. "
            f"Durable consumers: {durables}.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }
