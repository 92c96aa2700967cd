"""Fuzz the lock-file parser (issue 12): it never raises, whatever the bytes (bounded run; the
long one is `benchmarks/fuzz_lockfile.py`)."""

from __future__ import annotations

from as_lockfile_fuzz import LOCK_FILES, run
from hypothesis import HealthCheck, given, settings

from services.artifact_signer.lockfile import LockFormat


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(LOCK_FILES)
def test_lock_file_parser_never_raises(case: tuple[str, bytes]) -> None:
    report = run(case)
    assert report.format is not LockFormat.UNSUPPORTED or case[0] == "x.lock"
    assert report.decision.value in ("pass", "warn", "fail")
