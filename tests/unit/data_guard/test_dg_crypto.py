"""AES-GCM envelope encryption of datasets: round trip, and every tampering refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.crypto import DecryptionError, decrypt_object, encrypt_object, is_encrypted, load_or_create_master_key


def test_round_trip_and_master_key_kept_private(tmp_path: Path) -> None:
    key = load_or_create_master_key(tmp_path / "keys")
    assert load_or_create_master_key(tmp_path / "keys") == key
    assert (tmp_path / "keys" / "dataset-master.key").stat().st_mode & 0o077 == 0
    blob = encrypt_object(b"a,b\n1,2\n", key, name="obj://mlw-datasets/ds/1")
    assert is_encrypted(blob) and b"1,2" not in blob
    assert decrypt_object(blob, key, name="obj://mlw-datasets/ds/1") == b"a,b\n1,2\n"


@pytest.mark.parametrize("position", [0, 9, 20, 55, -1])
def test_any_flipped_bit_is_refused(tmp_path: Path, position: int) -> None:
    key = load_or_create_master_key(tmp_path)
    blob = bytearray(encrypt_object(b"x" * 100, key, name="n"))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionError):
        decrypt_object(bytes(blob), key, name="n")


def test_moved_truncated_or_foreign_key_objects_are_refused(tmp_path: Path) -> None:
    key = load_or_create_master_key(tmp_path / "a")
    other = load_or_create_master_key(tmp_path / "b")
    blob = encrypt_object(b"secret rows", key, name="obj://mlw-datasets/ds/1")
    with pytest.raises(DecryptionError, match="tampered"):
        decrypt_object(blob, key, name="obj://mlw-datasets/ds/2")  # swapped into another object
    with pytest.raises(DecryptionError, match="unwrap"):
        decrypt_object(blob, other, name="obj://mlw-datasets/ds/1")
    with pytest.raises(DecryptionError, match="truncated"):
        decrypt_object(blob[:30], key, name="obj://mlw-datasets/ds/1")
