"""A model folder in the `mlw-uploads` object store, so a scaled deployment needs no shared
volume (issue 12): one object per file plus a small index.

Layout, for model `<name>` version `<version>` (`<prefix>` = `models/<name>/<version>`):

- `<prefix>/files/<relpath>`: each file's bytes (the object store chunks them);
- `<prefix>/lock/<file name>`: the lock file, when the build names one;
- `<prefix>/index.json`: `ModelIndex`, every relpath with its sha256 and size. `ModelBuilt.artifact`
  is `ObjectRef(kind="object", bucket="mlw-uploads", key="<prefix>/index.json")`.

Objects are stored once (`storage.put_once`: producers hold no purge right); a retried upload of
the same folder is a no-op. The index is a claim, not trusted: artifact-signer refuses unsafe
relpaths, bounds sizes, re-hashes every object and compares it with the index. Uploads live in
their own bucket: producers may add objects there, while `mlw-artifacts` (the signed bundles)
stays writable by artifact-signer alone, so no producer can touch a bundle's metadata.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from nats.js import JetStreamContext
from pydantic import Field

from shared.events import Frozen, ObjectRef, Sha256Hex
from shared.storage import put_once
from shared.topology import UPLOADS_BUCKET

INDEX_FORMAT = "mlwarden.model-upload/v1"
INDEX_NAME = "index.json"


class IndexedFile(Frozen):
    """One file of an uploaded model."""

    path: str = Field(min_length=1, max_length=4096, description="POSIX path relative to the model folder")
    sha256: Sha256Hex = Field(description="SHA-256 of the file's bytes")
    size: int = Field(ge=0, description="bytes")


class ModelIndex(Frozen):
    """The index object of an uploaded model: what the uploader says it stored."""

    format: str = Field(default=INDEX_FORMAT, description="layout version")
    files: list[IndexedFile] = Field(description="every file, sorted by path")


def model_prefix(model: str, version: str) -> str:
    """Where the objects of a model version live in `mlw-uploads`."""
    return f"models/{model}/{version}"


def index_key(model: str, version: str) -> str:
    """The index object's name."""
    return f"{model_prefix(model, version)}/{INDEX_NAME}"


def file_key(index: str, relpath: str) -> str:
    """The object holding `relpath`, beside the index object named `index`."""
    return f"{index.removesuffix(INDEX_NAME)}files/{relpath}"


async def upload_model(js: JetStreamContext, folder: Path, *, model: str, version: str) -> ObjectRef:
    """Store every regular file under `folder` (or the file `folder`) and the index; return the
    index's reference. Symlinks and special files are not followed: the signer would refuse them."""
    store = await js.object_store(UPLOADS_BUCKET)
    index = index_key(model, version)
    root = folder if folder.is_dir() else folder.parent
    paths = sorted(
        p for p in ([folder] if folder.is_file() else folder.rglob("*")) if p.is_file() and not p.is_symlink()
    )
    files: list[IndexedFile] = []
    for path in paths:
        relpath = path.relative_to(root).as_posix()
        with path.open("rb") as fh:
            sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
            size = fh.tell()
            fh.seek(0)
            await put_once(store, UPLOADS_BUCKET, file_key(index, relpath), fh, content_sha256=sha256)
        files.append(IndexedFile(path=relpath, sha256=sha256, size=size))
    body = ModelIndex(files=files).model_dump_json().encode()
    await put_once(store, UPLOADS_BUCKET, index, body, content_sha256=hashlib.sha256(body).hexdigest())
    return ObjectRef(kind="object", bucket=UPLOADS_BUCKET, key=index)


async def upload_lockfile(js: JetStreamContext, path: Path, *, model: str, version: str) -> ObjectRef:
    """Store a build's lock file beside the model; its reference keeps the file's name (the
    signer picks the parser by it)."""
    store = await js.object_store(UPLOADS_BUCKET)
    key = f"{model_prefix(model, version)}/lock/{path.name}"
    data = path.read_bytes()
    await put_once(store, UPLOADS_BUCKET, key, data, content_sha256=hashlib.sha256(data).hexdigest())
    return ObjectRef(kind="object", bucket=UPLOADS_BUCKET, key=key)
