"""The registry policy: actors (their public keys and roles) and what each stage needs.

The policy is the only place roles come from: a promotion request or an approval proves who sent
it by its Ed25519 signature (`trust_store()` holds the actors' keys), and the policy says what
that actor may do. A field in an event never grants anything.

Validation is strict because a loose policy silently disables a control:

- every role an actor holds or a stage names must be declared in `roles` (a typo such as
  `reviwer` would otherwise leave a stage with no possible approver, or grant nothing);
- stages are declared by name (dev, staging, production, or a team's own, issue 11); a stage
  named `production` needs at least one approval: with zero, one person could promote alone,
  which is exactly what the two-person rule forbids (the requester plus >= 1 distinct approver);
- public keys must be raw 32-byte Ed25519 keys in base64, and no two actors may share one (two
  ids with one key would let one person count as two approvers).

A policy in force has a version (issue 11: policy changes are versioned and audited). The file is
only version 1; each later version is a signed change an actor holding the `policy-admin` role
publishes, which `change_policy` turns into the next `AppliedPolicy` or refuses with every problem.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, Field, PrivateAttr, ValidationError, model_validator

from shared.errors import MlwardenError, SignatureError
from shared.events import Frozen, Name, PolicyInForce, Sha256Hex
from shared.signing import TrustStore, load_public_key

#: A stage name as requests carry it; only the stages the policy declares exist.
Stage = str

PRODUCTION = "production"
#: A week: long enough for reviewers across time zones, short enough that a stale request (whose
#: evidence may have been superseded) cannot be approved months later (issue 11).
DEFAULT_REQUEST_TTL_S = 7 * 24 * 3600.0

ML_ENGINEER = "ml-engineer"
REVIEWER = "reviewer"

#: Roles of the demo actors `mlwarden keys init` creates (mallory holds none: the attacker).
DEMO_ACTOR_ROLES: Mapping[str, tuple[str, ...]] = {
    "alice": (ML_ENGINEER,),
    "bob": (REVIEWER,),
    "carol": (REVIEWER,),
    "mallory": (),
}


class PolicyError(MlwardenError, ValueError):
    """A registry policy that cannot be read or must not be used."""

    def __init__(self, reason: str, *, path: str | None = None, problems: Iterable[str] = ()) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path
        self.problems = list(problems)


def _sorted_unique(values: tuple[str, ...]) -> tuple[str, ...]:
    # Sorted and de-duplicated so equal policies compare and render identically.
    return tuple(sorted(set(values)))


def _ed25519_b64(value: str) -> str:
    # Only the raw base64 form: PEM would also load, but one spelling per key keeps the
    # duplicate-key check below exact.
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise ValueError("public_key is not base64") from exc
    if len(raw) != 32:
        raise ValueError(f"public_key must be a raw 32-byte Ed25519 key, got {len(raw)} bytes")
    try:
        load_public_key(value)
    except SignatureError as exc:
        raise ValueError(exc.reason) from exc
    return value


RoleSet = Annotated[tuple[Name, ...], AfterValidator(_sorted_unique)]
PublicKeyB64 = Annotated[str, AfterValidator(_ed25519_b64)]


class ActorPolicy(Frozen):
    """One person (or bot) who may sign promotion requests or approvals."""

    public_key: PublicKeyB64 = Field(description="raw 32-byte Ed25519 public key, base64")
    roles: RoleSet = Field(default=(), description="roles the actor holds")


class StagePolicy(Frozen):
    """What a promotion to one stage needs. Field defaults are the strict production ones."""

    request_roles: RoleSet = Field(default=(ML_ENGINEER,), description="roles that may request it")
    approver_roles: RoleSet = Field(default=(REVIEWER,), description="roles whose approval counts")
    approvals: int = Field(default=2, ge=0, le=16, description="distinct approvers needed")
    accept_warn_datasets: bool = Field(
        default=False, description="a data-guard 'warn' on a training dataset is enough (else pass only)"
    )
    require_datasets: bool = Field(
        default=True,
        description="refuse an artifact whose verdict names no training dataset (no data provenance)",
    )
    require_label_checks: bool = Field(
        default=True,
        description=(
            "refuse a model trained on a dataset whose label checks (label noise, backdoor triggers)"
            " did not run, e.g. uploaded without a label column"
        ),
    )

    recall: bool = Field(
        default=True,
        description="take the current version out of this stage when a fact its promotion relied on turns bad",
    )
    request_ttl_s: float = Field(
        default=DEFAULT_REQUEST_TTL_S,
        gt=0,
        le=366 * 24 * 3600.0,
        description="seconds a request stays open; an approval received later does not count",
    )

    @model_validator(mode="after")
    def _reachable(self) -> StagePolicy:
        if not self.request_roles:
            raise ValueError("request_roles is empty: nobody could ever request this stage")
        if self.approvals > 0 and not self.approver_roles:
            raise ValueError("approvals are needed but approver_roles is empty")
        return self


def default_stages() -> dict[str, StagePolicy]:
    """The stages a policy without a `stages` section has: staging and production, as before
    stages were declared in the policy (issue 11)."""
    return {
        "staging": StagePolicy(
            approvals=1, accept_warn_datasets=True, require_datasets=False, require_label_checks=False, recall=False
        ),
        PRODUCTION: StagePolicy(),
    }


class RegistryPolicy(Frozen):
    """Actors, the roles they hold, and what each stage needs."""

    roles: RoleSet = Field(default=(ML_ENGINEER, REVIEWER), description="every role that exists")
    actors: dict[Name, ActorPolicy] = Field(default_factory=dict, description="actor id -> key, roles")
    stages: dict[Name, StagePolicy] = Field(
        default_factory=default_stages,
        description="stage name -> requirements, in promotion order (e.g. dev, staging, production)",
    )
    revoked: frozenset[str] = Field(
        default=frozenset(),
        exclude=True,
        description="identities the trust store holds revoked (set by `with_trust`, never read from a file):"
        " a verdict one of them signed no longer counts (issue 11)",
    )

    _version: int = PrivateAttr(default=0)

    @model_validator(mode="after")
    def _consistent(self) -> RegistryPolicy:
        problems = consistency_problems(self.model_dump(mode="json"))
        if problems:
            raise _Inconsistent("; ".join(problems))
        return self

    @property
    def version(self) -> int:
        """The version this policy is in force as (0: not applied by registry-gate, e.g. a file
        read offline)."""
        return self._version

    def at_version(self, version: int) -> RegistryPolicy:
        """This policy as version `version`."""
        copy = self.model_copy()
        copy._version = version
        return copy

    def stage(self, name: Stage) -> StagePolicy | None:
        """The requirements of stage `name`, or None when the policy declares no such stage."""
        return self.stages.get(name)

    def roles_of(self, actor_id: str) -> tuple[str, ...]:
        """The roles `actor_id` holds (none for an unknown actor)."""
        actor = self.actors.get(actor_id)
        return actor.roles if actor is not None else ()

    def may_request(self, actor_id: str, stage: Stage) -> bool:
        """Whether `actor_id` holds a role allowed to request promotion to `stage`."""
        rules = self.stage(stage)
        return rules is not None and bool(set(self.roles_of(actor_id)) & set(rules.request_roles))

    def may_approve(self, actor_id: str, stage: Stage) -> bool:
        """Whether `actor_id` holds a role whose approval counts for `stage`."""
        rules = self.stage(stage)
        return rules is not None and bool(set(self.roles_of(actor_id)) & set(rules.approver_roles))

    def with_trust(self, trust: TrustStore) -> RegistryPolicy:
        """This policy with its actors taken from the root-signed trust store: their current keys
        and the roles this policy declares (revoked actors hold none). Roles come from there in a
        running registry-gate; an `actors` section in the file is for offline use only."""
        declared = set(self.roles)
        actors: dict[str, ActorPolicy] = {}
        for actor_id in trust.ids():
            identity = trust.identity(actor_id)
            if identity is None or identity.kind == "service" or identity.current is None:
                continue
            roles = tuple(sorted(identity.roles & declared))
            actors[actor_id] = ActorPolicy.model_construct(public_key=identity.current.public_b64, roles=roles)
        revoked = frozenset(
            key_id
            for key_id in trust.ids()
            if (identity := trust.identity(key_id)) is not None and identity.revoked_at is not None
        )
        return self.model_copy(update={"actors": actors, "revoked": revoked})

    def trust_store(self) -> TrustStore:
        """A trust store of the actors' public keys, to verify requests and approvals."""
        return TrustStore({actor_id: actor.public_key for actor_id, actor in self.actors.items()})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str | None = None) -> RegistryPolicy:
        """Validate a parsed policy; raise PolicyError listing every problem: each malformed
        field, and every cross-field rule the well-formed parts break."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in err['loc']) or '<policy>'}: {err['msg']}"
                for err in exc.errors()
                if not isinstance(err.get("ctx", {}).get("error"), _Inconsistent)
            ]
            # The cross-field rules run on the raw data too: a pydantic model validator never
            # runs when a field failed, and "every problem" means both kinds at once.
            problems += [f"<policy>: {p}" for p in consistency_problems(data)]
            raise PolicyError("invalid registry policy", path=path, problems=problems) from exc

    @classmethod
    def from_yaml(cls, text: str, *, path: str | None = None) -> RegistryPolicy:
        """Parse and validate policy YAML (safe loader only: no arbitrary Python objects)."""
        return cls.from_dict(parse_yaml(text, path=path), path=path)

    def to_yaml(self) -> str:
        """The policy as YAML that `from_yaml` reads back to an equal policy."""
        text: str = yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False, default_flow_style=False)
        return text


class _Inconsistent(ValueError):
    """Cross-field rules broken (`consistency_problems`); `from_dict` lists them one by one."""


def parse_yaml(text: str, *, path: str | None = None) -> dict[str, Any]:
    """The mapping a policy document holds (safe loader only: no arbitrary Python objects)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"not valid YAML: {exc}", path=path, problems=[f"not valid YAML: {exc}"]) from exc
    if not isinstance(data, dict):
        raise PolicyError("a policy must be a YAML mapping", path=path, problems=["a policy must be a YAML mapping"])
    return data


