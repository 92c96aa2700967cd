"""`mlwarden keys ...`: the operator's trust-store commands. Every entry they write is signed by
the root key, which `keys init` creates (0600) and the operator keeps offline afterwards."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.table import Table

from mlwarden.cliutil import EXIT_ERROR, EXIT_OK, _print_json, _settings, err, out
from shared.settings import Settings
from shared.signing import SigningKey, load_or_create_key, public_key_b64
from shared.trust import Kind, fingerprint, load_root_public

T = TypeVar("T")


def _on_bus(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        from shared.bus import close_nats, connect

        nc = await connect(settings, name="mlwarden/keys")
        try:
            return await work(nc.jetstream())
        finally:
            await close_nats(nc)

    return asyncio.run(run())


def cmd_keys_init(args: argparse.Namespace) -> int:
    """Create the operator's root key (once, 0600), every service key and, in the dev profile, the
    demo actors; with --nats, declare the topology and register them all, signed by the root."""
    from mlwarden.bootstrap import bootstrap, init_keys

    settings = _settings(args)
    keys = init_keys(settings)
    if args.nats:
        _on_bus(settings, lambda js: bootstrap(js, settings))
    root = load_root_public(settings.trust_root, settings.keys_dir)
    out.print(f"{'root':16} {public_key_b64(root)}  (fingerprint {fingerprint(root)})")
    for name, key in {**keys.services, **keys.actors}.items():
        out.print(f"{name:16} {key.public_b64()}")
    if keys.root is not None:
        out.print(f"root key: {settings.keys_dir / 'root.pem'} — keep it offline; services need only root.pub")
    out.print(f"policy: {settings.registry_policy_path}")
    return EXIT_OK


def _roles(value: str) -> list[str]:
    return [r.strip() for r in value.split(",") if r.strip()]


def cmd_keys_add_actor(args: argparse.Namespace) -> int:
    """Register an actor (a person, pipeline or model server) with its roles: create its key
    (0600) unless --public-key gives one it keeps itself, and sign its trust-store entry."""
    from mlwarden.bootstrap import load_root_key
    from shared.bus import register_key

    settings = _settings(args)
    root = load_root_key(settings)
    if args.public_key:
        public = args.public_key
        key_path = None
    else:
        key_path = Path(args.key_out) if args.key_out else settings.actors_dir / f"{args.name}.pem"
        public = load_or_create_key(key_path, args.name).public_b64()
    entry = _on_bus(
        settings, lambda js: register_key(js, root, args.name, public, kind="actor", roles=_roles(args.roles))
    )
    out.print(f"actor {entry.id}: roles {', '.join(entry.roles) or '-'}; serial {entry.serial}")
    if key_path is not None:
        out.print(f"private key: {key_path} (give it to {args.name}; it signs as MLW_ACTOR_KEY or --key)")
    if args.nats_secrets:
        from mlwarden.nats_config import add_actor_identity

        env = add_actor_identity(Path(args.nats_secrets), args.name)
        out.print(f"NATS user and env file: {env} (reload nats-server to admit it)")
    return EXIT_OK


def cmd_keys_list(args: argparse.Namespace) -> int:
    """Every identity in the trust store, checked against the root key (untrusted entries too)."""
    from shared.bus import load_trust_checked

    settings = _settings(args)
    root = load_root_public(settings.trust_root, settings.keys_dir)
    store, rejected = _on_bus(settings, lambda js: load_trust_checked(js, root))
    rows: list[dict[str, Any]] = []
    for key_id in store.ids():
        identity = store.identity(key_id)
        assert identity is not None
        current = identity.current
        rows.append(
            {
                "id": identity.id,
                "kind": identity.kind,
                "roles": sorted(identity.roles),
                "status": "revoked" if identity.revoked_at is not None else "active",
                "key": fingerprint(current.public) if current is not None else None,
                "keys": len(identity.keys),
                "serial": identity.serial,
            }
        )
    bad = [{"key": r.key, "revision": r.revision, "reason": r.reason} for r in rejected]
    if args.format == "json":
        _print_json({"identities": rows, "untrusted": bad})
        return EXIT_OK
    table = Table("id", "kind", "roles", "status", "key", "keys", "serial")
    for row in rows:
        table.add_row(
            row["id"],
            row["kind"],
            ",".join(row["roles"]),
            row["status"],
            row["key"] or "-",
            str(row["keys"]),
            str(row["serial"]),
        )
    out.print(table)
    for item in bad:
        err.print(f"UNTRUSTED {item['key']} (revision {item['revision']}): {item['reason']}", markup=False)
    return EXIT_OK


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    """Revoke an identity: nothing it signs from now on verifies, in every running service."""
    from mlwarden.bootstrap import load_root_key
    from shared.bus import revoke_key

    settings = _settings(args)
    root = load_root_key(settings)
    entry = _on_bus(settings, lambda js: revoke_key(js, root, args.name, args.reason))
    out.print(f"{entry.id} revoked (serial {entry.serial}): {entry.reason}")
    return EXIT_OK


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Give an identity a new key: the old one still verifies what it signed before, signs
    nothing new. A service must be restarted to sign with its new key."""
    from mlwarden.bootstrap import load_root_key
    from shared.bus import current_entry, register_key
    from shared.topology import SERVICES

    settings = _settings(args)
    root = load_root_key(settings)
    kind: Kind = "service" if args.name in SERVICES else "actor"
    if args.public_key:
        public = args.public_key
    else:
        folder = settings.keys_dir if kind == "service" else settings.actors_dir
        path = folder / f"{args.name}.pem"
        if path.exists():
            os.replace(path, path.with_name(f"{path.name}.{int(time.time())}.retired"))
        public = load_or_create_key(path, args.name).public_b64()

    async def rotate(js: Any) -> Any:
        previous = await current_entry(js, root.private.public_key(), args.name)
        roles = previous.roles if previous is not None else ()
        return await register_key(js, root, args.name, public, kind=kind, roles=roles, replace=True)

    entry = _on_bus(settings, rotate)
    out.print(f"{entry.id}: key {len(entry.keys)} of {len(entry.keys)} now signs (serial {entry.serial})")
    return EXIT_OK


