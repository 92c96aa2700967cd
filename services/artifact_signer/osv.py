"""Known vulnerabilities from an offline OSV database (https://ossf.github.io/osv-schema/).

No network: the database is a local folder (searched recursively) or a zip of OSV JSON
records, one vulnerability per file. An operator mirrors PyPI's export from the public OSV
bucket, on a machine with network access, and ships the file to the build machines:

    curl -fsSLO https://osv-vulnerabilities.storage.googleapis.com/PyPI/all.zip
    mlwarden scan deps uv.lock --osv all.zip          # the zip is read as it is
    # or: unzip -q all.zip -d /srv/osv/PyPI && mlwarden scan deps uv.lock --osv /srv/osv

(`gsutil -m rsync gs://osv-vulnerabilities/PyPI /srv/osv/PyPI` keeps a folder in sync.)
Refresh it daily: a stale mirror misses new advisories, it never invents them.

Matching follows the OSV schema: an `affected` entry for ecosystem `PyPI` and the package's
PEP 503 name affects a version if the version is in its explicit `versions` list, or falls in
one of its `ECOSYSTEM` ranges: events are evaluated in version order (PEP 440, with the
`packaging` library), `introduced` opens the range (`"0"` = from the first release), `fixed`
closes it at that version (excluded), `last_affected` closes it after that version (included).
Records with `withdrawn` set are skipped. `GIT` ranges cannot be evaluated against a version
and are ignored (PyPI records list the affected versions explicitly as well).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version
from pydantic import Field

from shared.errors import InputError
from shared.events import Frozen

#: Where PyPI's OSV database comes from: the OSV project's per-ecosystem export in its public
#: GCS bucket `gs://osv-vulnerabilities` (documented at https://google.github.io/osv.dev/data/).
OSV_SOURCE = "https://osv-vulnerabilities.storage.googleapis.com/PyPI/all.zip"
#: One OSV record larger than this is not read (real ones are a few KiB).
MAX_RECORD_BYTES = 4 * 1024 * 1024
ECOSYSTEM = "PyPI"


class Vulnerability(Frozen):
    """A known vulnerability affecting one locked package version."""

    id: str = Field(description="OSV id, e.g. PYSEC-2023-1 or GHSA-xxxx")
    aliases: list[str] = Field(default_factory=list, description="CVE and other ids of the same issue")
    package: str = Field(description="normalized package name")
    version: str = Field(description="the locked, affected version")
    fixed: list[str] = Field(default_factory=list, description="versions that fix it, lowest first")
    summary: str = Field(default="", description="one line from the record")


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except InvalidVersion:
        return None


def _in_range(version: Version, events: list[Mapping[str, Any]]) -> bool:
    # OSV schema, "Evaluation": sort the events by version and walk them; "introduced: 0"
    # sorts first. An event whose version is not PEP 440 cannot be placed and is skipped.
    placed: list[tuple[Version, int, str]] = []
    for event in events:
        for kind, order in (("introduced", 0), ("fixed", 1), ("last_affected", 2)):
            if kind in event:
                raw = str(event[kind])
                at = Version("0") if kind == "introduced" and raw == "0" else _version(raw)
                if at is not None:
                    placed.append((at, order, kind))
    affected = False
    for at, _, kind in sorted(placed):
        if kind == "introduced" and version >= at:
            affected = True
        elif (kind == "fixed" and version >= at) or (kind == "last_affected" and version > at):
            affected = False
    return affected


@dataclass(frozen=True)
class OsvRecord:
    """The parts of one OSV record that matching needs."""

    id: str
    aliases: tuple[str, ...]
    summary: str
    affected: tuple[Mapping[str, Any], ...]

    def matches(self, name: str, version: str) -> list[str] | None:
        """The fixed versions if `name==version` is affected, else None."""
        parsed = _version(version)
        hit = False
        fixed: set[str] = set()
        for entry in self.affected:
            package = entry.get("package") or {}
            if package.get("ecosystem") != ECOSYSTEM or canonicalize_name(str(package.get("name", ""))) != name:
                continue
            ranges = [r for r in entry.get("ranges") or [] if isinstance(r, dict) and r.get("type") == "ECOSYSTEM"]
            fixed.update(str(e["fixed"]) for r in ranges for e in r.get("events") or [] if "fixed" in e)
            listed = version in {str(v) for v in entry.get("versions") or []}
            if parsed is not None and not listed:
                # Explicit lists use the project's spelling; compare as versions too (1.0 == 1.0.0).
                listed = any(_version(str(v)) == parsed for v in entry.get("versions") or [])
            if listed or (parsed is not None and any(_in_range(parsed, list(r.get("events") or [])) for r in ranges)):
                hit = True
        if not hit:
            return None
        return sorted(fixed, key=lambda v: (_version(v) or Version("0"), v))


@dataclass
class OsvDatabase:
    """OSV records for PyPI, indexed by normalized package name."""

    records: dict[str, list[OsvRecord]] = field(default_factory=lambda: defaultdict(list))
    skipped_withdrawn: int = 0

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> OsvDatabase:
        """Read a folder (recursively) or a zip of OSV JSON records. `InputError` if neither."""
        root = Path(path)
        if root.is_dir():
            return cls.from_documents(_folder_documents(root))
        if zipfile.is_zipfile(root):
            return cls.from_documents(_zip_documents(root))
        raise InputError(f"{root}: not a folder or a zip of OSV records")

    @classmethod
    def from_documents(cls, documents: Iterable[tuple[str, bytes]]) -> OsvDatabase:
        """Index (name, JSON bytes) pairs; files that are not OSV records are an `InputError`."""
        database = cls()
        for where, data in documents:
            try:
                record = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InputError(f"{where}: not JSON") from exc
            if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                raise InputError(f"{where}: not an OSV record (no id)")
            database.add(record)
        return database

    def add(self, record: Mapping[str, Any]) -> None:
        """Index one parsed OSV record (withdrawn ones are counted and skipped)."""
        if record.get("withdrawn"):
            self.skipped_withdrawn += 1
            return
        affected = tuple(a for a in record.get("affected") or [] if isinstance(a, dict))
        parsed = OsvRecord(
            id=str(record["id"]),
            aliases=tuple(str(a) for a in record.get("aliases") or []),
            summary=str(record.get("summary") or record.get("details") or "")[:300].splitlines()[0]
            if record.get("summary") or record.get("details")
            else "",
            affected=affected,
        )
        names = {
            canonicalize_name(str((a.get("package") or {}).get("name", "")))
            for a in affected
            if (a.get("package") or {}).get("ecosystem") == ECOSYSTEM
        }
        for name in names:
            self.records[name].append(parsed)

    def lookup(self, name: str, version: str) -> list[Vulnerability]:
        """Every known vulnerability of `name==version` (name normalized here), sorted by id."""
        package = canonicalize_name(name)
        found = []
        for record in self.records.get(package, []):
            fixed = record.matches(package, version)
            if fixed is not None:
                found.append(
                    Vulnerability(
                        id=record.id,
                        aliases=list(record.aliases),
                        package=package,
                        version=version,
                        fixed=fixed,
                        summary=record.summary,
                    )
                )
        return sorted(found, key=lambda v: v.id)


def _folder_documents(root: Path) -> Iterator[tuple[str, bytes]]:
    for path in sorted(root.rglob("*.json")):
        if path.is_file() and not path.is_symlink():
            if path.stat().st_size > MAX_RECORD_BYTES:
                raise InputError(f"{path}: OSV record larger than {MAX_RECORD_BYTES} bytes")
            yield str(path), path.read_bytes()


def _zip_documents(path: Path) -> Iterator[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.is_dir() or not info.filename.endswith(".json"):
                continue
            if info.file_size > MAX_RECORD_BYTES:
                raise InputError(f"{path}:{info.filename}: OSV record larger than {MAX_RECORD_BYTES} bytes")
            with archive.open(info) as member:
                # Read one byte past the limit: the header's size is not trusted (zip bombs).
                data = member.read(MAX_RECORD_BYTES + 1)
            if len(data) > MAX_RECORD_BYTES:
                raise InputError(f"{path}:{info.filename}: OSV record larger than {MAX_RECORD_BYTES} bytes")
            yield f"{path}:{info.filename}", data