def _names(value: Any) -> list[str]:
    # Leniently, the role names a raw list holds: malformed entries are field errors already.
    return [v for v in value if isinstance(v, str)] if isinstance(value, list | tuple) else []


def consistency_problems(data: Mapping[str, Any]) -> list[str]:
    """The cross-field rules a (raw or validated) policy breaks, read leniently: a part that is
    malformed is skipped here (it is a field error), a part left out has its default."""
    raw_roles = data.get("roles", list(RegistryPolicy.model_fields["roles"].get_default()))
    if not isinstance(raw_roles, list | tuple):
        return []  # a malformed `roles` is a field error; every role would read as undeclared
    declared = set(_names(raw_roles))
    actors = data.get("actors") or {}
    actors = actors if isinstance(actors, Mapping) else {}
    stages = data["stages"] if "stages" in data else {n: s.model_dump(mode="json") for n, s in default_stages().items()}
    stages = stages if isinstance(stages, Mapping) else {}
    problems: list[str] = []
    for actor_id, actor in actors.items():
        roles = _names(actor.get("roles", [])) if isinstance(actor, Mapping) else []
        problems += [f"actor {actor_id!r} holds undeclared role {r!r}" for r in roles if r not in declared]
    if not stages:
        problems.append("no stages declared: nothing could ever be promoted")
    stage_defaults = StagePolicy.model_fields
    for stage_name, stage in stages.items():
        stage = stage if isinstance(stage, Mapping) else {}
        for field in ("request_roles", "approver_roles"):
            for role in _names(stage.get(field, list(stage_defaults[field].get_default()))):
                if role not in declared:
                    problems.append(f"stage {stage_name!r} names undeclared role {role!r}")
    # Two-person rule: the requester alone must never be enough for production.
    production = stages.get(PRODUCTION)
    if isinstance(production, Mapping):
        approvals = production.get("approvals", stage_defaults["approvals"].get_default())
        if isinstance(approvals, int) and approvals < 1:
            problems.append("production needs at least 1 approval (two-person rule)")
    owners: dict[str, str] = {}
    for actor_id, actor in actors.items():
        key = actor.get("public_key") if isinstance(actor, Mapping) else None
        if isinstance(key, str):
            other = owners.setdefault(key, str(actor_id))
            if other != actor_id:
                problems.append(f"actors {other!r} and {actor_id!r} share one public key")
    return problems


