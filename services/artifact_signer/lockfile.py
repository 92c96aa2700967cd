"""The dependency gate: a build's lock file must pin every dependency exactly and by hash.

An unpinned dependency lets a later build silently pick up a different (possibly hijacked)
release; a pin without a hash trusts whatever the index serves under that version. Supported:
pip requirements files in hash-checking form (`name==1.2 --hash=sha256:...`, as `pip-compile
--generate-hashes` and `uv pip compile --generate-hashes` write them), `uv.lock`, and PEP 751
`pylock.toml`. Issue 5 adds known-vulnerability checks over the `packages` this returns.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import tomllib
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import Field

from shared.events import Decision, Finding, Frozen, Severity, decision_from

#: Hex digits of each algorithm pip's `--hash` accepts (pip's `STRONG_HASHES`).
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}
#: A SHA-2 digest of fewer distinct hex digits than this is a placeholder, not a digest: a
#: uniformly random 64-digit one has at most 5 distinct digits with probability
#: C(16,5) * (5/16)**64 < 1e-28, while `aaaa...`, `1111...` and `deadbeef...` have 1 to 5.
MIN_DISTINCT_DIGITS = 6
# pip's own comment rule (pip/_internal/req/req_file.py, COMMENT_RE): '#' at the start of a
# line or after whitespace; a '#' inside a URL fragment is not a comment.
_COMMENT = re.compile(r"(^|\s+)#.*$")
_PYLOCK_NAME = re.compile(r"^pylock(\.[^.]+)?\.toml$")


class LockFormat(StrEnum):
    """Lock file formats the gate understands."""

    REQUIREMENTS = "requirements"
    UV_LOCK = "uv.lock"
    PYLOCK = "pylock.toml"
    UNSUPPORTED = "unsupported"


class LockedPackage(Frozen):
    """A dependency as the lock file pins it."""

    name: str = Field(description="normalized project name (PEP 503)")
    version: str | None = Field(description="exact version, if pinned")
    hashes: int = Field(ge=0, description="sha256 hashes recorded for it")
    sha256: list[str] = Field(
        default_factory=list,
        description="those sha256 digests, lower-case hex, in lock file order (a bill of materials cites them;"
        " empty in reports from before issue 11)",
    )


class LockReport(Frozen):
    """The gate's result on one lock file."""

    filename: str
    format: LockFormat
    sha256: str = Field(description="digest of the lock file bytes")
    decision: Decision
    packages: list[LockedPackage] = Field(default_factory=list)
    findings: list[Finding] = Field(default_factory=list)


#: Kept under its old name for callers: the one rule lives in `shared.events`.
decide = decision_from


def _finding(check: str, message: str, *, severity: Severity = Severity.FAIL, **evidence: str | int) -> Finding:
    return Finding(check=f"lockfile.{check}", severity=severity, message=message, count=1, evidence=evidence)


def digest_problem(algorithm: str, hexdigest: str) -> str | None:
    """Why `algorithm:hexdigest` is not a well-formed digest, or None if it is.

    Well formed: an algorithm pip checks, exactly its number of lowercase hex digits (pip
    compares `hexdigest()` strings, so `AAAA...` never matches anything), and not a
    placeholder (issue 12: a fake `sha256:aaaa...` passed the gate).
    """
    length = DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        return f"unsupported hash algorithm {algorithm!r} (use sha256)"
    if len(hexdigest) != length or not all(c in "0123456789abcdef" for c in hexdigest):
        return f"{algorithm} digest must be {length} lowercase hex digits, got {len(hexdigest)} characters"
    if len(set(hexdigest)) < MIN_DISTINCT_DIGITS:
        return f"{algorithm} digest {hexdigest[:12]}... is a placeholder, not a real digest"
    return None


