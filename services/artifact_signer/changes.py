"""What changed between a signed file list and the files on disk: one rule for every format."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TreeChange:
    """One difference between a signed file list and the files on disk."""

    kind: Literal["changed", "added", "removed", "renamed"]
    path: str
    new_path: str | None = None

    def __str__(self) -> str:
        if self.kind == "renamed":
            return f"renamed: {self.path} -> {self.new_path}"
        return f"{self.kind}: {self.path}"


def diff_by_content(want: Mapping[str, Hashable], have: Mapping[str, Hashable]) -> list[TreeChange]:
    """Every change from `want` to `have` (path -> content fingerprint), sorted by path.

    A removed file whose exact content reappears under a new path is reported once as
    renamed, not as a removal plus an addition.
    """
    changes = [TreeChange("changed", p) for p in sorted(want.keys() & have.keys()) if want[p] != have[p]]
    added = sorted(have.keys() - want.keys())
    for path in sorted(want.keys() - have.keys()):
        match = next((new for new in added if have[new] == want[path]), None)
        if match is None:
            changes.append(TreeChange("removed", path))
        else:
            added.remove(match)
            changes.append(TreeChange("renamed", path, match))
    changes.extend(TreeChange("added", path) for path in added)
    return sorted(changes, key=lambda change: (change.path, change.kind))
