"""Hypothesis strategies for lock files (requirements.txt, uv.lock, pylock.toml), shared by the
bounded test and `benchmarks/fuzz_lockfile.py` (issue 12, "Fuzzing").

`check_lockfile` documents no exception at all: bad content is a failing finding. So any
exception it raises is a crash.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from hypothesis import strategies as st

from services.artifact_signer.lockfile import LockReport, check_lockfile

GOOD = hashlib.sha256(b"x").hexdigest()
NAMES = st.sampled_from(["numpy", "scikit-learn", "Torch_Vision", "a", "-", "_x_", "é", "pkg[extra]", ""])
VERSIONS = st.sampled_from(["1.0", "2.4.6", "1!2.0.post1", "0", "==", "1.*", "x", "", "99999999999999999999"])
HASHES = st.one_of(
    st.just(GOOD),
    st.just("a" * 64),
    st.text("0123456789abcdefABCDEF", max_size=130),
    st.text(max_size=20),
)
ALGORITHMS = st.sampled_from(["sha256", "sha384", "sha512", "md5", "", "SHA256"])

# --- requirements.txt -----------------------------------------------------------------------

_FRAGMENTS = st.one_of(
    st.builds(lambda n, v: f"{n}=={v}", NAMES, VERSIONS),
    st.builds(lambda a, h: f"--hash={a}:{h}", ALGORITHMS, HASHES),
    st.builds(lambda a, h: f"--hash {a}:{h}", ALGORITHMS, HASHES),
    st.sampled_from(
        [
            "--hash",
            "--hash=",
            "-r other.txt",
            "-c",
            "-e .",
            "--editable",
            "--index-url https://x",
            "-i",
            "--require-hashes",
            "--no-binary :all:",
            "--trusted-host x",
            "--unknown-option",
            "\\",
            "#",
            " # comment",
            ";",
            "; python_version < '3.8'",
            "[",
            "@ https://x/y.whl",
            "git+https://x/y#egg=y",
            "'",
            '"',
            ">=1",
            "~=",
            "===1",
            "\t",
            "\x00",
            "\r",
        ]
    ),
    st.text(max_size=12),
)
REQUIREMENTS = st.lists(st.lists(_FRAGMENTS, max_size=5).map(" ".join), max_size=8).map("\n".join)

# --- TOML (uv.lock, pylock.toml) -------------------------------------------------------------

_KEYS = st.sampled_from(
    [
        "name",
        "version",
        "source",
        "sdist",
        "wheels",
        "hash",
        "hashes",
        "sha256",
        "url",
        "path",
        "editable",
        "virtual",
        "registry",
        "git",
        "vcs",
        "directory",
        "archive",
        "lock-version",
        "package",
        "packages",
    ]
)
_SCALARS = st.one_of(
    NAMES,
    VERSIONS,
    st.builds(lambda a, h: f"{a}:{h}", ALGORITHMS, HASHES),
    HASHES,
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
)
_VALUES: st.SearchStrategy[Any] = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=12,
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string (escapes included)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"


def _package(table: str) -> st.SearchStrategy[str]:
    return st.dictionaries(_KEYS, _VALUES, max_size=6).map(
        lambda entry: f"[[{table}]]\n" + "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in entry.items())
    )


def toml_lock(table: str) -> st.SearchStrategy[str]:
    """A TOML document: top-level keys of any shape, then `[[table]]` entries of any shape."""
    top = st.dictionaries(_KEYS, _VALUES, max_size=3).map(
        lambda d: "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in d.items())
    )
    return st.builds(lambda head, pkgs: head + "\n".join(pkgs), top, st.lists(_package(table), max_size=4))


#: (file name, content) for every supported format, plus raw bytes under each name.
LOCK_FILES: st.SearchStrategy[tuple[str, bytes]] = st.one_of(
    st.tuples(st.just("requirements.txt"), REQUIREMENTS.map(lambda t: t.encode("utf-8", "surrogatepass"))),
    st.tuples(st.just("uv.lock"), toml_lock("package").map(str.encode)),
    st.tuples(st.just("pylock.toml"), toml_lock("packages").map(str.encode)),
    st.tuples(st.sampled_from(["requirements.txt", "uv.lock", "pylock.toml", "x.lock"]), st.binary(max_size=200)),
)


def run(case: tuple[str, bytes]) -> LockReport:
    """The harness: parse one case; any exception propagates (it is a crash)."""
    name, content = case
    return check_lockfile(content, name)
