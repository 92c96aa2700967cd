"""audit-log: the tamper-evident record of every event, verdict, alert and dead letter on the bus.

Pure domain modules (no NATS, no FastStream): `store` (SQL schema, hash-linked group-commit
appends), `query` (auditor queries) and `verify` (chain verification). The bus wiring calls them
from thin handlers and from the offline `mlwarden audit ...` commands.
"""
