"""Benchmark: mlwarden's pickle scanner beside picklescan, modelscan and fickling, and a long
run of the differential oracle (issue 12), in one run.

    uv run --group bench python benchmarks/scanner.py [--generated 300] [--oracle-cases 10000]

Corpus (written to a temporary folder, removed at the end), the same for every tool:

- malicious: the public-scanner bypasses of the test corpus (modelscan #85, #330, #338 and a
  torch-zip carrying #330), the issue's attribute-traversal bypass, `__reduce__` payloads at
  every protocol, and `--generated` pickles from the oracle's generator that reach an object
  outside the allow-list (the name resolves in this environment, so loading would reach it);
- benign: scikit-learn models of many kinds (pickle protocols 2, 4, 5 and joblib), NumPy
  pickles, a PyTorch-style zip checkpoint, a large random forest, and generated pickles that
  the oracle finds load to the end with allowed names only.

A tool *catches* a file when it reports it unsafe, suspicious, or unreadable (each tool's own
"do not load this"); a *false alarm* is the same on a benign file. MB/s is the corpus size over
the wall time of one pass over it (warm page cache): in-process for mlwarden, picklescan and
fickling; modelscan runs as its CLI in its own environment (`uvx --from modelscan==0.8.8`),
once over the folder, so its figure includes its start-up. modelscan is not in the `bench`
dependency group because it cannot share this project's lock: it requires `rich<15` (mlwarden
requires `rich>=15`) and Python `<3.13` (mlwarden allows 3.11 and later).

The oracle run generates `--oracle-cases` pickles and reports cases tried, truly unsafe ones,
benign ones, misses and false alarms (goal: zero of both).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from hypothesis import HealthCheck, given, settings
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "unit" / "artifact_signer"))  # the oracle and the bypass corpus

import as_pickle_oracle as oracle  # noqa: E402
import test_as_scanner_corpus as bypasses  # noqa: E402

from services.artifact_signer import scanner  # noqa: E402

MODELSCAN = "modelscan==0.8.8"


@dataclass(frozen=True)
class Sample:
    """One corpus file."""

    name: str  # file name, with the extension a user would give it
    data: bytes
    malicious: bool


# --- corpus ------------------------------------------------------------------------------------


class _Reduce:
    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> Any:
        return (self.func, self.args)


def _short(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _torch_zip(data_pkl: bytes) -> bytes:
    weights = np.random.default_rng(0).standard_normal(256).astype(np.float32).tobytes()
    return _zip({"archive/data.pkl": data_pkl, "archive/version": b"3\n", "archive/data/0": weights})


def _torch_state_dict_pickle() -> bytes:
    # What torch.save writes for a state dict, without torch: _rebuild_tensor_v2 over
    # persistent-id storages (the names are what matter to the scanners).
    return (
        b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x06\x00\x00\x00weightq\x02"
        b"ctorch._utils\n_rebuild_tensor_v2\nq\x03((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05"
        b"X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x10tq\x08QK\x00K\x04K\x04\x86q\tK\x04K\x01\x86q\n"
        b"\x89h\x00)Rq\x0btq\x0cRq\rs."
    )


def _traversal_attack() -> bytes:
    # Issue 12: protocol 4 walks `np.f2py.subprocess.Popen` from sklearn.calibration.
    module, name = _short("sklearn.calibration"), _short("np.f2py.subprocess.Popen")
    return b"\x80\x04" + module + name + b"\x93" + _short("id") + b"\x85R."


def _resolves(protocol: int, module: str, name: str) -> bool:
    """Whether `module`/`name` names a real object here (imports trusted installed modules only
    from the generator's name pool; never calls what it finds)."""
    module, name = oracle.resolve(protocol, module, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy.core's deprecation, for one
            obj: Any = importlib.import_module(module)
            for part in name.split(".") if protocol >= 4 else [name]:
                obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError, TypeError):
        return False
    return True


def _generated(count: int) -> tuple[list[Sample], list[Sample]]:
    malicious: list[Sample] = []
    benign: list[Sample] = []
    ext = {
        "raw": "pkl",
        "zip": "zip",
        "torch-zip": "pt",
        "gzip": "pkl.gz",
        "joblib": "joblib",
        "joblib-hidden": "joblib",
    }

    @settings(max_examples=count * 4, deadline=None, database=None, derandomize=True)
    @given(oracle.cases())
    def collect(case: oracle.Case) -> None:
        readings = [
            oracle.read(data, how="joblib.load" if how == "joblib.load" else "python") for how, data in case.loads
        ]
        outside = [a for r in readings for a in r.asked if oracle.resolve(*a) not in scanner.SAFE_GLOBALS]
        name = f"gen-{len(malicious) + len(benign):04d}.{ext[case.label]}"
        if outside and any(_resolves(*a) for a in outside) and len(malicious) < count:
            malicious.append(Sample(name, case.data, True))
        elif not outside and all(r.completed for r in readings) and case.benign_shape and len(benign) < count:
            benign.append(Sample(name, case.data, False))

    collect()
    return malicious, benign


def build_corpus(generated: int) -> list[Sample]:
    """Every sample, malicious first."""
    from sklearn.cluster import KMeans
    from sklearn.datasets import load_iris
    from sklearn.decomposition import PCA
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    samples = [
        Sample("modelscan-85.pkl", bypasses.modelscan_85(), True),
        Sample("modelscan-85-allowed.pkl", bypasses.modelscan_85_with_an_allowed_global(), True),
        Sample("modelscan-330.pkl", bypasses.MODELSCAN_330, True),
        Sample("modelscan-330-in-torch.pt", _torch_zip(bypasses.MODELSCAN_330), True),
        *(
            Sample(f"modelscan-338-{m}.{n}.pkl", bypasses.stack_global_call(m, n, *a), True)
            for m, n, a in bypasses.MODELSCAN_338
        ),
        Sample("issue-12-traversal.pkl", _traversal_attack(), True),
        *(
            Sample(f"reduce-os-system-p{p}.pkl", pickle.dumps(_Reduce(os.system, "id"), protocol=p), True)
            for p in range(6)
        ),
        Sample("reduce-eval.joblib", _joblib(_Reduce(eval, "1")), True),
    ]
    x, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models: dict[str, Any] = {
            "logreg-pipeline": make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y),
            "gradient-boosting": GradientBoostingClassifier(n_estimators=5).fit(x, y),
            "hist-gradient-boosting": HistGradientBoostingClassifier(max_iter=5).fit(x, y),
            "svc": SVC().fit(x, y),
            "kmeans": KMeans(n_clusters=3, n_init=1).fit(x),
            "pca-knn": make_pipeline(PCA(2), KNeighborsClassifier()).fit(x, y),
            "tfidf-logreg": make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(
                ["red apple", "blue sky"] * 4, [0, 1] * 4
            ),
            "large-forest": RandomForestClassifier(n_estimators=150, random_state=0).fit(x, y),
        }
    for name, model in models.items():
        samples += [Sample(f"{name}-p{p}.pkl", pickle.dumps(model, protocol=p), False) for p in (2, 4, 5)]
        samples.append(Sample(f"{name}.joblib", _joblib(model), False))
    arrays = {"w": np.arange(1000.0), "i": np.arange(10)}
    samples += [Sample(f"numpy-p{p}.pkl", pickle.dumps(arrays, protocol=p), False) for p in range(6)]
    samples.append(Sample("state-dict.pt", _torch_zip(_torch_state_dict_pickle()), False))
    malicious, benign = _generated(generated)
    return [*samples, *malicious, *benign]