def detect_format(filename: str) -> LockFormat:
    """Pick the parser from the file name (lock files have fixed, meaningful names)."""
    name = PurePosixPath(filename.replace("\\", "/")).name.lower()
    if name == "uv.lock":
        return LockFormat.UV_LOCK
    if _PYLOCK_NAME.match(name):
        return LockFormat.PYLOCK
    if name.endswith((".txt", ".in")) or "requirements" in name:
        return LockFormat.REQUIREMENTS
    return LockFormat.UNSUPPORTED


def check_lockfile(content: bytes, filename: str) -> LockReport:
    """Check that `content` (the lock file called `filename`) pins and hashes every dependency.

    Never raises on bad content: an unreadable lock file is a failing finding.
    """
    fmt = detect_format(filename)
    packages: list[LockedPackage] = []
    findings: list[Finding] = []
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        findings.append(_finding("parse", f"{filename} is not UTF-8 text"))
    else:
        match fmt:
            case LockFormat.REQUIREMENTS:
                packages, findings = _check_requirements(text)
            case LockFormat.UV_LOCK:
                packages, findings = _check_toml(text, _check_uv_lock)
            case LockFormat.PYLOCK:
                packages, findings = _check_toml(text, _check_pylock)
            case LockFormat.UNSUPPORTED:
                findings.append(
                    _finding(
                        "unsupported",
                        f"{filename}: not a requirements file, uv.lock or pylock.toml",
                        file=filename,
                    )
                )
    if not packages and not findings:
        findings.append(_finding("empty", "lock file pins no package", severity=Severity.WARN))
    return LockReport(
        filename=filename,
        format=fmt,
        sha256=hashlib.sha256(content).hexdigest(),
        decision=decide(findings),
        packages=packages,
        findings=findings,
    )


# --- pip requirements ---------------------------------------------------------------------

# Options that only steer where pip looks; harmless for pinning and hashing.
_HARMLESS_OPTIONS = {
    "--require-hashes",
    "--no-index",
    "--pre",
    "--prefer-binary",
    "--only-binary",
    "--no-binary",
    "-i",
    "--index-url",
    "-f",
    "--find-links",
    "--use-feature",
}
_INCLUDE_OPTIONS = {"-r", "--requirement", "-c", "--constraint"}
_EDITABLE_OPTIONS = {"-e", "--editable"}


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield (first physical line number, logical line) with pip's continuation and comments."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        if not pending:
            start = number
        # pip strips comments after joining continuation lines; a comment line inside a
        # continuation ends nothing, and a '\' inside a comment does not continue.
        if raw.endswith("\\") and not _COMMENT.match(raw):
            pending.append(raw[:-1])
            continue
        pending.append(raw)
        line = _COMMENT.sub("", " ".join(pending)).strip()
        pending = []
        if line:
            yield start, line
    if pending:
        line = _COMMENT.sub("", " ".join(pending)).strip()
        if line:
            yield start, line


def _check_requirements(text: str) -> tuple[list[LockedPackage], list[Finding]]:
    packages: list[LockedPackage] = []
    findings: list[Finding] = []
    seen: dict[str, int] = {}
    for number, line in _logical_lines(text):
        # pip's break_args_options: the requirement runs up to the first token that starts
        # with '-' (split on spaces, so quoted marker values survive); options are shell-split.
        words = line.split()
        split = next((i for i, word in enumerate(words) if word.startswith("-")), len(words))
        try:
            options = shlex.split(" ".join(words[split:]))
        except ValueError as exc:
            findings.append(_finding("parse", f"line {number}: {exc}", line=number))
            continue
        if split == 0:
            findings.extend(_check_option_line(options, number))
            continue
        requirement_text = " ".join(words[:split])
        hashes, problems = _parse_hash_options(options, number)
        findings.extend(problems)
        try:
            req = Requirement(requirement_text)
        except InvalidRequirement as exc:
            findings.append(
                _finding(
                    "unpinned",
                    f"line {number}: {requirement_text!r} is not a name==version requirement ({exc})",
                    line=number,
                )
            )
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            findings.append(
                _finding(
                    "duplicate",
                    f"line {number}: {name} is also required on line {seen[name]}",
                    package=name,
                    line=number,
                )
            )
        seen[name] = number
        version = _exact_version(req)
        if version is None:
            spec = req.url or str(req.specifier) or "any version"
            findings.append(
                _finding(
                    "unpinned",
                    f"line {number}: {name} is not pinned with == ({spec})",
                    package=name,
                    line=number,
                )
            )
        if not hashes:
            findings.append(
                _finding(
                    "unhashed",
                    f"line {number}: {name} has no --hash=sha256:",
                    package=name,
                    line=number,
                )
            )
        digests = _hex_digests(hashes)
        packages.append(LockedPackage(name=name, version=version, hashes=len(hashes), sha256=digests))
    return packages, findings


