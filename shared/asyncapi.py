"""The bus's published contracts, generated from the one place subjects and schemas are declared
(`shared.topology`, `shared.events`), so the documentation cannot drift: an AsyncAPI 3.0 document
(`mlwarden asyncapi`) and standalone JSON Schemas (`mlwarden schemas`).

The AsyncAPI document keeps every schema once under `components/schemas` and points at it with
`#/components/schemas/<name>`: a `$ref` in an AsyncAPI document resolves against the document
root, so pydantic's per-schema `#/$defs/<name>` references would dangle (issue 10). It is checked
with the AsyncAPI project's own parser in `tests/contracts/`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

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
    Subjects.DEMOTION_REQUESTED: ("people (signed)", ["registry-gate", "audit-log"]),
    Subjects.ROLLBACK_REQUESTED: ("people (signed)", ["registry-gate", "audit-log"]),
    Subjects.RECALL_REQUESTED: ("recall officers (signed)", ["registry-gate", "audit-log"]),
    Subjects.POLICY_CHANGE: ("policy admins (signed)", ["registry-gate", "audit-log"]),
    Subjects.PREDICTION_LOGGED: ("model servers (signed)", ["serving-monitor", "audit-log"]),
    Subjects.VERDICT_DATASET: ("data-guard", ["registry-gate", "audit-log", "subscribers"]),
    Subjects.VERDICT_ACCESS: ("data-guard", ["audit-log", "data owners"]),
    Subjects.VERDICT_ARTIFACT: ("artifact-signer", ["registry-gate", "audit-log", "subscribers"]),
    Subjects.VERDICT_PROMOTION: ("registry-gate", ["audit-log", "subscribers"]),
    Subjects.VERDICT_RECALL: ("registry-gate", ["audit-log", "subscribers"]),
    Subjects.VERDICT_POLICY: ("registry-gate", ["audit-log", "operators"]),
    Subjects.VERDICT_ADMISSION: ("serving-monitor", ["audit-log"]),
}

_REQUESTS: dict[str, tuple[str, type[BaseModel], type[BaseModel]]] = {
    Subjects.SERVING_ADMIT: ("serving-monitor", events.AdmitRequest, events.AdmitReply),
    Subjects.AUDIT_QUERY: ("audit-log", events.AuditQuery, events.AuditPage),
    Subjects.ARTIFACT_VERIFY: ("artifact-signer", events.ArtifactVerifyRequest, events.ArtifactVerifyReply),
    Subjects.REGISTRY_STATUS: ("registry-gate", events.RegistryStatusRequest, events.RegistryStatus),
}


#: JSON Schema dialect of every schema pydantic generates and `mlwarden schemas` prints.
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

#: Where clients connect. Production dials TLS only (`Settings` refuses a production profile
#: with a `nats://` URL) with the per-identity user and password `mlwarden nats-config` writes.
SERVERS: dict[str, Any] = {
    "local": {
        "host": "127.0.0.1:4222",
        "protocol": "nats",
        "title": "local development",
        "description": "The nats-server `mlwarden demo` and `mlwarden dev` start (nats://127.0.0.1:4222), "
        "no authentication.",
    },
    "production": {
        "host": "{host}:{port}",
        "protocol": "nats",
        "title": "production",
        "description": "The operator's NATS cluster, dialled as tls://{host}:{port} (the production profile "
        "refuses plain nats:// URLs), each identity with its own user and password from `mlwarden nats-config`.",
        "variables": {
            "host": {"description": "NATS server host name", "default": "nats.example.internal"},
            "port": {"description": "NATS client port", "default": "4222"},
        },
        "security": [{"$ref": "#/components/securitySchemes/natsUserPassword"}],
    },
}

_SECURITY_SCHEMES: dict[str, Any] = {
    "natsUserPassword": {
        "type": "userPassword",
        "description": "One NATS user per service and actor, with publish/subscribe permissions limited to "
        "its subjects (`mlwarden nats-config`).",
    },
}


def _key(subject: str) -> str:
    return subject.replace(".", "_").replace("<", "").replace(">", "")


def _envelope(model: type[BaseModel]) -> type[BaseModel]:
    envelope: type[BaseModel] = Envelope[model]  # type: ignore[valid-type]
    return envelope


def data_models() -> dict[str, type[BaseModel]]:
    """The `data` model of every stored subject that has one (`mlw.alert.{service}`...)."""
    models: dict[str, type[BaseModel]] = {}
    for subject in [*_FLOWS, Subjects.ALERT_PREFIX + ".{service}", Subjects.DEADLETTER_PREFIX + ".{service}"]:
        model = model_for_type(subject.replace(".{service}", ".x"))
        if model is not None:  # declared but without a schema yet: nothing to document
            models[subject] = model
    return models


def build_json_schemas() -> dict[str, Any]:
    """Standalone JSON Schemas (2020-12) by subject: the whole envelope of each stored subject
    (CloudEvents attributes, `signer`, `signature` and the typed `data`), and the plain JSON
    bodies of each request/reply subject."""

    def standalone(model: type[BaseModel]) -> dict[str, Any]:
        return {"$schema": JSON_SCHEMA_DIALECT, **model.model_json_schema()}

    schemas: dict[str, Any] = {
        subject.replace("{service}", "<service>"): standalone(_envelope(model))
        for subject, model in data_models().items()
    }
    for subject, (_owner, request, reply) in _REQUESTS.items():
        schemas[subject] = {"request": standalone(request), "reply": standalone(reply)}
    schemas[Subjects.HEALTH_PREFIX + ".<service>"] = {
        "request": {"$schema": JSON_SCHEMA_DIALECT, "description": "any body"},
        "reply": standalone(events.HealthReply),
    }
    return schemas


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
    documented = data_models()

    # Every schema once, under components/schemas; payloads point at it (see the module docstring).
    wanted: list[type[BaseModel]] = [_envelope(model) for model in documented.values()]
    for _owner, request, reply in _REQUESTS.values():
        wanted += [request, reply]
    wanted.append(events.ErrorReply)
    refs, definitions = models_json_schema(
        [(model, "validation") for model in wanted], ref_template="#/components/schemas/{model}"
    )

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        return dict(refs[(model, "validation")])

    for subject, (sender, receivers) in stored.items():
        if subject not in documented:
            continue
        data_model = documented[subject]
        base = subject.replace(".{service}", ".x")
        key = _key(subject.replace(".{service}", ""))
        signer = VERDICT_SIGNERS.get(subject)
        messages[key] = {
            "name": data_model.__name__,
            "title": data_model.__name__,
            "summary": (data_model.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {"Nats-Msg-Id": {"type": "string", "description": "the envelope's id (deduplication)"}},
            },
            "payload": ref(_envelope(data_model)),
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
        messages[f"{key}_request"] = {"name": request.__name__, "payload": ref(request)}
        messages[f"{key}_reply"] = {
            "name": reply.__name__,
            "payload": {"oneOf": [ref(reply), ref(events.ErrorReply)]},
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
        "servers": SERVERS,
        "channels": channels,
        "operations": operations,
        "components": {
            "schemas": definitions["$defs"],
            "messages": messages,
            "securitySchemes": _SECURITY_SCHEMES,
        },
    }
