"""Keys and first-start state: service keys, the trust store, demo actors and policy."""

from __future__ import annotations

from pathlib import Path

from nats.js import JetStreamContext

from shared.bus import register_key
from shared.settings import Settings
from shared.signing import SigningKey, load_or_create_key
from shared.topology import SERVICES, ensure_topology

#: Demo people: alice builds and requests, bob and carol review, mallory holds no role.
DEMO_ACTORS: dict[str, list[str]] = {
    "alice": ["ml-engineer"],
    "bob": ["reviewer"],
    "carol": ["reviewer"],
    "mallory": [],
}


def init_keys(settings: Settings) -> dict[str, SigningKey]:
    """Create (once) every service key and the demo actors' keys and registry policy."""
    keys = {name: load_or_create_key(settings.keys_dir / f"{name}.pem", name) for name in SERVICES}
    actors = {name: load_or_create_key(settings.actors_dir / f"{name}.pem", name) for name in DEMO_ACTORS}
    policy = settings.registry_policy_path
    if not policy.exists():
        from services.registry_gate.policy import render_policy

        policy.parent.mkdir(parents=True, exist_ok=True)
        policy.write_text(render_policy({n: (k.public_b64(), DEMO_ACTORS[n]) for n, k in actors.items()}))
    return keys


def actor_key(settings: Settings, name: str) -> SigningKey:
    """A demo actor's key from the data directory."""
    path: Path = settings.actors_dir / f"{name}.pem"
    return SigningKey.from_pem(name, path.read_bytes())


async def bootstrap(js: JetStreamContext, settings: Settings) -> None:
    """Declare the topology and register every service key in the trust store."""
    await ensure_topology(js)
    for key in init_keys(settings).values():
        await register_key(js, key)
