"""Who an audited event is from, decided by its signature, never by what it says (issue 8).

audit-log stores every event it receives, signed or not: a forged or unsigned event is evidence
too. But the labels auditors search by (`service`, `actor`, `client`) come only from a signature
that verifies against the root-signed trust store:

- a verdict, alert, dead letter or checkpoint must be signed by the one service that may emit
  that subject (`mlw.verdict.artifact` by artifact-signer, `mlw.alert.data-guard` by data-guard);
  its `service` label is that signer, and the actor and client it names are the ones the
  service vouches for;
- a producer event must be signed by a registered actor; its `actor` label is the signer,
  whatever `uploader`/`requester`/... the body claims;
- anything else (unsigned, unknown or revoked signer, a signature that does not verify, a
  service key on a producer subject) is stored with no service, actor or client label and
  `signer` left unverified: `source` and `data` of such an event label nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from shared.canonical import canonical_json
from shared.errors import InvalidMessage, SignatureError
from shared.signing import TrustStore
from shared.topology import expected_signer

#: Fields of `data` that name the actor in a service's verdict (first string wins).
VOUCHED_ACTOR_FIELDS: Final = ("uploader", "builder", "requester", "approver", "principal", "client")


@dataclass(frozen=True, slots=True)
class Provenance:
    """The labels one event earns from its verified signature."""

    service: str | None
    actor: str | None
    client: str | None
    #: The verified signer id, or None when the signature did not verify.
    signer: str | None
    #: Why it did not verify (empty when it did).
    problem: str = ""


UNVERIFIED: Final = Provenance(None, None, None, None, "not checked")


def provenance(raw: dict[str, Any], event_type: str, trust: TrustStore, at: float) -> Provenance:
    """Verify the envelope `raw` (as received) and return the labels it earns at time `at`."""
    signer = raw.get("signer")
    signature = raw.get("signature")
    if not isinstance(signer, str) or not isinstance(signature, str) or not signer or not signature:
        return Provenance(None, None, None, None, "unsigned")
    identity = trust.identity(signer)
    if identity is None:
        return Provenance(None, None, None, None, f"unknown signer {signer!r}")
    service = expected_signer(event_type)
    wanted = "service" if service is not None else "actor"
    if identity.kind not in (wanted, "any"):
        return Provenance(None, None, None, None, f"{signer!r} is a {identity.kind}, not a {wanted}")
    if service is not None and signer != service:
        return Provenance(None, None, None, None, f"{signer!r} may not sign {event_type}")
    try:
        message = canonical_json({k: v for k, v in raw.items() if k != "signature"})
        trust.verify_at(signer, message, signature, at)
    except (SignatureError, InvalidMessage) as exc:
        return Provenance(None, None, None, None, getattr(exc, "reason", str(exc)))
    data = raw.get("data")
    data = data if isinstance(data, dict) else {}
    client = data.get("client") if isinstance(data.get("client"), str) else None
    if service is None:
        return Provenance(None, signer, client, signer)
    actor = next((v for k in VOUCHED_ACTOR_FIELDS if isinstance(v := data.get(k), str) and v), None)
    return Provenance(signer, actor, client, signer)
