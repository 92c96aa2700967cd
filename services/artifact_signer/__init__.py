"""artifact-signer: hashes, scans and signs model artifacts, and checks their lock files.

The modules here are the pure domain (no NATS, no FastStream): `hashing` walks and digests a
file tree, `manifest` builds, signs and verifies the manifest over it, `lockfile` checks that
every dependency is pinned and hashed, and `scanner` finds serialized models that would run
code when loaded.
"""