def document_sha256(document: str) -> str:
    """The sha256 of a policy document's UTF-8 bytes: what `sha256sum FILE` prints."""
    return hashlib.sha256(document.encode()).hexdigest()


#: `applied_by` of version 1, the policy file registry-gate first started with.
FROM_FILE = "policy-file"


class AppliedPolicy(Frozen):
    """One version of the registry policy as registry-gate applied it (a journaled fact)."""

    version: int = Field(ge=1, description="1 for the initial file, then +1 per applied change")
    sha256: Sha256Hex = Field(description="sha256 of `document`'s UTF-8 bytes")
    document: str = Field(description="the policy YAML exactly as applied")
    applied_by: str = Field(description="the verified signer of the change, or `policy-file` for version 1")
    request_id: str | None = Field(default=None, description="id of the change event (None for version 1)")
    reason: str = Field(default="", description="the change's reason")
    at: float = Field(description="unix seconds registry-gate applied it")

    def rules(self) -> RegistryPolicy:
        """The policy this version holds (it validated when it was applied)."""
        return RegistryPolicy.from_yaml(self.document).at_version(self.version)

    def in_force(self) -> PolicyInForce:
        """The status form."""
        return PolicyInForce(
            version=self.version,
            sha256=self.sha256,
            applied_by=self.applied_by,
            request_id=self.request_id,
            reason=self.reason,
            since=self.at,
        )


