"""Envelope encryption of datasets at rest: AES-256-GCM per object, its key wrapped by a master key.

Each object gets a fresh random 256-bit data key that encrypts it with AES-GCM (NIST SP 800-38D);
the data key is stored beside the ciphertext, wrapped with the master key by AES key wrap
(RFC 3394). The master key never leaves the data directory's keys folder, and rotating it means
re-wrapping data keys, not re-encrypting data. The object's name is bound as associated data,
so a ciphertext moved to another object name does not decrypt.

Blob layout: MAGIC (8) | wrapped key length (2, big-endian) | wrapped data key | nonce (12) |
ciphertext with the 16-byte GCM tag.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from shared.errors import MlwardenError

MAGIC = b"MLWENC1\n"
MASTER_KEY_FILE = "dataset-master.key"
_NONCE = 12
_KEY = 32


class DecryptionError(MlwardenError, ValueError):
    """An encrypted object that does not decrypt: tampered, truncated, wrong key or wrong name."""

    def __init__(self, reason: str, *, name: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.name = name


def is_encrypted(blob: bytes) -> bool:
    """True when `blob` starts with the envelope header."""
    return blob.startswith(MAGIC)


def load_or_create_master_key(keys_dir: Path) -> bytes:
    """The 32-byte master key from `keys_dir`, created (mode 0600) on first use."""
    path = keys_dir / MASTER_KEY_FILE
    if path.exists():
        key = path.read_bytes()
        if len(key) != _KEY:
            raise DecryptionError(f"master key {path} must be {_KEY} bytes, not {len(key)}")
        return key
    keys_dir.mkdir(parents=True, exist_ok=True)
    key = os.urandom(_KEY)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key)
    return key


def encrypt_object(plaintext: bytes, master_key: bytes, *, name: str) -> bytes:
    """Encrypt `plaintext` under a fresh data key, wrapped by `master_key`; `name` is bound."""
    data_key = AESGCM.generate_key(bit_length=256)
    wrapped = aes_key_wrap(master_key, data_key)
    nonce = os.urandom(_NONCE)  # a fresh key per object, so a random nonce never repeats under it
    header = MAGIC + struct.pack(">H", len(wrapped)) + wrapped + nonce
    return header + AESGCM(data_key).encrypt(nonce, plaintext, header + name.encode())


def decrypt_object(blob: bytes, master_key: bytes, *, name: str) -> bytes:
    """Decrypt a blob made by `encrypt_object`; raise `DecryptionError` on any tampering."""
    # (1) parse the header without trusting its lengths
    if not is_encrypted(blob):
        raise DecryptionError("not an mlwarden encrypted object", name=name)
    offset = len(MAGIC)
    if len(blob) < offset + 2:
        raise DecryptionError("encrypted object is truncated", name=name)
    (wrapped_len,) = struct.unpack(">H", blob[offset : offset + 2])
    offset += 2
    if wrapped_len != _KEY + 8 or len(blob) < offset + wrapped_len + _NONCE + 16:
        raise DecryptionError("encrypted object header is malformed or truncated", name=name)
    wrapped = blob[offset : offset + wrapped_len]
    nonce = blob[offset + wrapped_len : offset + wrapped_len + _NONCE]
    header_end = offset + wrapped_len + _NONCE
    # (2) unwrap the data key (RFC 3394's integrity check catches a swapped key or master key)
    try:
        data_key = aes_key_unwrap(master_key, wrapped)
    except InvalidUnwrap as exc:
        raise DecryptionError("data key does not unwrap with this master key", name=name) from exc
    # (3) authenticated decryption over header + name: any flipped bit fails the tag
    try:
        return AESGCM(data_key).decrypt(nonce, blob[header_end:], blob[:header_end] + name.encode())
    except InvalidTag as exc:
        raise DecryptionError("ciphertext or header was tampered with (GCM tag mismatch)", name=name) from exc