def _exact_version(req: Requirement) -> str | None:
    if req.url is not None:
        return None  # a direct reference is not a version pin (and VCS refs have no hash)
    specs = list(req.specifier)
    if len(specs) != 1 or specs[0].operator not in ("==", "===") or "*" in specs[0].version:
        return None
    return specs[0].version


def _parse_hash_options(tokens: list[str], number: int) -> tuple[list[str], list[Finding]]:
    hashes: list[str] = []
    findings: list[Finding] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("--hash="):
            value = token.removeprefix("--hash=")
        elif token == "--hash" and i + 1 < len(tokens):
            i += 1
            value = tokens[i]
        elif token.startswith(("--config-settings", "--global-option")):
            i += 1 if "=" in token else 2
            continue
        else:
            findings.append(_finding("parse", f"line {number}: unknown option {token}", line=number))
            i += 1
            continue
        algorithm, _, hexdigest = value.partition(":")
        problem = digest_problem(algorithm, hexdigest)
        if problem is not None:
            # Refused whatever the algorithm: pip would take it as an allowed digest.
            findings.append(_finding("hash", f"line {number}: malformed hash {value!r}: {problem}", line=number))
        elif algorithm == "sha256":
            hashes.append(value)  # sha384/sha512 are checked, but only sha256 counts as hashed
        i += 1
    return hashes, findings


def _check_option_line(tokens: list[str], number: int) -> list[Finding]:
    first = tokens[0]
    if not first.startswith("--") and len(first) > 2:  # short option glued to its value: -rx.txt
        tokens = [first[:2], first[2:], *tokens[1:]]
        first = tokens[0]
    option = first.split("=", 1)[0]
    argument = first.split("=", 1)[1] if "=" in first else " ".join(tokens[1:])
    if option in _INCLUDE_OPTIONS:
        # The included file is not in hand, so what it pins cannot be checked: refuse.
        return [
            _finding(
                "unsupported",
                f"line {number}: include {option} {argument} is not supported; inline it",
                line=number,
                file=argument,
            )
        ]
    if option in _EDITABLE_OPTIONS:
        return [
            _finding(
                "unpinned",
                f"line {number}: editable requirement {argument} is not pinned",
                line=number,
                package=argument,
            )
        ]
    if option in ("--extra-index-url", "--trusted-host"):
        # A second index invites dependency confusion; a trusted host turns TLS checks off.
        return [
            _finding(
                "index",
                f"line {number}: {option} {argument}",
                severity=Severity.WARN,
                line=number,
            )
        ]
    if option in _HARMLESS_OPTIONS:
        return []
    return [_finding("parse", f"line {number}: unknown option {option}", line=number)]


# --- TOML lock files ----------------------------------------------------------------------

_TomlChecker = Callable[[dict[str, Any]], tuple[list[LockedPackage], list[Finding]]]


def _check_toml(text: str, checker: _TomlChecker) -> tuple[list[LockedPackage], list[Finding]]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [], [_finding("parse", f"not valid TOML: {exc}")]
    try:
        return checker(data)
    except (TypeError, AttributeError, KeyError) as exc:
        # Valid TOML of the wrong shape (a string where a table belongs, ...).
        return [], [_finding("parse", f"unexpected lock file structure: {exc!r}")]


