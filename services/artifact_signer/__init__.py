"""artifact-signer: hashes, scans and signs model artifacts, and checks their dependencies.

The modules here are the pure domain (no NATS, no FastStream): `hashing` walks and digests a
file tree (files in parallel, large files in shards, small files in batches), `oms` writes and
verifies OpenSSF Model Signing v1.0 bundles over it, `attest` makes the companion statements
(SLSA provenance, check results) about the same root digest, `lockfile`, `osv` and
`dependencies` gate the build's dependencies, `scanner` finds serialized models that would run
code when loaded, `sarif` reports for CI code scanning, and `manifest` is the earlier mlwarden
signed-manifest format, still verified by `mlwarden verify`.
"""
