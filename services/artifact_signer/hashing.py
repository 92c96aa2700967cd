"""Deterministic, streamed, parallel SHA-256 of a file or a folder.

The walk is what a manifest signs, so it must be the same on every machine and must never
follow the artifact out of itself: paths are sorted POSIX paths relative to the root, names are
UTF-8, and `..` components, symlinks (unless allowed, and never one that leaves the root) and
special files (FIFOs, devices, sockets) are refused with an `UnsafePathError`.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import itertools
import os
import re
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field

from shared.canonical import canonical_json
from shared.errors import InputError, MlwardenError
from shared.events import Frozen, Sha256Hex

from . import _hash_worker

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


_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")


def check_relative_path(path: str) -> str:
    """Return `path` if it is a safe relative POSIX path, else raise `UnsafePathError`.

    Safe means: not empty, not absolute, no empty, `.` or `..` segment, no backslash (a
    separator on Windows, so the same manifest would name another file there), no control
    character (they forge log lines), and encodable as UTF-8 (no undecodable byte names).
    """
    if not path or path.startswith("/"):
        raise UnsafePathError("not a relative path", path=path)
    if _UNSAFE_CHARS.search(path):
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
    """A regular file found by `walk_tree`: its manifest path, the file to open, its size then."""

    path: str
    source: Path
    size: int = 0


def walk_tree(
    root: str | os.PathLike[str],
    *,
    allow_symlinks: bool = False,
    ignore: Collection[str] = (),
) -> list[TreeEntry]:
    """List the regular files under `root` (or `root` itself), sorted by relative path.

    A single file is listed under its own name. Empty folders are not listed (a manifest
    covers file contents). A relative path in `ignore` prunes that file or that whole folder
    before it is looked at (so an ignored `.git` may hold anything). Raises `UnsafePathError` on
    anything the module docstring refuses and `InputError` if `root` does not exist.
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
        return [TreeEntry(check_relative_path(root_path.name), root_path, st.st_size)]
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError("special file (FIFO, device or socket)", path=str(root_path))

    real_root = root_path.resolve(strict=True)
    ignored = frozenset(ignore)
    entries: list[TreeEntry] = []
    pending: list[tuple[Path, str]] = [(root_path, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as it:
            for item in it:
                rel = check_relative_path(prefix + item.name)
                # Folders are pruned where they are met, so exact membership covers their contents.
                if rel in ignored:
                    continue
                item_st = item.stat(follow_symlinks=False)
                if stat.S_ISDIR(item_st.st_mode):
                    pending.append((Path(item.path), rel + "/"))
                elif stat.S_ISREG(item_st.st_mode):
                    entries.append(TreeEntry(rel, Path(item.path), item_st.st_size))
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
    return TreeEntry(rel, target, target.stat().st_size)


# --- the hashing engine ---------------------------------------------------------------------
#
# Work is split into tasks for a thread pool: one task per large file (or per shard when
# sharding), and one task per batch of small files, so that 2,000 tiny files cost a few dozen
# pool round trips rather than 2,000. hashlib releases the GIL while it digests more than
# 2 KiB and so do reads, so threads scale with cores once the page cache is warm. Each thread
# keeps one read buffer for its whole life (no allocation per file or per chunk).

_local = threading.local()


def _thread_buffer(size: int) -> memoryview:
    buffer: bytearray | None = getattr(_local, "buffer", None)
    if buffer is None or len(buffer) < size:
        buffer = bytearray(size)
        _local.buffer = buffer
    return memoryview(buffer)[:size]


def _buffer_size(size: int) -> int:
    # Sized to the file: a file that fits is read in one call (plus the call that sees EOF).
    return min(max(size + 1, MIN_BUFFER), MAX_BUFFER)


def _open_regular(path: Path, *, follow_symlinks: bool) -> tuple[int, os.stat_result]:
    # O_NONBLOCK: opening a FIFO for reading would otherwise block forever before fstat
    # could tell us it is not a regular file. O_NOFOLLOW closes the window in which a walked
    # file is swapped for a symlink before it is opened.
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = _hash_worker.open_noatime(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePathError("symlink refused", path=str(path)) from exc
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePathError("not a regular file", path=str(path))
    return fd, st


def open_regular(path: Path, *, follow_symlinks: bool) -> tuple[int, os.stat_result]:
    """Open a regular file for reading (never a FIFO or device; no symlink unless allowed);
    the caller closes the descriptor. `UnsafePathError` for anything else."""
    return _open_regular(path, follow_symlinks=follow_symlinks)


def _hash_regular_file(path: Path, *, follow_symlinks: bool) -> tuple[str, int]:
    fd, st = _open_regular(path, follow_symlinks=follow_symlinks)
    try:
        view = _thread_buffer(_buffer_size(st.st_size))
        digest = hashlib.sha256()
        size = 0
        # The size is what was actually hashed, not what stat said: a file that grows or
        # shrinks while it is read still gets a digest and size that agree with each other.
        # A short read of a regular file is its end: a file that fits takes one read call.
        while n := os.readv(fd, [view]):
            digest.update(view[:n])
            size += n
            if n < len(view):
                break
    finally:
        os.close(fd)
    return digest.hexdigest(), size


def _hash_shard(path: Path, start: int, end: int, last: bool) -> str:
    fd, _ = _open_regular(path, follow_symlinks=False)
    try:
        view = _thread_buffer(min(max(end - start, MIN_BUFFER), MAX_BUFFER))
        digest = hashlib.sha256()
        offset = start
        while offset < end:
            chunk = view[: min(len(view), end - offset)]
            n = os.preadv(fd, [chunk], offset)
            if n == 0:
                raise InputError(f"{path} shrank while it was hashed")
            digest.update(chunk[:n])
            offset += n
        # Shards come from the size at walk time: bytes appended since would be unsigned.
        if last and os.pread(fd, 1, end):
            raise InputError(f"{path} grew while it was hashed")
    finally:
        os.close(fd)
    return digest.hexdigest()


def hash_file(path: str | os.PathLike[str]) -> str:
    """Streamed SHA-256 (lower-case hex) of one regular file, in constant memory."""
    return _hash_regular_file(Path(path), follow_symlinks=True)[0]


@dataclass(frozen=True)
class Piece:
    """The digest of one file, or of the byte range [start, end) of it when sharding."""

    path: str
    start: int
    end: int
    sha256: str

    @property
    def size(self) -> int:
        """Bytes hashed."""
        return self.end - self.start


#: Progress callback: called from worker threads with the number of bytes just hashed.
Progress = Callable[[int], None]

#: Files smaller than this are hashed in batches (one pool task per batch).
SMALL_FILE = 256 * 1024
#: A batch of small files holds at most this many files or this many bytes.
BATCH_FILES = 64
BATCH_BYTES = 8 * 1024 * 1024


def _shards(size: int, shard_size: int) -> list[tuple[int, int]]:
    # OMS shard serialization (model_signing `_endpoints`): [0, s), [s, 2s), ..., [ks, size).
    # An empty file gets one empty shard so that adding an empty file is still detected
    # (the reference lists no resource for it).
    if size == 0:
        return [(0, 0)]
    return [(start, min(start + shard_size, size)) for start in range(0, size, shard_size)]


class _Helper:
    """One `_hash_worker` process: hashes batches of small files outside this interpreter's GIL."""

    def __init__(self) -> None:
        # -I -S: no site, no environment, no current folder on sys.path: the worker needs only
        # the standard library and starts in about 10 ms.
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _hash_worker.__file__, str(SMALL_FILE)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )

    def send(self, batch: Sequence[TreeEntry]) -> None:
        """Queue `batch` for hashing; `receive` returns its answers, in the order sent."""
        assert self.proc.stdin is not None
        payload = b"\0".join(os.fsencode(entry.source) for entry in batch)
        message = memoryview(len(payload).to_bytes(4, "big") + payload)
        while message:  # an unbuffered pipe may take a long message in parts
            message = message[self.proc.stdin.write(message) or 0 :]

    def receive(self, count: int) -> list[tuple[str, int] | None]:
        """Digest and size of each of the `count` files of the oldest batch sent, None if refused."""
        assert self.proc.stdout is not None
        want = _hash_worker.RECORD * count
        data = bytearray()
        while len(data) < want:
            chunk = self.proc.stdout.read(want - len(data))
            if not chunk:
                raise OSError("hash worker exited")
            data += chunk
        out: list[tuple[str, int] | None] = []
        for i in range(0, want, _hash_worker.RECORD):
            record = data[i : i + _hash_worker.RECORD]
            ok = record[0] == ord("K")
            out.append((record[1:33].hex(), int.from_bytes(record[33:], "big")) if ok else None)
        return out

    def close(self) -> None:
        """Ask the worker to exit and reap it (killed if it does not within a few seconds)."""
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.write(b"\0\0\0\0")
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()


#: Use helper processes only from this many small files on: below it, starting one costs
#: more than it saves.
HELPER_MIN_FILES = 256


@dataclass
class _Task:
    weight: int
    run: Callable[[], list[Piece]]
    #: Set for a batch of small files, which a helper process may take instead.
    batch: list[TreeEntry] | None = None


def hash_pieces(
    entries: Sequence[TreeEntry],
    *,
    shard_size: int | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> list[Piece]:
    """Digest `entries` (from `walk_tree`) in parallel; one `Piece` per file, or per shard.

    With `shard_size`, every file is split into shards of that many bytes (the last one
    shorter) hashed independently, so one large file keeps every core busy. Results are
    sorted by (path, start). `workers` defaults to the number of CPUs.
    """
    if shard_size is not None and shard_size <= 0:
        raise ValueError(f"shard size must be positive, got {shard_size}")
    n_workers = max(1, workers if workers is not None else (os.cpu_count() or 1))
    tasks: list[_Task] = []

    def whole(batch: list[TreeEntry]) -> Callable[[], list[Piece]]:
        def run() -> list[Piece]:
            out = []
            for entry in batch:
                sha256, size = _hash_regular_file(entry.source, follow_symlinks=False)
                out.append(Piece(entry.path, 0, size, sha256))
                if progress is not None:
                    progress(size)
            return out

        return run

    def shard(entry: TreeEntry, start: int, end: int, last: bool) -> Callable[[], list[Piece]]:
        def run() -> list[Piece]:
            piece = Piece(entry.path, start, end, _hash_shard(entry.source, start, end, last))
            if progress is not None:
                progress(end - start)
            return [piece]

        return run

    batch: list[TreeEntry] = []
    batch_bytes = 0
    n_small = 0
    for entry in entries:
        # A file that fits in one shard is hashed whole: the same bytes, the same digest.
        if shard_size is not None and entry.size > min(shard_size, SMALL_FILE):
            bounds = _shards(entry.size, shard_size)
            for i, (start, end) in enumerate(bounds):
                tasks.append(_Task(end - start, shard(entry, start, end, i == len(bounds) - 1)))
        elif entry.size >= SMALL_FILE:
            tasks.append(_Task(entry.size, whole([entry])))
        else:
            n_small += 1
            batch.append(entry)
            batch_bytes += entry.size
            if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                tasks.append(_Task(batch_bytes, whole(batch), batch))
                batch, batch_bytes = [], 0
    if batch:
        tasks.append(_Task(batch_bytes, whole(batch), batch))
    # Largest first: the pool ends together instead of waiting on one big file picked last.
    tasks.sort(key=lambda task: -task.weight)
    if n_workers == 1 or len(tasks) <= 1:
        pieces = [piece for task in tasks for piece in task.run()]
    else:
        n_helpers = n_workers - 1 if n_small >= HELPER_MIN_FILES else 0
        # Threads only for what the helpers leave: with small files alone, more threads than
        # cores would fight over the GIL; large files are hashed with the GIL released.
        only_batches = all(task.batch is not None for task in tasks)
        n_threads = max(1, n_workers - n_helpers) if only_batches else n_workers
        pieces = _run_tasks(tasks, n_threads, n_helpers, progress)
    pieces.sort(key=lambda piece: (piece.path, piece.start))
    return pieces


def _run_tasks(tasks: list[_Task], n_threads: int, n_helpers: int, progress: Progress | None) -> list[Piece]:
    """Run `tasks` on `n_threads` threads (largest first) and `n_helpers` helper processes.

    Helpers take batches of small files from the small end of the queue while the threads
    start on the large files (hashlib releases the GIL on them), so in a folder of a few large
    files and many small ones both kinds of work run at once. An error is raised only after
    every task ran, and it is the one of the first failing task in queue order, as a
    sequential run would raise it.
    """
    queue = collections.deque(enumerate(tasks))
    lock = threading.Lock()
    results: dict[int, list[Piece]] = {}
    errors: dict[int, BaseException] = {}

    def take(small_end: bool) -> tuple[int, _Task] | None:
        with lock:
            if not queue:
                return None
            if small_end:
                return queue.pop() if queue[-1][1].batch is not None else None
            return queue.popleft()

    def run_one(index: int, task: _Task) -> None:
        try:
            results[index] = task.run()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller, in task order
            errors[index] = exc

    def run_in_thread() -> None:
        while (item := take(small_end=False)) is not None:
            run_one(*item)

    def run_in_helper() -> None:
        try:
            helper = _Helper()
        except OSError:
            return  # no interpreter to start (a frozen build): the threads do all the work
        # Two batches in flight: the worker hashes the next one while this thread decodes.
        in_flight: collections.deque[tuple[int, _Task]] = collections.deque()
        try:
            while True:
                while len(in_flight) < 2 and (item := take(small_end=True)) is not None:
                    assert item[1].batch is not None
                    helper.send(item[1].batch)
                    in_flight.append(item)
                if not in_flight:
                    return
                index, task = in_flight.popleft()
                assert task.batch is not None
                answers = helper.receive(len(task.batch))
                _finish_batch(index, task.batch, answers)
        except OSError:
            # The worker died or could not be fed: this thread hashes its batches itself.
            for index, task in in_flight:
                run_one(index, task)
            run_in_thread()
        finally:
            helper.close()

    def _finish_batch(index: int, batch: list[TreeEntry], answers: list[tuple[str, int] | None]) -> None:
        pieces = []
        try:
            for entry, answer in zip(batch, answers, strict=True):
                # Refused by the worker: hashing it here raises the right error (or, if the
                # file became readable meanwhile, hashes it).
                sha256, size = answer or _hash_regular_file(entry.source, follow_symlinks=False)
                pieces.append(Piece(entry.path, 0, size, sha256))
                if progress is not None:
                    progress(size)
            results[index] = pieces
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller, in task order
            errors[index] = exc

    with ThreadPoolExecutor(max_workers=n_threads + n_helpers, thread_name_prefix="mlw-hash") as pool:
        futures = [pool.submit(run_in_helper) for _ in range(n_helpers)]
        futures += [pool.submit(run_in_thread) for _ in range(n_threads)]
        for future in futures:
            future.result()
    if errors:
        raise errors[min(errors)]
    return [piece for index in sorted(results) for piece in results[index]]


def hash_tree(
    root: str | os.PathLike[str],
    *,
    workers: int | None = None,
    allow_symlinks: bool = False,
    progress: Progress | None = None,
) -> list[FileDigest]:
    """Digest every file under `root` (see `walk_tree`), in parallel threads, sorted by path.

    `workers` defaults to the number of CPUs: SHA-256 is CPU-bound once the page cache is warm.
    """
    entries = walk_tree(root, allow_symlinks=allow_symlinks)
    return [
        FileDigest(path=piece.path, sha256=piece.sha256, size=piece.size)
        for piece in hash_pieces(entries, workers=workers, progress=progress)
    ]


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
