"""The committed bus documentation is what the code declares."""

from __future__ import annotations

from pathlib import Path

import orjson

from shared.asyncapi import build_asyncapi
from shared.topology import VERDICT_SIGNERS

DOC = Path(__file__).resolve().parents[3] / "docs" / "asyncapi.json"


def test_committed_asyncapi_document_is_current() -> None:
    # Regenerate with: uv run mlwarden asyncapi > docs/asyncapi.json
    assert orjson.loads(DOC.read_bytes()) == orjson.loads(orjson.dumps(build_asyncapi()))


def test_every_verdict_subject_is_documented_with_its_signer() -> None:
    channels = build_asyncapi()["channels"]
    for subject, signer in VERDICT_SIGNERS.items():
        channel = channels[subject.replace(".", "_")]
        assert signer in channel["description"]
