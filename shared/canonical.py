"""Canonical JSON: the one byte form that signatures cover.

Sorted keys, no insignificant whitespace, UTF-8, shortest round-trip floats (orjson), NaN and
infinity refused. This follows the spirit of RFC 8785 (JCS); it is what every mlwarden signer
and verifier produces from the same parsed value, and other-language verifiers can reproduce
it with any JSON library that sorts keys and prints compactly.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from shared.errors import InvalidMessage


def _check_finite(value: Any) -> None:
    # orjson writes NaN/inf as null, which would let two different values share one signature.
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMessage("non-finite number in signed content")
    elif isinstance(value, dict):
        for item in value.values():
            _check_finite(item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_finite(item)


def canonical_json(value: Any) -> bytes:
    """Return the canonical bytes of a JSON-compatible value."""
    _check_finite(value)
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
