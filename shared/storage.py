"""Reading what an event refers to: an object in a JetStream object store, or a local file
confined to configured roots (an event must not make a service read `/etc/shadow`)."""

from __future__ import annotations

from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from shared.errors import InputError
from shared.events import ObjectRef


class UnreadableReference(InputError):
    """A reference that cannot be read: missing, outside the allowed roots, or too large."""

    def __init__(self, reason: str, *, ref: str, code: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.ref = ref
        self.code = code


def confined_path(ref: ObjectRef, roots: list[Path]) -> Path:
    """The resolved local path of a file reference, refused unless it lies under one of `roots`."""
    if ref.path is None:
        raise UnreadableReference("file reference without a path", ref=ref.describe(), code="bad_reference")
    raw = Path(ref.path)
    if ".." in raw.parts:
        raise UnreadableReference("'..' is not allowed in a file reference", ref=ref.path, code="path_traversal")
    resolved = raw.resolve()
    if not any(resolved == root or resolved.is_relative_to(root) for root in roots):
        raise UnreadableReference(
            f"{ref.path} is outside the folders this service may read", ref=ref.path, code="path_outside_roots"
        )
    if not resolved.exists():
        raise UnreadableReference(f"{ref.path} does not exist", ref=ref.path, code="not_found")
    return resolved


async def read_bytes(js: JetStreamContext, ref: ObjectRef, *, max_bytes: int, roots: list[Path]) -> bytes:
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
