"""Keys and first-start state: the operator's root key, service keys, the root-signed trust
store, demo actors (dev profile only) and the registry policy."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nats.js import JetStreamContext

from shared.bus import register_key
from shared.settings import Settings
from shared.signing import SigningKey, load_or_create_key
from shared.topology import SERVICES, ensure_topology
from shared.trust import ROOT_ID, ROOT_KEY_FILE, TrustError, root_public_path

#: Demo actors (dev profile): alice requests promotions, bob and carol review, mallory holds no
#: role (the attacker); pipeline uploads data, ci-bot builds models, model-server logs
#: predictions, dana approves data access, idp is the identity provider that asserts MFA and
#: olga may recall a dataset and paula may change the registry policy (registry-gate, issue 11).
DEMO_ACTORS: dict[str, list[str]] = {
    "alice": ["ml-engineer"],
    "bob": ["reviewer"],
    "carol": ["reviewer"],
    "mallory": [],
    "pipeline": ["data-engineer"],
    "ci-bot": ["builder"],
    "model-server": ["model-server"],
    "dana": ["data-steward"],
    "idp": ["identity-provider"],
    "olga": ["recall-officer"],
    "paula": ["policy-admin"],
}


@dataclass(frozen=True)
class Keys:
    """What `init_keys` made or found."""

    root: SigningKey | None
    services: dict[str, SigningKey]
    actors: dict[str, SigningKey]


def root_key_path(settings: Settings) -> Path:
    """Where the operator's root private key is kept (move it offline after `keys init`)."""
    return settings.keys_dir / ROOT_KEY_FILE


def load_root_key(settings: Settings) -> SigningKey:
    """The operator's root private key; fails closed when it is not on this machine."""
    path = root_key_path(settings)
    if not path.is_file():
        raise TrustError(f"the root key {path} is not here: run the trust-store commands where the operator keeps it")
    return SigningKey.from_pem(ROOT_ID, path.read_bytes())


def _ensure_root(settings: Settings) -> SigningKey | None:
    """Create the root key once (0600) and its public half; None when only the public half is here
    (the operator keeps the private key offline)."""
    path = root_key_path(settings)
    public = root_public_path(settings.keys_dir)
    if not path.exists() and public.exists():
        return None
    root = load_or_create_key(path, ROOT_ID)
    if not public.exists() or public.read_text().strip() != root.public_b64():
        public.write_text(root.public_b64() + "\n")
        os.chmod(public, 0o644)
    return root


def init_keys(settings: Settings) -> Keys:
    """Create (once) the root key, every service key and, in the dev profile, the demo actors'
    keys; write the registry policy (stages only: actors and roles live in the trust store)."""
    root = _ensure_root(settings)
    services = {name: load_or_create_key(settings.keys_dir / f"{name}.pem", name) for name in SERVICES}
    actors: dict[str, SigningKey] = {}
    if settings.profile == "dev":
        actors = {name: load_or_create_key(settings.actors_dir / f"{name}.pem", name) for name in DEMO_ACTORS}
    policy = settings.registry_policy_path
    if not policy.exists():
        from services.registry_gate.policy import render_policy

        policy.parent.mkdir(parents=True, exist_ok=True)
        policy.write_text(render_policy({}))
    return Keys(root, services, actors)


def actor_key(settings: Settings, name: str) -> SigningKey:
    """A demo actor's key from the data directory."""
    path: Path = settings.actors_dir / f"{name}.pem"
    return SigningKey.from_pem(name, path.read_bytes())


def demo_actor_keys(settings: Settings) -> dict[str, SigningKey]:
    """Every demo actor key present in the data directory (dev clients sign with these)."""
    return {name: actor_key(settings, name) for name in DEMO_ACTORS if (settings.actors_dir / f"{name}.pem").exists()}


async def bootstrap(js: JetStreamContext, settings: Settings) -> Keys:
    """Declare the topology and put every service key (and the demo actors) in the trust store,
    each entry signed by the root key."""
    await ensure_topology(js, replicas=settings.js_replicas)
    keys = init_keys(settings)
    root = keys.root or load_root_key(settings)
    for name, key in keys.services.items():
        await register_key(js, root, name, key.public_b64(), kind="service")
    for name, key in keys.actors.items():
        await register_key(js, root, name, key.public_b64(), kind="actor", roles=DEMO_ACTORS[name])
    return keys
