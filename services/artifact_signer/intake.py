"""Read a model once: every file's digest and its scan come from the same bytes (issue 12).

Hashing a folder and then scanning it reads every file twice, and a file renamed in between
(19 ms after the hasher closed it was enough) had its hostile bytes signed while benign ones
were scanned. Here each file is opened once (no symlink followed, regular files only) and read
once; the bytes read are hashed as they arrive and kept for the scanner:

- up to `IN_MEMORY_BYTES`, in memory;
- beyond that, in a private anonymous temporary file (`tempfile.TemporaryFile`: unlinked, so no
  other process can open it by name) that the scanner then memory-maps. Writing the copy costs a
  sequential write of large files; it is the price of scanning exactly what was hashed without
  holding a 10 GB weight file in memory.

Nothing after the read goes back to the artifact's path. The manifest is the OMS `files`
serialization `oms.hash_model` produces for the same tree (same resources, same root digest).
Ignored paths (`.git`, ...) are scanned but, as in `hash_model`, not signed.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shared.errors import InputError
from shared.events import Decision

from .hashing import TreeEntry, open_regular, walk_tree
from .lockfile import decide
from .oms import ModelManifest, Resource, Serialization, model_name, sort_resources
from .scanner import FileScan, ScanReport, scan_buffer

#: Files up to this size are kept in memory between their read and their scan.
IN_MEMORY_BYTES = 64 * 1024 * 1024
#: Read size for the part of a large file that goes to the private copy.
CHUNK_BYTES = 8 * 1024 * 1024


class ArtifactTooLarge(InputError):
    """The artifact holds more bytes than the limit; raised while reading, before the rest is read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"artifact is over the {limit}-byte limit")
        self.limit = limit


@dataclass(frozen=True)
class Inspection:
    """What one read of an artifact gave: the manifest to sign and the scan of the same bytes."""

    manifest: ModelManifest
    scan: ScanReport


class _Budget:
    """Bytes read so far across every worker, refused past `limit`."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.used = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            self.used += n
            if self.limit is not None and self.used > self.limit:
                raise ArtifactTooLarge(self.limit)


@contextmanager
def _read_once(entry: TreeEntry, budget: _Budget) -> Iterator[tuple[bytes | mmap.mmap, str]]:
    """Yield the file's bytes (in memory or a mapping of a private copy) and their SHA-256."""
    fd, st = open_regular(entry.source, follow_symlinks=False)
    spill = None
    try:
        digest = hashlib.sha256()
        # One read for a file that fits (the +1 sees EOF); a file that grew is read on.
        first = os.read(fd, min(st.st_size, IN_MEMORY_BYTES) + 1)
        budget.take(len(first))
        digest.update(first)
        chunks = [first]
        held = len(first)
        while chunk := os.read(fd, CHUNK_BYTES):
            budget.take(len(chunk))
            digest.update(chunk)
            if spill is None and held + len(chunk) <= IN_MEMORY_BYTES:
                chunks.append(chunk)
                held += len(chunk)
                continue
            if spill is None:
                spill = tempfile.TemporaryFile(prefix="mlw-intake-")  # noqa: SIM115 - closed below
                spill.writelines(chunks)
                chunks = []
            spill.write(chunk)
    finally:
        # Closed before the scan on purpose: nothing below reads the artifact's file again.
        os.close(fd)
    try:
        if spill is None:
            yield (chunks[0] if len(chunks) == 1 else b"".join(chunks)), digest.hexdigest()
            return
        spill.flush()
        with mmap.mmap(spill.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            yield mapped, digest.hexdigest()
    finally:
        if spill is not None:
            spill.close()


def _inspect_file(entry: TreeEntry, budget: _Budget, after_read: Callable[[str], None] | None) -> FileScan:
    with _read_once(entry, budget) as (data, sha256):
        if after_read is not None:
            after_read(entry.path)
        return scan_buffer(data, entry.path, sha256=sha256)


def _ignored(path: str, ignore_paths: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in ignore_paths)


def inspect_model(
    path: str | os.PathLike[str],
    serialization: Serialization | None = None,
    *,
    max_bytes: int | None = None,
    workers: int | None = None,
    after_read: Callable[[str], None] | None = None,
) -> Inspection:
    """Read every file under `path` once; return the OMS manifest and the scan of those bytes.

    Only the `files` serialization (what artifact-signer signs). `max_bytes` bounds the bytes
    read (`ArtifactTooLarge`, raised as soon as it is passed). `after_read`, called with each
    file's path once its bytes are held and before they are scanned, is a seam for tests. Raises `UnsafePathError` /
    `InputError` from the walk.
    """
    ser = serialization or Serialization()
    if ser.method != "files":
        raise ValueError("inspect_model signs the 'files' serialization only")
    root = Path(path)
    single = not root.is_dir()
    # The whole tree is walked and scanned (a hostile pickle in `.git` still fails the build);
    # ignored paths are left out of the manifest only, as `hash_model` leaves them out.
    entries = walk_tree(root, allow_symlinks=ser.allow_symlinks)
    budget = _Budget(max_bytes)

    def one(entry: TreeEntry) -> FileScan:
        return _inspect_file(entry, budget, after_read)

    n_workers = max(1, min(workers or os.cpu_count() or 1, len(entries)))
    if n_workers == 1:
        scans = [one(entry) for entry in entries]
    else:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="mlw-intake") as pool:
            scans = list(pool.map(one, entries))
    signed = [s for s in scans if not _ignored(s.path, ser.ignore_paths)]
    resources = sort_resources(Resource("." if single else s.path, s.sha256 or "", "sha256") for s in signed)
    sizes = {("." if single else s.path): s.size for s in signed}
    decision = decide([finding for scan in scans for finding in scan.findings])
    report = ScanReport(path=os.fspath(path), safe=decision is not Decision.FAIL, decision=decision, files=scans)
    return Inspection(ModelManifest(model_name(root), ser, tuple(resources), sizes), report)
