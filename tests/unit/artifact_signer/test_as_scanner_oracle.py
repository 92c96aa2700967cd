"""The scanner against a differential oracle (issue 12): generated pickles, zero disagreements.

`as_pickle_oracle` records what `pickle.load` (and `joblib.load`) would import, through
Unpicklers whose `find_class` returns inert stand-ins; nothing is imported or run. A longer run
is `uv run python benchmarks/scanner.py --oracle-cases N`.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from as_pickle_oracle import Case, Judgement, cases, judge, outside_allow_list, read, summary
from hypothesis import HealthCheck, given, settings

from services.artifact_signer import scanner


def short(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def test_oracle_records_names_without_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    for how in ("pickle.load", "python"):
        reading = read(payload, how=how)
        assert [a[1:] for a in reading.asked] == [("os", "system")] and reading.completed
    assert not marker.exists()
    # The bypass: recorded exactly as find_class receives it, and outside the list.
    attack = b"\x80\x04" + short("sklearn.calibration") + short("np.f2py.subprocess.Popen") + b"\x93" + short("id")
    reading = read(attack + b"\x85R.", how="python")
    assert reading.asked == [(4, "sklearn.calibration", "np.f2py.subprocess.Popen")]
    assert outside_allow_list(reading) == ["sklearn.calibration.np.f2py.subprocess.Popen (protocol 4)"]


def test_oracle_resolves_python2_names_only_below_protocol_3() -> None:
    for protocol, outside in ((2, []), (3, ["copy_reg._reconstructor (protocol 3)"])):
        reading = read(b"\x80" + bytes([protocol]) + b"ccopy_reg\n_reconstructor\n.", how="python")
        assert outside_allow_list(reading) == outside


def test_oracle_catches_a_scanner_that_allows_too_much(monkeypatch: pytest.MonkeyPatch) -> None:
    # The harness is only worth its zero if it can fail: with the old pattern-style allow-list
    # (anything under sklearn.calibration allowed) the bypass is a miss.
    data = b"\x80\x04" + short("sklearn.calibration") + short("np.f2py.subprocess.Popen") + b"\x93."
    case = Case(data, (("pickle.load", data),), True, "raw")
    assert not judge(case).missed
    original = scanner.is_allowed_global
    monkeypatch.setattr(
        scanner,
        "is_allowed_global",
        lambda module, name, *, protocol: module.startswith("sklearn.") or original(module, name, protocol=protocol),
    )
    assert judge(case).missed


judgements: list[Judgement] = []


@settings(max_examples=800, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_scanner_agrees_with_the_oracle_on_generated_pickles(case: Case) -> None:
    judgement = judge(case)
    judgements.append(judgement)
    assert judgement.readers_agree, "the C and Python Unpicklers asked for different names"
    assert not judgement.missed, (judgement.outside, case.label, case.loads[0][1])
    assert not judgement.false_alarm, (case.label, scanner.scan_bytes(case.data, case.label).findings)


def test_generated_corpus_covered_both_sides() -> None:
    # Runs after the property test (file order): both verdicts were exercised, not just one.
    counts = summary(judgements)
    if not counts["cases"]:
        pytest.skip("run together with the property test")
    assert counts["truly unsafe"] > 0 and counts["benign, loads to the end"] > 0
    assert counts["missed"] == counts["false alarms"] == 0


def test_real_pickles_pass_the_oracle_and_the_scanner() -> None:
    import collections

    import numpy as np

    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        data = pickle.dumps({"a": np.arange(3.0), "o": collections.OrderedDict(x=1)}, protocol=protocol)
        j = judge(Case(data, (("pickle.load", data),), True, "raw"))
        assert not j.outside and j.completed and j.scanner_safe
