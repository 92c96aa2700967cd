"""docs/signatures.md's worked examples verify with a third party's tools (rfc8785 and
cryptography) and with mlwarden's own code, so the document cannot drift from the code."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import orjson
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.envelope import decode_any
from shared.signing import TrustStore, public_key_b64
from shared.trust import parse_entry

DOC = Path(__file__).resolve().parents[2] / "docs" / "signatures.md"
# RFC 8032 section 7.1, TEST 1 (the example's root) and TEST 2 (the example's iris-server).
ROOT = Ed25519PrivateKey.from_private_bytes(
    bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
).public_key()
IRIS = Ed25519PrivateKey.from_private_bytes(
    bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
).public_key()


def _blocks() -> list[str]:
    """The document's json and plain code blocks, in order (not the python one)."""
    found = re.findall(r"^```(\w*)\n(.*?)\n```$", DOC.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    return [body for language, body in found if language in ("", "json")]


def test_worked_event_example_verifies_with_any_jcs_library() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert public_key_b64(IRIS) in text and public_key_b64(ROOT) in text
    message, signing_input = _blocks()[0], _blocks()[1]
    event = orjson.loads(message)
    signature = base64.b64decode(event.pop("signature"))
    assert rfc8785.dumps(event) == signing_input.encode()
    Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key_b64(IRIS))).verify(signature, signing_input.encode())
    # and mlwarden's own verification path accepts the same bytes
    received = decode_any(message.encode())
    assert received.signing_bytes() == signing_input.encode()
    assert received.verify(TrustStore({"iris-server": public_key_b64(IRIS)})) == "iris-server"


def test_worked_trust_entry_example_verifies_with_any_jcs_library() -> None:
    value, signing_input = _blocks()[2], _blocks()[3]
    stored = orjson.loads(value)
    assert signing_input.encode() == b"mlwarden-trust-entry/v1\n" + rfc8785.dumps(stored["entry"])
    ROOT.verify(base64.b64decode(stored["signature"]), signing_input.encode())
    assert parse_entry(value.encode(), key="iris-server", root=ROOT).keys[0].public_key == public_key_b64(IRIS)
