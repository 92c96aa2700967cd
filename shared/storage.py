"""Reading what an event refers to: an object in a JetStream object store, or a local file
confined to configured roots (an event must not make a service read `/etc/shadow`)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path

from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectMeta
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from shared.errors import InputError
from shared.events import ObjectRef


class UnreadableReference(InputError):
    """A reference that cannot be read: missing, outside the allowed roots, or too large."""

    def __init__(self, reason: str, *, ref: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ref = ref
        self.code = code


#: Object meta header with the sha256 of the content an object stands for (the plaintext, when
#: the stored bytes are an encrypted envelope). In the `map[string][]string` shape Go clients use.
CONTENT_SHA256_HEADER = "Mlw-Content-Sha256"


class ObjectExists(InputError):
    """A name that already holds other content: stored objects are never overwritten."""

    def __init__(self, bucket: str, name: str) -> None:
        super().__init__(f"{bucket}/{name} is already stored with other content; publish a new version")
        self.bucket = bucket
        self.name = name


def _holds(info: ObjectInfo, data: bytes | BufferedIOBase, content_sha256: str) -> bool:
    declared = (info.headers or {}).get(CONTENT_SHA256_HEADER)
    if declared is not None:
        return content_sha256 in (declared if isinstance(declared, list) else [declared])
    if not isinstance(data, bytes):
        return False  # a stream is not read twice: an object without the header is other content
    # An object stored before the header existed: compare what is stored.
    digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
    return info.digest == digest


async def put_once(
    store: ObjectStore, bucket: str, name: str, data: bytes | BufferedIOBase, *, content_sha256: str
) -> bool:
    """Store `data` (bytes, or a binary file read to its end) under `name` unless the name already
    holds the same content; True when it wrote.

    Why not a plain `put`: replacing an object makes nats-py purge the old object's chunks, and a
    JetStream purge right cannot be limited to one object (the filter is in the payload), so
    producers hold none (issue 8: one producer purged every dataset). A retried upload of the same
    content is a no-op; other content under an existing name raises `ObjectExists`. Two uploads
    racing for one new name can still collide: the loser's put fails at the purge step.
    """
    try:
        info: ObjectInfo | None = await store.get_info(name, show_deleted=True)
    except ObjectNotFoundError:
        info = None
    if info is not None and not info.deleted:
        if _holds(info, data, content_sha256):
            return False
        raise ObjectExists(bucket, name)
    await store.put(name, data, meta=ObjectMeta(name=name, headers={CONTENT_SHA256_HEADER: [content_sha256]}))
    return True


@dataclass(frozen=True)
class FileRoots:
    """Where file references may point: under one of `allowed`, and never into `protected`.

    `protected` holds what a reference must never read, even when an allowed root contains it:
    the data dir's keys, actors' keys, NATS store, audit database and policy (issue 8: an upload
    referencing `keys/data-guard.pem` had the private key parsed and quoted into its verdict).
    `only_within` narrows protected folders to an exception: `(data_dir, files_dir)` means
    "nothing in the data dir except its files folder".
    """

    allowed: tuple[Path, ...]
    """resolved folders references may point into."""
    protected: tuple[Path, ...] = ()
    """resolved files and folders no reference may point into (or at a folder holding them)."""
    only_within: tuple[tuple[Path, Path], ...] = ()
    """(folder, exception): inside `folder`, only paths under `exception` may be read."""


def _under(path: Path, folder: Path) -> bool:
    return path == folder or path.is_relative_to(folder)


def _protected_name(resolved: Path, protected: Path) -> bool:
    # SQLite keeps `audit.db-wal`, `-shm` and `-journal` beside the database: same secrets.
    return resolved.parent == protected.parent and resolved.name.startswith(protected.name + "-")


def confined_path(ref: ObjectRef, roots: FileRoots) -> Path:
    """The resolved local path of a file reference, refused unless it lies under one of the
    allowed roots and neither in nor above a protected path (symlinks are resolved first)."""
    if ref.path is None:
        raise UnreadableReference("file reference without a path", ref=ref.describe(), code="bad_reference")
    raw = Path(ref.path)
    if ".." in raw.parts:
        raise UnreadableReference("'..' is not allowed in a file reference", ref=ref.path, code="path_traversal")
    resolved = raw.resolve()
    # (1) protected paths first, whatever the roots say: a root may well contain the data dir.
    for protected in roots.protected:
        if _under(resolved, protected) or _under(protected, resolved) or _protected_name(resolved, protected):
            raise UnreadableReference(
                f"{ref.path} points into this service's keys, database or policy; never readable",
                ref=ref.path,
                code="path_protected",
            )
    for folder, exception in roots.only_within:
        if _under(folder, resolved) or (_under(resolved, folder) and not _under(resolved, exception)):
            raise UnreadableReference(
                f"{ref.path} is in the data dir outside its files folder; never readable",
                ref=ref.path,
                code="path_protected",
            )
    # (2) then the allow-list.
    if not any(_under(resolved, root) for root in roots.allowed):
        raise UnreadableReference(
            f"{ref.path} is outside the folders this service may read", ref=ref.path, code="path_outside_roots"
        )
    if not resolved.exists():
        raise UnreadableReference(f"{ref.path} does not exist", ref=ref.path, code="not_found")
    return resolved


async def read_bytes(js: JetStreamContext, ref: ObjectRef, *, max_bytes: int, roots: FileRoots) -> bytes:
    """The bytes a reference names, refusing anything over `max_bytes` before reading it."""
    if ref.kind == "object":
        if not ref.bucket or not ref.key:
            raise UnreadableReference("object reference needs bucket and key", ref=ref.describe(), code="bad_reference")
        try:
            store = await js.object_store(ref.bucket)
            info = await store.get_info(ref.key)
        except (ObjectNotFoundError, BucketNotFoundError, NotFoundError) as exc:
            raise UnreadableReference(f"{ref.describe()} not found", ref=ref.describe(), code="not_found") from exc
        if (info.size or 0) > max_bytes:
            raise UnreadableReference(
                f"{ref.describe()} is {info.size} bytes, over the {max_bytes} limit",
                ref=ref.describe(),
                code="too_large",
            )
        result = await store.get(ref.key)
        return bytes(result.data or b"")
    path = confined_path(ref, roots)
    if not path.is_file():
        raise UnreadableReference(f"{ref.path} is not a regular file", ref=str(ref.path), code="not_a_file")
    size = path.stat().st_size
    if size > max_bytes:
        raise UnreadableReference(
            f"{ref.path} is {size} bytes, over the {max_bytes} limit", ref=str(ref.path), code="too_large"
        )
    return path.read_bytes()
