"""Canonical JSON benchmark: the cost of exact RFC 8785 (JCS), measured in one run.

    uv run python benchmarks/canonical.py [--n 20000]

`canonical_json` (JCS: orjson plus a Python walk that re-formats floats and re-orders objects with
astral keys) against, on the same envelopes:
1. the canonical_json before issue 10 (orjson with sorted keys after a walk refusing NaN and
   infinity), which was not JCS for floats and astral keys;
2. the `rfc8785` package (pure Python JCS), the reference the tests compare with;
3. the Ed25519 signature every signed envelope pays anyway.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import orjson
import rfc8785

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import Row, rate, show

from shared.canonical import canonical_json
from shared.envelope import new_event
from shared.events import DatasetVerdict as Verdict
from shared.events import Decision, Finding, PredictionBatch, PredictionRecord, Severity
from shared.signing import SigningKey


def before_issue_10(value: Any) -> bytes:
    """canonical_json as it was: a finiteness walk, then orjson with sorted keys."""

    def check(item: Any) -> None:
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError("non-finite")
        elif isinstance(item, dict):
            for inner in item.values():
                check(inner)
        elif isinstance(item, list | tuple):
            for inner in item:
                check(inner)

    check(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def envelopes(key: SigningKey) -> dict[str, dict[str, Any]]:
    """The signing input (envelope minus `signature`) of a verdict and of a float-heavy batch."""
    verdict = Verdict(
        dataset="iris",
        version="3",
        sha256="ab" * 32,
        decision=Decision.WARN,
        in_reply_to="6f1c7c8e-55d7-4a59-9b0c-6d0c3f7f2a11",
        findings=[
            Finding(check=f"check.{i}", severity=Severity.WARN, message="m", evidence={"score": i / 7, "n": i})
            for i in range(8)
        ],
    )
    batch = PredictionBatch(
        model="iris-clf",
        records=[
            PredictionRecord(client=f"c{i}", features={f"f{j}": i * j / 3 for j in range(4)}, prediction=i / 9)
            for i in range(100)
        ],
    )
    out = {}
    for name, data in (("dataset verdict (8 findings)", verdict), ("prediction batch (100 records)", batch)):
        wire = orjson.loads(new_event("mlw.x", data, source="mlwarden/bench").signed(key).to_bytes())
        wire.pop("signature")
        out[name] = wire
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="calls per measure (default 20000)")
    args = parser.parse_args()
    key = SigningKey.generate("bench")
    rows: list[Row] = []
    for name, body in envelopes(key).items():
        assert canonical_json(body) == rfc8785.dumps(body)
        n = args.n if "verdict" in name else max(args.n // 20, 100)
        jcs = rate(lambda body=body: canonical_json(body), n)
        rows.append(
            Row(
                f"JCS canonical_json, {name}",
                jcs,
                "before issue 10 (not JCS)",
                rate(lambda body=body: before_issue_10(body), n),
                "calls/s",
            )
        )
        rows.append(
            Row(
                f"JCS canonical_json, {name}",
                jcs,
                "rfc8785 package",
                rate(lambda body=body: rfc8785.dumps(body), n),
                "calls/s",
            )
        )
        message = canonical_json(body)
        rows.append(
            Row(
                f"JCS canonical_json, {name}",
                jcs,
                "Ed25519 sign of it",
                rate(lambda m=message: key.sign(m), n),
                "calls/s",
            )
        )
    show("canonical JSON (RFC 8785)", rows)


if __name__ == "__main__":
    main()