def _hex_digests(values: list[str]) -> list[str]:
    """`sha256:<hex>` values as distinct lower-case hex digests, first occurrence first."""
    return list(dict.fromkeys(v.partition(":")[2].lower() for v in values))


def _sha256_problem(value: object) -> str | None:
    """Why a lock file's `sha256:<hex>` is not a usable digest, or None."""
    algorithm, _, hexdigest = str(value or "").partition(":")
    if algorithm != "sha256":
        return "has no sha256 hash"
    problem = digest_problem(algorithm, hexdigest)
    return None if problem is None else f"has a malformed hash: {problem}"


def _hash_findings(
    name: str, dists: list[Mapping[str, Any]], sha256_of: Callable[[Mapping[str, Any]], str]
) -> list[Finding]:
    findings = []
    for dist in dists:
        where = str(dist.get("url") or dist.get("path") or dist.get("name") or "distribution")
        problem = _sha256_problem(sha256_of(dist))
        if problem is not None:
            findings.append(
                _finding(
                    "unhashed",
                    f"{name}: {where.rsplit('/', 1)[-1]} {problem}",
                    package=name,
                    file=where,
                )
            )
    return findings


def _check_uv_lock(data: dict[str, Any]) -> tuple[list[LockedPackage], list[Finding]]:
    packages: list[LockedPackage] = []
    findings: list[Finding] = []
    for entry in data.get("package", []):
        name = canonicalize_name(str(entry.get("name", "?")))
        source = entry.get("source", {})
        if "editable" in source or "virtual" in source:
            continue  # the project being built (or a workspace member): its code is the artifact
        version = entry.get("version")
        if not isinstance(version, str):
            findings.append(_finding("unpinned", f"{name} has no version", package=name))
            version = None
        dists = ([entry["sdist"]] if "sdist" in entry else []) + list(entry.get("wheels", []))
        if not dists:
            kind = next(iter(source), "unknown")
            findings.append(
                _finding(
                    "unhashed",
                    f"{name}: {kind} source has no hashed distribution",
                    package=name,
                )
            )

        def uv_hash(dist: Mapping[str, Any]) -> str:
            return str(dist.get("hash", ""))

        findings.extend(_hash_findings(name, dists, uv_hash))
        hashed = [uv_hash(d) for d in dists if _sha256_problem(uv_hash(d)) is None]
        packages.append(LockedPackage(name=name, version=version, hashes=len(hashed), sha256=_hex_digests(hashed)))
    return packages, findings


def _check_pylock(data: dict[str, Any]) -> tuple[list[LockedPackage], list[Finding]]:
    # PEP 751: each [[packages]] entry has one source kind: vcs, directory, archive, sdist
    # and/or wheels; archives, sdists and wheels carry a `hashes` table.
    packages: list[LockedPackage] = []
    findings: list[Finding] = []
    for entry in data.get("packages", []):
        name = canonicalize_name(str(entry.get("name", "?")))
        version = entry.get("version")
        if not isinstance(version, str):
            findings.append(_finding("unpinned", f"{name} has no version", package=name))
            version = None
        dists = [entry[key] for key in ("archive", "sdist") if key in entry]
        dists += list(entry.get("wheels", []))
        for kind in ("vcs", "directory"):
            if kind in entry:
                findings.append(_finding("unhashed", f"{name}: {kind} source has no content hash", package=name))
        if not dists and not any(kind in entry for kind in ("vcs", "directory")):
            findings.append(_finding("unhashed", f"{name}: no distribution listed", package=name))

        def pylock_hash(dist: Mapping[str, Any]) -> str:
            digest = dist.get("hashes", {}).get("sha256")
            return f"sha256:{digest}" if digest is not None else ""

        findings.extend(_hash_findings(name, dists, pylock_hash))
        hashed = [pylock_hash(d) for d in dists if _sha256_problem(pylock_hash(d)) is None]
        packages.append(LockedPackage(name=name, version=version, hashes=len(hashed), sha256=_hex_digests(hashed)))
    return packages, findings