def cmd_keys_export(args: argparse.Namespace) -> int:
    """Write an identity's current public key as PEM (e.g. audit-log's, for `audit check-proof`)."""
    from shared.bus import load_trust

    settings = _settings(args)
    local = settings.keys_dir / f"{args.name}.pem"
    if local.exists() and not args.nats:
        pem = SigningKey.from_pem(args.name, local.read_bytes()).public_pem()
    else:
        root = load_root_public(settings.trust_root, settings.keys_dir)
        store = _on_bus(settings, lambda js: load_trust(js, root, [args.name]))
        public = store.public_b64(args.name)
        if public is None:
            err.print(f"{args.name} has no trusted current key")
            return EXIT_ERROR
        from cryptography.hazmat.primitives import serialization

        from shared.signing import load_public_key

        pem = load_public_key(public).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if args.out:
        Path(args.out).write_bytes(pem)
        out.print(f"wrote {args.out}")
    else:
        out.print(pem.decode().rstrip(), markup=False)
    return EXIT_OK


def add_keys_commands(sub: Any, add: Callable[..., argparse.ArgumentParser], common: Callable[..., None]) -> Any:
    """`mlwarden keys ...`; returns the `keys` sub-parsers so other commands can join them."""
    keys = sub.add_parser("keys", help="the trust store: root key, services, actors, API keys").add_subparsers(
        dest="keys_cmd", required=True
    )
    p = add("init", cmd_keys_init, keys)
    common(p)
    p = add("add-actor", cmd_keys_add_actor, keys)
    common(p)
    p.add_argument("name", help="actor id (letters, digits, '.', '_', '-')")
    p.add_argument("--roles", default="", help="comma-separated roles, e.g. ml-engineer or reviewer (default: none)")
    p.add_argument("--public-key", help="register this base64 Ed25519 public key instead of creating a key")
    p.add_argument("--key-out", help="where to write the new private key (default DATA_DIR/actors/NAME.pem)")
    p.add_argument("--nats-secrets", help="nats-config folder: also give the actor its own NATS user and env file")
    p = add("list", cmd_keys_list, keys)
    common(p)
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format (default text)")
    p = add("revoke", cmd_keys_revoke, keys)
    common(p)
    p.add_argument("name", help="the actor or service id")
    p.add_argument("--reason", default="revoked by the operator", help="recorded in the entry (default: %(default)s)")
    p = add("rotate", cmd_keys_rotate, keys)
    common(p)
    p.add_argument("name", help="the actor or service id")
    p.add_argument("--public-key", help="the new base64 Ed25519 public key (default: create one)")
    p = add("export", cmd_keys_export, keys)
    common(p)
    p.add_argument("name", help="identity whose public key to write, e.g. audit-log")
    p.add_argument("--out", help="file to write (default: print)")
    return keys