def _joblib(obj: object) -> bytes:
    out = io.BytesIO()
    joblib.dump(obj, out)
    return out.getvalue()


# --- the tools ---------------------------------------------------------------------------------


def mlwarden_flags(path: Path) -> bool:
    """mlwarden: unsafe (a FAIL finding)."""
    return not scanner.scan_file(path).safe


def picklescan_flags(path: Path) -> bool:
    """picklescan: an infected file, a dangerous or suspicious global, or a scan error."""
    from picklescan.scanner import scan_file_path

    result = scan_file_path(str(path))
    return bool(result.infected_files or result.issues_count or result.scan_err)


def fickling_flags(path: Path) -> bool:
    """fickling: anything but LIKELY_SAFE (parse errors included, graceful mode)."""
    import fickling
    from fickling.analysis import Severity

    try:
        # fickling prints warnings for odd streams; keep the table readable.
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return fickling.scan_file(str(path), graceful=True).severity != Severity.LIKELY_SAFE
    except Exception:  # noqa: BLE001 (fickling may raise on hostile input: counted as "do not load")
        return True


def modelscan_flags(folder: Path) -> tuple[set[str], float] | str:
    """modelscan's CLI over the folder: the files it reports (issues or errors), and the wall time."""
    uvx = shutil.which("uvx")
    if uvx is None:
        return "uvx not found"
    report = folder.parent / "modelscan.json"
    start = time.perf_counter()
    done = subprocess.run(
        [uvx, "--from", MODELSCAN, "modelscan", "-p", str(folder), "-r", "json", "-o", str(report)],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if not report.exists():
        return f"modelscan did not run: {done.stderr.strip()[-300:]}"
    data = json.loads(report.read_text())
    flagged = {Path(str(issue.get("source", ""))).name.split(":")[0] for issue in data.get("issues", [])}
    flagged |= {Path(str(error.get("source", ""))).name.split(":")[0] for error in data.get("errors", [])}
    return flagged, elapsed


@dataclass
class Score:
    """One tool's figures on the corpus."""

    tool: str
    caught: int
    malicious: int
    false_alarms: int
    benign: int
    mb_per_s: float
    note: str = ""


def score(tool: str, flags: Callable[[Path], bool], files: list[tuple[Path, Sample]], total_mb: float) -> Score:
    """Run `flags` over every file once, timed."""
    start = time.perf_counter()
    verdicts = [(sample, flags(path)) for path, sample in files]
    elapsed = time.perf_counter() - start
    return _tally(tool, verdicts, total_mb / elapsed)


def _tally(tool: str, verdicts: list[tuple[Sample, bool]], mb_per_s: float, note: str = "") -> Score:
    return Score(
        tool=tool,
        caught=sum(flagged for sample, flagged in verdicts if sample.malicious),
        malicious=sum(sample.malicious for sample, _ in verdicts),
        false_alarms=sum(flagged for sample, flagged in verdicts if not sample.malicious),
        benign=sum(not sample.malicious for sample, _ in verdicts),
        mb_per_s=mb_per_s,
        note=note,
    )


# --- the oracle run ----------------------------------------------------------------------------


def oracle_run(count: int) -> collections.Counter[str]:
    """Judge `count` generated cases; the counts of `oracle.summary`."""
    judgements: list[oracle.Judgement] = []

    @settings(max_examples=count, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(oracle.cases())
    def run(case: oracle.Case) -> None:
        judgements.append(oracle.judge(case))

    run()
    for j in judgements:
        if j.missed or j.false_alarm:
            print("disagreement:", "missed" if j.missed else "false alarm", j.case.label, j.outside, j.case.data[:120])
    return oracle.summary(judgements)


def main() -> None:
    """Build the corpus, score every tool, run the oracle, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generated", type=int, default=300, help="generated malicious and benign samples (each)")
    parser.add_argument("--oracle-cases", type=int, default=10_000, help="cases for the oracle run (0: skip)")
    args = parser.parse_args()
    console = Console(width=120)

    corpus = build_corpus(args.generated)
    with tempfile.TemporaryDirectory(prefix="mlw-scanner-bench-") as tmp:
        folder = Path(tmp) / "corpus"
        folder.mkdir()
        files = []
        for sample in corpus:
            path = folder / sample.name
            path.write_bytes(sample.data)
            files.append((path, sample))
        total_mb = sum(len(s.data) for s in corpus) / 1e6
        for _, sample in files:  # warm the page cache (and each tool's imports) before timing
            scanner.scan_bytes(sample.data, sample.name)
        scores = [score("mlwarden", mlwarden_flags, files, total_mb)]
        for tool, flags in (("picklescan 1.0.5", picklescan_flags), ("fickling 0.1.12", fickling_flags)):
            flags(files[0][0])
            scores.append(score(tool, flags, files, total_mb))
        found = modelscan_flags(folder)
        if isinstance(found, str):
            console.print(f"[yellow]modelscan skipped[/]: {found}")
        else:
            flagged, elapsed = found
            verdicts = [(sample, sample.name in flagged) for _, sample in files]
            scores.append(_tally("modelscan 0.8.8 (CLI)", verdicts, total_mb / elapsed, "includes start-up"))

    table = Table(
        "tool",
        "caught / malicious",
        "false alarms / benign",
        "MB/s",
        "MB/s vs mlwarden",
        title=f"pickle scanners on one corpus ({len(corpus)} files, {total_mb:.1f} MB)",
    )
    anchor = scores[0].mb_per_s
    for s in scores:
        table.add_row(
            s.tool,
            f"{s.caught} / {s.malicious}",
            f"{s.false_alarms} / {s.benign}",
            f"{s.mb_per_s:,.1f}" + (f" ({s.note})" if s.note else ""),
            f"{s.mb_per_s / anchor:.2f}x",
        )
    console.print(table)

    if args.oracle_cases:
        start = time.perf_counter()
        counts = oracle_run(args.oracle_cases)
        elapsed = time.perf_counter() - start
        oracle_table = Table("measure", "count", title=f"differential oracle ({elapsed:,.0f} s)")
        for key in ("cases", "truly unsafe", "benign, loads to the end", "missed", "false alarms", "readers disagree"):
            oracle_table.add_row(key, f"{counts[key]:,}")
        console.print(oracle_table)


if __name__ == "__main__":
    main()
