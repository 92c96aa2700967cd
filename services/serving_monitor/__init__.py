"""serving-monitor: admits model-serving calls (API key, scope, rate limit, input schema) and
watches prediction logs for per-client abuse.

The modules here are the pure domain (no NATS, no FastStream): `auth`, `ratelimit`,
`validation`, `abuse` and `admission`, which combines the first three into one decision.
"""
