"""Helper process that hashes batches of small files for `hashing.hash_pieces`.

Why a process: for thousands of ~30 KB files the per-file Python work (open, fstat, read,
close, hexdigest) holds the GIL for about as long as SHA-256 runs without it, so threads do
not scale on them (measured for issue 5: 2 threads were no faster than 1 on 2,000 small
files). A second interpreter does. It is started as `python -I -S _hash_worker.py` and
imports only the standard library, so it is ready in about 10 ms, well before the parent
has hashed its first batches.

Protocol, on stdin/stdout (binary): the parent sends a batch as a 4-byte big-endian length
followed by the NUL-separated file paths (NUL cannot occur in a path); length 0 ends the
worker. For every path, in order, the worker answers one record of `RECORD` bytes: `b"K"`,
the raw SHA-256 and the size hashed (8 bytes big-endian), or `b"E"` and zeros when the file
could not be hashed safely (the parent then hashes that file itself, which raises the error
the walk's rules call for, so refusals are decided in one place).
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import sys
from typing import BinaryIO

#: One answer per file: status, digest, size.
RECORD = 1 + 32 + 8
_HEADER = struct.Struct(">I")
_SIZE = struct.Struct(">Q")
_FAILED = b"E" + bytes(32 + 8)

# O_NONBLOCK: a FIFO swapped in after the walk must not block the open. O_NOFOLLOW: nor may a
# symlink be followed. O_NOATIME saves an inode update per file where the kernel permits it.
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
_NOATIME = getattr(os, "O_NOATIME", 0)


def open_noatime(path: str | bytes | os.PathLike[str], flags: int) -> int:
    """`os.open` with O_NOATIME when the kernel allows it (file owner or CAP_FOWNER), else without."""
    if _NOATIME:
        try:
            return os.open(path, flags | _NOATIME)
        except PermissionError:
            pass
    return os.open(path, flags)


def hash_regular(path: bytes, view: memoryview) -> tuple[bytes, int] | None:
    """SHA-256 and size of the regular file at `path`, read through `view`; None if refused."""
    try:
        fd = open_noatime(path, _FLAGS)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        # A short read of a regular file is its end: a file smaller than the buffer takes one
        # read. The size is what was hashed, as in `hashing._hash_regular_file`.
        n = os.readv(fd, [view])
        digest = hashlib.sha256(view[:n])
        size = n
        while n == len(view):
            n = os.readv(fd, [view])
            digest.update(view[:n])
            size += n
        return digest.digest(), size
    except OSError:
        return None
    finally:
        os.close(fd)


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError("parent closed the pipe")
        data += chunk
    return bytes(data)


def serve(stdin: BinaryIO, stdout: BinaryIO, buffer_size: int) -> None:
    """Answer batches from `stdin` on `stdout` until a zero-length batch or end of input."""
    view = memoryview(bytearray(buffer_size))
    while True:
        try:
            (length,) = _HEADER.unpack(_read_exact(stdin, _HEADER.size))
        except EOFError:
            return
        if length == 0:
            return
        out = bytearray()
        for path in _read_exact(stdin, length).split(b"\0"):
            result = hash_regular(path, view)
            out += _FAILED if result is None else b"K" + result[0] + _SIZE.pack(result[1])
        stdout.write(out)
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer, int(sys.argv[1]))
