"""Tree walk and hashing: deterministic, streamed, parallel, and refusing paths that escape."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest

from services.artifact_signer.hashing import (
    FileDigest,
    UnsafePathError,
    check_relative_path,
    hash_file,
    hash_tree,
    root_digest,
    walk_tree,
)
from shared.errors import InputError


def make_model(root: Path) -> Path:
    (root / "weights").mkdir(parents=True)
    (root / "config.json").write_text('{"layers": 3}')
    (root / "weights" / "a.bin").write_bytes(b"\x00\x01" * 1000)
    (root / "weights" / "b.bin").write_bytes(os.urandom(300_000))
    (root / "Zeta.txt").write_text("z")
    (root / "é-ünïcode.txt").write_text("utf-8 name")
    return root


def test_hash_file_matches_hashlib_for_empty_small_and_multi_buffer_files(tmp_path: Path) -> None:
    for size in (0, 10, 9 * 1024 * 1024 + 7):  # the last one needs more than one 8 MiB read
        path = tmp_path / f"f{size}"
        data = os.urandom(size)
        path.write_bytes(data)
        assert hash_file(path) == hashlib.sha256(data).hexdigest()


def test_hash_tree_lists_sorted_posix_paths_with_digests_and_sizes(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    files = hash_tree(root, workers=4)
    assert [f.path for f in files] == ["Zeta.txt", "config.json", "weights/a.bin", "weights/b.bin", "é-ünïcode.txt"]
    by_path = {f.path: f for f in files}
    data = (root / "weights" / "b.bin").read_bytes()
    assert by_path["weights/b.bin"].sha256 == hashlib.sha256(data).hexdigest()
    assert by_path["weights/b.bin"].size == len(data)


def test_parallel_and_sequential_hashing_agree(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    for i in range(40):
        (root / f"small{i:02}.txt").write_text(str(i))
    assert hash_tree(root, workers=1) == hash_tree(root, workers=8)


def test_single_file_is_listed_under_its_name(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"abc")
    assert hash_tree(path) == [FileDigest(path="model.safetensors", sha256=hashlib.sha256(b"abc").hexdigest(), size=3)]


def test_root_digest_changes_with_content_name_and_membership(tmp_path: Path) -> None:
    files = hash_tree(make_model(tmp_path / "model"))
    base = root_digest(files)
    assert root_digest(list(reversed(files))) == base  # order of the input does not matter
    renamed = [f.model_copy(update={"path": "renamed.bin"}) if f.path == "Zeta.txt" else f for f in files]
    changed = [f.model_copy(update={"sha256": "0" * 64}) if f.path == "Zeta.txt" else f for f in files]
    assert len({base, root_digest(renamed), root_digest(changed), root_digest(files[1:])}) == 4


def test_root_digest_refuses_duplicate_paths() -> None:
    item = FileDigest(path="a", sha256="0" * 64, size=1)
    with pytest.raises(ValueError, match="duplicate"):
        root_digest([item, item])


def test_symlink_inside_the_tree_is_refused_by_default(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    (root / "link.bin").symlink_to(root / "weights" / "a.bin")
    with pytest.raises(UnsafePathError) as err:
        hash_tree(root)
    assert err.value.path == "link.bin"


def test_symlink_inside_the_tree_is_hashed_when_allowed(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    (root / "link.bin").symlink_to(root / "weights" / "a.bin")
    files = {f.path: f for f in hash_tree(root, allow_symlinks=True)}
    assert files["link.bin"].sha256 == files["weights/a.bin"].sha256


def test_symlink_escaping_the_root_is_refused_even_when_allowed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.key"
    secret.write_text("private")
    root = make_model(tmp_path / "model")
    (root / "weights" / "escape.bin").symlink_to(secret)
    with pytest.raises(UnsafePathError, match="leaves the artifact root") as err:
        hash_tree(root, allow_symlinks=True)
    assert err.value.path == "weights/escape.bin"


def test_relative_symlink_escape_with_dotdot_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("x")
    root = make_model(tmp_path / "model")
    (root / "weights" / "up.bin").symlink_to(Path("..") / ".." / "outside.txt")
    with pytest.raises(UnsafePathError, match="leaves the artifact root"):
        hash_tree(root, allow_symlinks=True)


def test_symlinked_root_is_refused_by_default(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    (tmp_path / "alias").symlink_to(root)
    with pytest.raises(UnsafePathError, match="root is a symlink"):
        hash_tree(tmp_path / "alias")


def test_dotdot_in_the_artifact_path_is_refused(tmp_path: Path) -> None:
    make_model(tmp_path / "model")
    with pytest.raises(UnsafePathError, match=r"'\.\.'"):
        hash_tree(tmp_path / "model" / ".." / "model")


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    os.mkfifo(root / "pipe")
    with pytest.raises(UnsafePathError, match="special file") as err:
        hash_tree(root)
    assert err.value.path == "pipe"
    with pytest.raises(UnsafePathError, match="not a regular file"):
        hash_file(root / "pipe")  # opened non-blocking, so this returns instead of hanging


def test_socket_is_refused(tmp_path: Path) -> None:
    root = make_model(tmp_path / "m")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "s.sock"))
        with pytest.raises(UnsafePathError, match="special file"):
            walk_tree(root)


def test_undecodable_file_name_is_refused(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    with open(os.path.join(os.fsencode(root), b"bad-\xff.bin"), "wb") as fh:
        fh.write(b"x")
    with pytest.raises(UnsafePathError, match="UTF-8"):
        hash_tree(root)


def test_missing_path_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        hash_tree(tmp_path / "nope")


@pytest.mark.parametrize("path", ["", "/etc/passwd", "a/../b", "../a", "./a", "a//b", "a\\b", "a\nb", "a/"])
def test_unsafe_relative_paths_are_refused(path: str) -> None:
    with pytest.raises(UnsafePathError):
        check_relative_path(path)


def test_file_digest_refuses_traversal_paths() -> None:
    with pytest.raises(ValueError, match=r"'\.\.'"):
        FileDigest(path="../../etc/passwd", sha256="0" * 64, size=0)


def test_batched_whole_and_sharded_pieces_match_hashlib(tmp_path: Path) -> None:
    from services.artifact_signer.hashing import SMALL_FILE, hash_pieces

    sizes = {"empty": 0, "tiny": 10, "below": SMALL_FILE - 1, "at": SMALL_FILE, "big": 3 * 1024 * 1024 + 5}
    data = {name: os.urandom(size) for name, size in sizes.items()}
    for name, content in data.items():
        (tmp_path / name).write_bytes(content)
    entries = walk_tree(tmp_path)
    whole = hash_pieces(entries, workers=2)
    assert [(p.path, p.sha256, p.size) for p in whole] == [
        (name, hashlib.sha256(data[name]).hexdigest(), sizes[name]) for name in sorted(data)
    ]
    shard = 1024 * 1024
    sharded = hash_pieces(entries, shard_size=shard, workers=2)
    expected = []
    for name in sorted(data):
        content = data[name]
        bounds = [(s, min(s + shard, len(content))) for s in range(0, len(content), shard)] or [(0, 0)]
        expected += [(name, s, e, hashlib.sha256(content[s:e]).hexdigest()) for s, e in bounds]
    assert [(p.path, p.start, p.end, p.sha256) for p in sharded] == expected


def test_progress_sees_every_byte_once(tmp_path: Path) -> None:
    from services.artifact_signer.hashing import hash_pieces

    make_model(tmp_path / "m")
    seen: list[int] = []
    entries = walk_tree(tmp_path / "m")
    hash_pieces(entries, shard_size=64 * 1024, workers=2, progress=seen.append)
    assert sum(seen) == sum(entry.size for entry in entries)


def test_a_file_that_grows_between_walk_and_shard_hashing_is_refused(tmp_path: Path) -> None:
    from services.artifact_signer.hashing import hash_pieces

    (tmp_path / "big.bin").write_bytes(os.urandom(600_000))
    [entry] = walk_tree(tmp_path)
    with (tmp_path / "big.bin").open("ab") as fh:
        fh.write(b"appended after the walk")
    with pytest.raises(InputError, match="grew"):
        hash_pieces([entry], shard_size=256 * 1024)


def test_many_small_files_hashed_by_helper_processes_match_hashlib(tmp_path: Path) -> None:
    from services.artifact_signer.hashing import HELPER_MIN_FILES, hash_pieces

    data = {f"d{i % 7}/f{i:04}.bin": os.urandom(i * 37 % 5000) for i in range(HELPER_MIN_FILES + 50)}
    for name, content in data.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(content)
    (tmp_path / "large.bin").write_bytes(big := os.urandom(600_000))
    data["large.bin"] = big
    pieces = hash_pieces(walk_tree(tmp_path), workers=2)
    assert [(p.path, p.sha256, p.size) for p in pieces] == [
        (name, hashlib.sha256(data[name]).hexdigest(), len(data[name])) for name in sorted(data)
    ]


def test_a_fifo_swapped_in_after_the_walk_is_refused_with_helper_processes(tmp_path: Path) -> None:
    from services.artifact_signer.hashing import HELPER_MIN_FILES, hash_pieces

    for i in range(HELPER_MIN_FILES + 10):
        (tmp_path / f"f{i:04}.bin").write_bytes(b"x" * i)
    entries = walk_tree(tmp_path)
    (tmp_path / "f0003.bin").unlink()
    os.mkfifo(tmp_path / "f0003.bin")
    with pytest.raises(UnsafePathError, match="not a regular file"):
        hash_pieces(entries, workers=2)
