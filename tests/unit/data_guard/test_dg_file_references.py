"""File references never reach the data dir's secrets, and parse errors never quote the file
(issue 8, "data-guard decides from what it judged")."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.data_guard.loader import DatasetError, load_table
from shared.events import ObjectRef
from shared.settings import Settings
from shared.storage import UnreadableReference, confined_path


def _refused(path: Path | str, settings: Settings) -> str:
    with pytest.raises(UnreadableReference) as info:
        confined_path(ObjectRef(kind="file", path=str(path)), settings.readable_roots)
    return info.value.code


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    data = tmp_path / "data"
    for folder in ("keys", "actors", "files", "logs"):
        (data / folder).mkdir(parents=True)
    (data / "keys" / "data-guard.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (data / "audit.db").write_bytes(b"SQLite")
    (data / "audit.db-wal").write_bytes(b"wal")
    (data / "registry-policy.yaml").write_text("roles: []\n")
    (data / "files" / "ok.csv").write_text("a\n1\n")
    return Settings(data_dir=data)


def test_default_root_is_the_files_folder_only(settings: Settings) -> None:
    ok = settings.files_dir / "ok.csv"
    assert confined_path(ObjectRef(kind="file", path=str(ok)), settings.readable_roots) == ok.resolve()
    for secret in ("keys/data-guard.pem", "audit.db", "audit.db-wal", "registry-policy.yaml", "logs"):
        assert _refused(settings.data_dir / secret, settings) == "path_protected", secret
    assert _refused(settings.data_dir, settings) == "path_protected"


def test_symlink_and_dotdot_into_the_keys_are_refused(settings: Settings) -> None:
    link = settings.files_dir / "innocent.csv"
    link.symlink_to(settings.keys_dir / "data-guard.pem")
    assert _refused(link, settings) == "path_protected"
    folder = settings.files_dir / "model"
    folder.symlink_to(settings.keys_dir, target_is_directory=True)
    assert _refused(folder, settings) == "path_protected"
    assert _refused(f"{settings.files_dir}/../keys/data-guard.pem", settings) == "path_traversal"


def test_a_configured_root_holding_the_data_dir_still_protects_it(settings: Settings, tmp_path: Path) -> None:
    wide = settings.model_copy(update={"file_roots": [tmp_path]})
    assert _refused(wide.keys_dir / "data-guard.pem", wide) == "path_protected"
    assert _refused(tmp_path, wide) == "path_protected"  # a folder holding the keys (artifact-signer hashes folders)
    other = tmp_path / "elsewhere.csv"
    other.write_text("a\n1\n")
    assert confined_path(ObjectRef(kind="file", path=str(other)), wide.readable_roots) == other.resolve()


def test_a_root_inside_the_data_dir_outside_files_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inside the data dir"):
        Settings(data_dir=tmp_path / "data", file_roots=[tmp_path / "data" / "keys"])


@pytest.mark.parametrize(
    "text",
    [
        b"a,b,label\n1,2,0\n5,SECRET_VALUE,x,y\n",  # too many fields
        b'a,b,label\n1,2,0\n"SECRET_VALUE\n',  # unterminated quote
        b"a,SECRET_VALUE,label\n1,x,0\n",  # a non-numeric column: its name is the header's content
        b"SECRET_VALUE,SECRET_VALUE,label\n1,2,0\n",  # a duplicated name
    ],
)
def test_parse_errors_name_line_and_column_not_content(text: bytes) -> None:
    with pytest.raises(DatasetError) as info:
        load_table(text, "csv", "label", max_bytes=10_000, max_rows=100)
    assert "SECRET" not in str(info.value)
    assert "column" in str(info.value)


def test_field_count_error_names_the_line() -> None:
    with pytest.raises(DatasetError, match=r"line 3 has 4 fields where the header has 3 \(column 4\)"):
        load_table(b"a,b,label\n1,2,0\n5,SECRET,x,y\n", "csv", "label", max_bytes=10_000, max_rows=100)