def initial_policy(document: str, *, path: str | None = None, at: float) -> AppliedPolicy:
    """Version 1 from the policy file's text (raise PolicyError listing every problem)."""
    RegistryPolicy.from_yaml(document, path=path)
    return AppliedPolicy(version=1, sha256=document_sha256(document), document=document, applied_by=FROM_FILE, at=at)


def change_policy(
    current: AppliedPolicy,
    document: str,
    *,
    signer: str,
    request_id: str,
    reason: str,
    expected_version: int | None,
    at: float,
) -> AppliedPolicy:
    """The next version from a verified change by `signer`, or PolicyError listing every problem
    (the current version then stays). The signer's identity and role were checked by the caller
    from the signature; nothing here is taken from a field of the document."""
    problems: list[str] = []
    if expected_version is not None and expected_version != current.version:
        problems.append(
            f"expected_version: the change was made against version {expected_version},"
            f" but version {current.version} is in force"
        )
    try:
        data = parse_yaml(document)
    except PolicyError as exc:
        problems += exc.problems
    else:
        if data.get("actors"):
            # Roles come from the root-signed trust store; an actor section in a published
            # policy would read as a grant and grant nothing (`with_trust` replaces it).
            problems.append("actors: a published policy names no actors (their keys and roles live in the trust store)")
        try:
            RegistryPolicy.from_dict(data)
        except PolicyError as exc:
            problems += exc.problems
    if problems:
        raise PolicyError("policy change refused", problems=problems)
    return AppliedPolicy(
        version=current.version + 1,
        sha256=document_sha256(document),
        document=document,
        applied_by=signer,
        request_id=request_id,
        reason=reason,
        at=at,
    )


def read_policy_file(path: Path) -> str:
    """The policy file's text (raise PolicyError when it cannot be read)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy: {exc}", path=str(path)) from exc


def load_policy(path: Path) -> RegistryPolicy:
    """Read and validate the policy file at `path`."""
    return RegistryPolicy.from_yaml(read_policy_file(path), path=str(path))


def policy_for_actors(
    actors: Mapping[str, tuple[str, Iterable[str]]], *, stages: Mapping[str, StagePolicy] | None = None
) -> RegistryPolicy:
    """A validated policy from `{actor_id: (public_key_b64, roles)}` and default (or given) stages."""
    return RegistryPolicy.from_dict(
        {
            "actors": {
                actor_id: {"public_key": key, "roles": list(roles)} for actor_id, (key, roles) in actors.items()
            },
            "stages": {name: rules.model_dump(mode="json") for name, rules in (stages or default_stages()).items()},
        }
    )


def render_policy(
    actors: Mapping[str, tuple[str, Iterable[str]]], *, stages: Mapping[str, StagePolicy] | None = None
) -> str:
    """Policy YAML for `{actor_id: (public_key_b64, roles)}`, validated before it is written."""
    header = (
        "# mlwarden registry-gate policy: the roles that exist and what each stage needs.\n"
        "# Actors, their keys and their roles live in the root-signed trust store (`mlwarden keys`);\n"
        "# requests and approvals must be signed by the actor's own key.\n"
    )
    return header + policy_for_actors(actors, stages=stages).to_yaml()
