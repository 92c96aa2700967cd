"""data-guard: checks dataset uploads for poisoning, tampering and access-policy breaches.

Pure domain modules (no bus imports): `loader` (bytes -> `Table`), `outliers`, `label_noise`,
`duplicates`, `policy`, and `detect` (runs every check and decides pass / warn / fail).
"""
