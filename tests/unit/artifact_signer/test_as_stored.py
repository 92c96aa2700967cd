"""The index of an uploaded model is a claim: unsafe paths, duplicates and sizes are refused."""

from __future__ import annotations

import pytest

from services.artifact_signer.stored import check_index
from shared.artifacts import IndexedFile, ModelIndex, file_key, index_key
from shared.events import ObjectRef
from shared.storage import UnreadableReference

REF = ObjectRef(kind="object", bucket="mlw-artifacts", key=index_key("iris", "1"))
SHA = "a" * 64


def _index(*paths: str, size: int = 1) -> ModelIndex:
    return ModelIndex(files=[IndexedFile(path=p, sha256=SHA, size=size) for p in paths])


@pytest.mark.parametrize("path", ["../etc/passwd", "/etc/passwd", "a/../../b", "a\\..\\b", "a//b", "./a", "a\x00b"])
def test_unsafe_relpath_is_refused(path: str) -> None:
    with pytest.raises(UnreadableReference) as caught:
        check_index(_index("ok.bin", path), REF, max_bytes=10**9)
    assert caught.value.code == "path_traversal"


@pytest.mark.parametrize(("paths", "code"), [(("a", "a"), "bad_index"), (("a", "a/b"), "bad_index")])
def test_duplicate_or_file_and_folder_is_refused(paths: tuple[str, ...], code: str) -> None:
    with pytest.raises(UnreadableReference) as caught:
        check_index(_index(*paths), REF, max_bytes=10**9)
    assert caught.value.code == code


def test_total_size_is_checked_before_any_download() -> None:
    with pytest.raises(UnreadableReference) as caught:
        check_index(_index("a", "b", size=600), REF, max_bytes=1000)
    assert caught.value.code == "too_large"
    check_index(_index("a", "b/c", size=500), REF, max_bytes=1000)


def test_file_objects_live_beside_the_index() -> None:
    assert file_key(index_key("iris", "1"), "sub/w.bin") == "models/iris/1/files/sub/w.bin"
