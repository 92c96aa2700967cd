"""Read back a model uploaded to `mlw-uploads` (`shared.artifacts`) into a private folder.

The index is the uploader's claim: every relpath must be a safe relative path (no `..`, no
absolute path, no backslash or control character, no file that is also a folder), sizes are
bounded before anything is downloaded, each object's stored size must be the indexed size, and
the object store's own digest is checked as the chunks arrive. The caller then hashes and scans
the private copy once (`intake.inspect_model`) and compares the digests with the index
(`check_against_index`): a stored object that differs from what was announced fails the build.
"""

from __future__ import annotations

from pathlib import Path

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, DigestMismatchError, NotFoundError, ObjectNotFoundError
from pydantic import ValidationError

from shared.artifacts import INDEX_FORMAT, INDEX_NAME, ModelIndex, file_key
from shared.events import ObjectRef
from shared.storage import FileRoots, UnreadableReference, read_bytes
from shared.topology import UPLOADS_BUCKET

from .hashing import UnsafePathError, check_relative_path
from .scanner import ScanReport

#: Largest index object read (a million files' entries stay far below).
MAX_INDEX_BYTES = 16 * 1024 * 1024
#: Most files an uploaded model may have.
MAX_FILES = 100_000


def _refuse(reason: str, ref: ObjectRef, code: str) -> UnreadableReference:
    return UnreadableReference(reason, ref=ref.describe(), code=code)


def check_index(index: ModelIndex, ref: ObjectRef, *, max_bytes: int) -> None:
    """Refuse an index with an unsafe, duplicated or conflicting path, too many files or bytes."""
    if index.format != INDEX_FORMAT:
        raise _refuse(f"unknown model index format {index.format!r}", ref, "bad_index")
    if len(index.files) > MAX_FILES:
        raise _refuse(f"{len(index.files)} files, over the {MAX_FILES} limit", ref, "too_large")
    total = sum(f.size for f in index.files)
    if total > max_bytes:
        raise _refuse(f"artifact is {total} bytes, over the {max_bytes} limit", ref, "too_large")
    paths = set()
    for f in index.files:
        try:
            check_relative_path(f.path)
        except UnsafePathError as exc:
            raise _refuse(f"unsafe path in the model index: {exc}", ref, "path_traversal") from exc
        if f.path in paths:
            raise _refuse(f"{f.path} is listed twice in the model index", ref, "bad_index")
        paths.add(f.path)
    folders = {"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)}
    if clash := sorted(paths & folders):
        raise _refuse(f"{clash[0]} is both a file and a folder in the model index", ref, "bad_index")


async def fetch_model(js: JetStreamContext, ref: ObjectRef, dest: Path, *, max_bytes: int) -> ModelIndex:
    """Download the model the index `ref` names into the empty private folder `dest`."""
    if ref.bucket != UPLOADS_BUCKET or not ref.key or not ref.key.endswith("/" + INDEX_NAME):
        raise _refuse(f"a model upload is an {INDEX_NAME} object in {UPLOADS_BUCKET}", ref, "bad_reference")
    body = await read_bytes(js, ref, max_bytes=MAX_INDEX_BYTES, roots=FileRoots(allowed=()))
    try:
        index = ModelIndex.model_validate_json(body)
    except ValidationError as exc:
        raise _refuse(f"the model index is malformed: {exc.error_count()} errors", ref, "bad_index") from exc
    check_index(index, ref, max_bytes=max_bytes)
    store = await js.object_store(UPLOADS_BUCKET)
    for f in index.files:
        key = file_key(ref.key, f.path)
        try:
            info = await store.get_info(key)
            # Checked before downloading: the limits above were on the indexed sizes.
            if info.size != f.size:
                raise _refuse(f"{f.path}: stored {info.size} bytes, indexed {f.size}", ref, "digest_mismatch")
            target = dest / f.path
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("xb") as fh:
                await store.get(key, writeinto=fh)
        except (ObjectNotFoundError, NotFoundError, BucketNotFoundError) as exc:
            raise _refuse(f"{f.path} is in the index but not stored", ref, "not_found") from exc
        except DigestMismatchError as exc:
            raise _refuse(f"{f.path}: stored chunks do not match the object's digest", ref, "digest_mismatch") from exc
    return index


def check_against_index(index: ModelIndex, scan: ScanReport, ref: ObjectRef) -> None:
    """Every file read back has the indexed digest, and nothing is missing or extra."""
    indexed = {f.path: f.sha256 for f in index.files}
    scanned = {f.path: f.sha256 for f in scan.files}
    if differ := sorted(p for p in indexed.keys() | scanned.keys() if indexed.get(p) != scanned.get(p)):
        raise _refuse(f"stored objects differ from the model index: {', '.join(differ[:5])}", ref, "digest_mismatch")
