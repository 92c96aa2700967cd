"""Deterministic, streamed, parallel SHA-256 of a file or a folder.

The walk is what a manifest signs, so it must be the same on every machine and must never
follow the artifact out of itself: paths are sorted POSIX paths relative to the root, names are
UTF-8, and `..` components, symlinks (unless allowed, and never one that leaves the root) and
special files (FIFOs, devices, sockets) are refused with an `UnsafePathError`.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from shared.canonical import canonical_json
from shared.errors import InputError, MlwardenError
from shared.events import Frozen, Sha256Hex

#: Read buffers are sized to the file, between these bounds: one read for small files, and a
#: bounded buffer (constant memory) for large ones. hashlib releases the GIL for updates larger
#: than 2 KiB, so threads hash in parallel.
MIN_BUFFER = 64 * 1024
MAX_BUFFER = 8 * 1024 * 1024

#: Version tag inside the root digest's canonical listing, so a later listing format (issue 5's
#: OMS bundles) can never collide with this one.
ROOT_DIGEST_VERSION = "mlwarden.root-digest/v1"


class UnsafePathError(MlwardenError, ValueError):
    """A path the walk refuses: `..`, a symlink, a special file, or a name that is not UTF-8."""

    def __init__(self, reason: str, *, path: str) -> None:
        super().__init__(f"{reason}: {path}")
        self.reason = reason
        self.path = path


def check_relative_path(path: str) -> str:
    """Return `path` if it is a safe relative POSIX path, else raise `UnsafePathError`.

    Safe means: not empty, not absolute, no empty, `.` or `..` segment, no backslash (a
    separator on Windows, so the same manifest would name another file there), no control
    character (they forge log lines), and encodable as UTF-8 (no undecodable byte names).
    """
    if not path or path.startswith("/"):
        raise UnsafePathError("not a relative path", path=path)
    if "\\" in path or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise UnsafePathError("backslash or control character in path", path=repr(path))
    try:
        path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnsafePathError("name is not valid UTF-8", path=repr(path)) from exc
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise UnsafePathError("empty, '.' or '..' path component", path=path)
    return path


RelativePath = Annotated[
    str,
    AfterValidator(check_relative_path),
    Field(description="POSIX path relative to the artifact root"),
]


class FileDigest(Frozen):
    """One file of an artifact: where it is, its digest and its size."""

    path: RelativePath
    sha256: Sha256Hex = Field(description="SHA-256 of the file's bytes")
    size: int = Field(ge=0, description="bytes hashed")


@dataclass(frozen=True)
class TreeEntry:
    """A regular file found by `walk_tree`: its manifest path and the file to open."""

    path: str
    source: Path


def walk_tree(root: str | os.PathLike[str], *, allow_symlinks: bool = False) -> list[TreeEntry]:
    """List the regular files under `root` (or `root` itself), sorted by relative path.

    A single file is listed under its own name. Empty folders are not listed (a manifest
    covers file contents). Raises `UnsafePathError` on anything the module docstring refuses
    and `InputError` if `root` does not exist.
    """
    root_path = Path(root)
    if ".." in root_path.parts:
        raise UnsafePathError("'..' component in artifact path", path=str(root_path))
    try:
        st = root_path.lstat()
    except FileNotFoundError as exc:
        raise InputError(f"no such file or folder: {root_path}") from exc
    if stat.S_ISLNK(st.st_mode):
        if not allow_symlinks:
            raise UnsafePathError("artifact root is a symlink", path=str(root_path))
        root_path = root_path.resolve(strict=True)
        st = root_path.stat()
    if stat.S_ISREG(st.st_mode):
        return [TreeEntry(check_relative_path(root_path.name), root_path)]
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError("special file (FIFO, device or socket)", path=str(root_path))

    real_root = root_path.resolve(strict=True)
    entries: list[TreeEntry] = []
    pending: list[tuple[Path, str]] = [(root_path, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as it:
            for item in it:
                rel = check_relative_path(prefix + item.name)
                item_st = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(item_st.st_mode):
                    pending.append((Path(item.path), rel + "/"))
                elif stat.S_ISREG(item_st.st_mode):
                    entries.append(TreeEntry(rel, Path(item.path)))
                elif stat.S_ISLNK(item_st.st_mode):
                    entries.append(_symlink_entry(Path(item.path), rel, real_root, allow_symlinks))
                else:
                    raise UnsafePathError("special file (FIFO, device or socket)", path=rel)
    # Python orders str by code point, which is also UTF-8 byte order: any language can
    # reproduce this order by sorting the UTF-8 bytes.
    entries.sort(key=lambda entry: entry.path)
    return entries


def _symlink_entry(link: Path, rel: str, real_root: Path, allow: bool) -> TreeEntry:
    if not allow:
        raise UnsafePathError("symlink refused", path=rel)
    try:
        target = link.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # dangling link or a loop
        raise UnsafePathError("symlink cannot be resolved", path=rel) from exc
    if not target.is_relative_to(real_root):
        raise UnsafePathError("symlink leaves the artifact root", path=rel)
    if not target.is_file():
        # Following folder links would allow cycles and double counting; a model folder
        # that needs them should be materialised before signing.
        raise UnsafePathError("symlink to something other than a regular file", path=rel)
    return TreeEntry(rel, target)


def hash_file(path: str | os.PathLike[str]) -> str:
    """Streamed SHA-256 (lower-case hex) of one regular file, in constant memory."""
    return _hash_regular_file(Path(path), follow_symlinks=True)[0]


def _hash_regular_file(path: Path, *, follow_symlinks: bool) -> tuple[str, int]:
    # O_NONBLOCK: opening a FIFO for reading would otherwise block forever before fstat
    # could tell us it is not a regular file. O_NOFOLLOW closes the window in which a walked
    # file is swapped for a symlink before it is opened.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError("symlink refused", path=str(path)) from exc
        raise
    with os.fdopen(fd, "rb", buffering=0) as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePathError("not a regular file", path=str(path))
        buffer = bytearray(min(max(st.st_size, MIN_BUFFER), MAX_BUFFER))
        view = memoryview(buffer)
        digest = hashlib.sha256()
        size = 0
        # The size is what was actually hashed, not what stat said: a file that grows or
        # shrinks while it is read still gets a digest and size that agree with each other.
        while n := fh.readinto(view):
            digest.update(view[:n])
            size += n
    return digest.hexdigest(), size


def _hash_entry(entry: TreeEntry) -> FileDigest:
    sha256, size = _hash_regular_file(entry.source, follow_symlinks=False)
    return FileDigest(path=entry.path, sha256=sha256, size=size)


def hash_tree(
    root: str | os.PathLike[str], *, workers: int | None = None, allow_symlinks: bool = False
) -> list[FileDigest]:
    """Digest every file under `root` (see `walk_tree`), in parallel threads, sorted by path.

    `workers` defaults to the number of CPUs: SHA-256 is CPU-bound once the page cache is warm.
    """
    entries = walk_tree(root, allow_symlinks=allow_symlinks)
    n_workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    if n_workers == 1 or len(entries) <= 1:
        return [_hash_entry(entry) for entry in entries]
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="mlw-hash") as pool:
        return list(pool.map(_hash_entry, entries))


def root_digest(files: Sequence[FileDigest]) -> str:
    """SHA-256 over the canonical JSON listing of `files` (sorted by path; paths unique).

    The listing binds every path to its digest and size, so renaming, adding or removing a
    file changes the root digest as surely as changing a byte does.
    """
    ordered = sorted(files, key=lambda item: item.path)
    for before, after in itertools.pairwise(ordered):
        if before.path == after.path:
            raise ValueError(f"duplicate path in file list: {before.path}")
    listing = {
        "version": ROOT_DIGEST_VERSION,
        "files": [[item.path, item.sha256, item.size] for item in ordered],
    }
    return hashlib.sha256(canonical_json(listing)).hexdigest()
