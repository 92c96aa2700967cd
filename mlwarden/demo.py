"""`mlwarden demo`: a scripted pipeline on real data that tries each attack and shows the verdict
that stopped it. Exits 0 when every expected verdict was seen, 1 otherwise."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import pickle
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich.console import Console
from rich.table import Table

from mlwarden.bootstrap import actor_key, bootstrap
from mlwarden.supervisor import System
from shared.client import Client, Watcher
from shared.crypto import load_or_create_master_key
from shared.envelope import Envelope, new_event
from shared.events import (
    AdmitRequest,
    ArtifactVerdict,
    ArtifactVerifyReply,
    ArtifactVerifyRequest,
    AuditQuery,
    DatasetRef,
    Decision,
    PredictionRecord,
    Sensitivity,
)
from shared.settings import Settings
from shared.signing import SigningKey
from shared.topology import Subjects

WAIT_S = 60.0


@dataclass
class Step:
    """One attack tried and what stopped it (or did not)."""

    service: str
    attack: str
    expected: str
    seen: str = "nothing"
    ok: bool = False


@dataclass
class Demo:
    """The scripted run against one bus."""

    settings: Settings
    console: Console
    client: Client | None = None
    watcher: Watcher | None = None
    steps: list[Step] = field(default_factory=list)
    run: str = field(default_factory=lambda: time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(2))

    @property
    def c(self) -> Client:
        """The connected client."""
        assert self.client is not None
        return self.client

    @property
    def w(self) -> Watcher:
        """The live verdict watcher."""
        assert self.watcher is not None
        return self.watcher

    def record(self, service: str, attack: str, expected: str, seen: str, ok: bool) -> None:
        """Note a step and print it as it happens."""
        self.steps.append(Step(service, attack, expected, seen, ok))
        mark = "[green]✔[/]" if ok else "[red]✘[/]"
        self.console.print(f" {mark} [bold]{service}[/] {attack}: {seen}")

    async def verdict(self, predicate: Callable[[Envelope[Any]], bool]) -> Envelope[Any] | None:
        """Wait for a verdict or alert matching `predicate`."""
        return await self.w.wait(predicate, WAIT_S)

    # --- data-guard ------------------------------------------------------------------------

    async def data_guard(self, work: Path) -> DatasetRef:
        """Clean, poisoned, tampered and policy-breaching uploads; returns the training data."""
        from sklearn.datasets import load_breast_cancer
        from sklearn.model_selection import train_test_split

        data = load_breast_cancer()
        x_ref, x_new, y_ref, y_new = train_test_split(
            data.data, data.target, test_size=0.5, random_state=7, stratify=data.target
        )
        names = [f"f{i}" for i in range(x_ref.shape[1])]
        ref_path = _write_csv(work / "reference.csv", x_ref, y_ref, names)
        train_path = _write_csv(work / "train.csv", x_new, y_new, names)
        rng = np.random.default_rng(11)
        y_bad = y_new.copy()
        flipped = rng.choice(len(y_bad), size=len(y_bad) // 10, replace=False)
        y_bad[flipped] = 1 - y_bad[flipped]
        bad_path = _write_csv(work / "poisoned.csv", x_new, y_bad, names)
        secret_path = _write_csv(work / "patients.csv", x_new[:100], y_new[:100], names)
        ds = f"diagnosis-{self.run}"

        ref_event = await self.c.upload_dataset(ref_path, dataset=ds, version="1", label="label", uploader="pipeline")
        ref_verdict = await self.verdict(_answers(ref_event))
        ref = DatasetRef(dataset=ds, version="1", sha256=ref_verdict.data.sha256 if ref_verdict else "0" * 64)

        clean = await self.c.upload_dataset(
            train_path, dataset=ds, version="2", label="label", uploader="pipeline", reference=ref
        )
        poisoned = await self.c.upload_dataset(
            bad_path, dataset=ds, version="3", label="label", uploader="pipeline", reference=ref
        )
        restricted = await self.c.upload_dataset(
            secret_path,
            dataset=ds,
            version="4",
            label="label",
            uploader="carol",
            sensitivity=Sensitivity.RESTRICTED,
            master_key=load_or_create_master_key(self.settings.keys_dir),
        )
        clean_verdict = v = await self.verdict(_answers(clean))
        self.record(
            "data-guard", "clean upload vs reference", "pass", _decision(v), v is not None and v.data.decision != "fail"
        )
        v = await self.verdict(_answers(poisoned))
        caught = 0
        if v is not None:
            rows = {r for f in v.data.findings if f.check.startswith("label_noise") for r in f.rows}
            caught = len(rows & {int(i) for i in flipped})
        self.record(
            "data-guard",
            f"10% labels flipped ({len(flipped)} rows)",
            "fail",
            f"{_decision(v)}, {caught} of the flipped rows flagged",
            v is not None and v.data.decision == "fail",
        )
        v = await self.verdict(_answers(restricted))
        self.record(
            "data-guard",
            "restricted data, no allow-list, uploader not cleared",
            "fail",
            _decision(v) + (f" ({_first_fail(v)})" if v else ""),
            v is not None and v.data.decision == "fail",
        )
        # mallory, holding only her own actor key, re-announces the clean data as "pipeline"
        claim = clean.data.model_copy(update={"version": "5"})
        impostor = await self.c.publish(
            Subjects.DATASET_UPLOADED, claim, about=f"dataset:{ds}:5", key=self.c.actor("mallory")
        )
        v = await self.verdict(_answers(impostor))
        self.record(
            "data-guard",
            "mallory uploads claiming uploader=pipeline",
            "fail",
            _decision(v) + (f" ({_first_fail(v)})" if v else ""),
            v is not None and v.data.decision == "fail" and v.data.findings[0].check == "identity.uploader",
        )
        sha = clean_verdict.data.sha256 if clean_verdict else "0" * 64
        return DatasetRef(dataset=ds, version="2", sha256=sha)

    # --- artifact-signer -------------------------------------------------------------------

    async def artifact_signer(self, work: Path, train: DatasetRef) -> tuple[str, str, Any]:
        """A good build, a hostile pickle, an unpinned lock; then tampering after signing."""
        from sklearn.datasets import load_breast_cancer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        x, y = load_breast_cancer(return_X_y=True)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
        name = f"diagnosis-{self.run}"
        good = _model_folder(work / "model-v1", pickle.dumps(model), _lock())
        evil = _model_folder(work / "model-v2", _hostile_pickle(), _lock())
        loose = _model_folder(work / "model-v3", pickle.dumps(model), _lock() + "requests>=2.0\n")
        events = {}
        for version, folder in (("1", good), ("2", evil), ("3", loose)):
            events[version] = await self.c.model_built(
                folder,
                model=name,
                version=version,
                builder="ci-bot",
                lockfile=folder / "requirements.txt",
                datasets=[train],
            )
        v1 = await self.verdict(_answers(events["1"]))
        self.record(
            "artifact-signer",
            "build signed (Ed25519 manifest)",
            "pass",
            f"{_decision(v1)}, root {v1.data.root_digest[:12]}…" if v1 else "nothing",
            v1 is not None and v1.data.decision == "pass",
        )
        v2 = await self.verdict(_answers(events["2"]))
        self.record(
            "artifact-signer",
            "pickle that runs os.system on load",
            "fail",
            _decision(v2) + (f" ({_first_fail(v2)})" if v2 else ""),
            v2 is not None and v2.data.decision == "fail",
        )
        v3 = await self.verdict(_answers(events["3"]))
        self.record(
            "artifact-signer",
            "unpinned dependency (requests>=2.0)",
            "fail",
            _decision(v3) + (f" ({_first_fail(v3)})" if v3 else ""),
            v3 is not None and v3.data.decision == "fail",
        )
        # Tamper with the signed weights on disk, then ask artifact-signer to verify.
        weights = good / "model.pkl"
        original = weights.read_bytes()
        weights.write_bytes(original[:-8] + bytes(8))
        raw = await self.c.request(
            Subjects.ARTIFACT_VERIFY, orjson.dumps(ArtifactVerifyRequest(model=name, version="1").model_dump())
        )
        reply = ArtifactVerifyReply.model_validate_json(raw)
        self.record(
            "artifact-signer",
            "weights changed after signing",
            "verify fails",
            "; ".join(reply.problems) or "verified",
            not reply.ok and any("model.pkl" in p for p in reply.problems),
        )
        weights.write_bytes(original)
        return name, v1.data.root_digest if v1 else "0" * 64, (v2.data.root_digest if v2 else "0" * 64)

    # --- registry-gate ---------------------------------------------------------------------

    async def registry_gate(self, model: str, digest: str, evil_digest: str) -> None:
        """Promotion: wrong role, too few approvals, self-approval, enough approvals, forgery."""
        alice, bob, carol, mallory = (actor_key(self.settings, n) for n in ("alice", "bob", "carol", "mallory"))

        def about(request_id: str, cond: Callable[[Any], bool]) -> Callable[[Envelope[Any]], bool]:
            return lambda e: e.type == Subjects.VERDICT_PROMOTION and e.data.request_id == request_id and cond(e.data)

        sneaky = await self.c.request_promotion(
            mallory, model=model, version="1", stage="production", root_digest=digest
        )
        v = await self.verdict(about(sneaky.id, lambda d: True))
        self.record(
            "registry-gate",
            "promotion by mallory (no role)",
            "rejected",
            _promo(v),
            v is not None and v.data.decision == "rejected",
        )
        req = await self.c.request_promotion(alice, model=model, version="1", stage="production", root_digest=digest)
        await self.c.approve(alice, request_id=req.id, model=model, version="1", stage="production")
        await self.c.approve(bob, request_id=req.id, model=model, version="1", stage="production")
        v = await self.verdict(about(req.id, lambda d: d.approvers == ["bob"]))
        self.record(
            "registry-gate",
            "self-approval by the author + 1 reviewer",
            "not promoted",
            _promo(v),
            v is not None and v.data.decision == "pending",
        )
        await self.c.approve(carol, request_id=req.id, model=model, version="1", stage="production")
        v = await self.verdict(about(req.id, lambda d: len(d.approvers) == 2))
        self.record(
            "registry-gate",
            "two distinct reviewers approve",
            "promoted",
            _promo(v),
            v is not None and v.data.decision == "promoted",
        )
        # A forged "pass" for the hostile build, signed by a key that only claims the name.
        impostor = SigningKey.generate("artifact-signer")
        forged = ArtifactVerdict(
            model=model,
            version="2",
            root_digest=evil_digest,
            decision=Decision.PASS,
            builder="ci-bot",
            in_reply_to="forged",
        )
        await self.c.js.publish(
            Subjects.VERDICT_ARTIFACT,
            new_event(Subjects.VERDICT_ARTIFACT, forged, source="mlwarden/artifact-signer").signed(impostor).to_bytes(),
        )
        alert = await self.verdict(lambda e: e.type == "mlw.alert.registry-gate" and e.data.kind == "forged_verdict")
        evil = await self.c.request_promotion(
            alice, model=model, version="2", stage="production", root_digest=evil_digest
        )
        for approver in (bob, carol):
            await self.c.approve(approver, request_id=evil.id, model=model, version="2", stage="production")
        v = await self.verdict(about(evil.id, lambda d: len(d.approvers) == 2))
        self.record(
            "registry-gate",
            "forged pass verdict for the hostile build",
            "alert + rejected",
            f"alert: {alert.data.kind if alert else 'none'}; {_promo(v)}",
            alert is not None and v is not None and v.data.decision == "rejected",
        )

    # --- serving-monitor -------------------------------------------------------------------

    async def serving_monitor(self, model: str) -> None:
        """Good traffic, no key, a burst, invalid inputs, abusive prediction logs."""
        from sklearn.datasets import load_breast_cancer

        from services.serving_monitor.keystore import (
            issue_key_on_bus,
            register_profile_on_bus,
            register_schema_on_bus,
        )
        from services.serving_monitor.ood import fit_reference
        from services.serving_monitor.validation import schema_from_training

        x, _ = load_breast_cancer(return_X_y=True)
        names = [f"f{i}" for i in range(x.shape[1])]
        await register_schema_on_bus(self.c.js, schema_from_training(model, x, names))
        # Fitted offline on the training data, never on the traffic it judges.
        await register_profile_on_bus(self.c.js, fit_reference(x, names, model))
        key = await issue_key_on_bus(self.c.js, self.settings, "webapp", [model])
        await asyncio.sleep(0.5)  # serving-monitor follows the buckets
        row = {n: float(v) for n, v in zip(names, x[0], strict=True)}

        replies = [await self.c.admit(AdmitRequest(api_key=key, model=model, inputs=[row])) for _ in range(5)]
        self.record(
            "serving-monitor",
            "5 good requests",
            "allowed",
            f"{sum(r.allowed for r in replies)} allowed",
            all(r.allowed for r in replies),
        )
        r1 = await self.c.admit(AdmitRequest(api_key="let-me-in", model=model, inputs=[row]))
        forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
        r2 = await self.c.admit(AdmitRequest(api_key=forged, model=model, inputs=[row]))
        self.record(
            "serving-monitor",
            "garbage key / right id with a guessed secret",
            "denied",
            f"{r1.reason} / {r2.reason}",
            not r1.allowed and not r2.allowed,
        )
        burst = await asyncio.gather(
            *(self.c.admit(AdmitRequest(api_key=key, model=model, inputs=[row])) for _ in range(100))
        )
        limited = [r for r in burst if r.reason == "rate_limited"]
        self.record(
            "serving-monitor",
            "burst of 100 requests",
            "rate limited",
            f"{len(limited)} denied, retry after up to {max((r.retry_after or 0) for r in limited):.2f}s"
            if limited
            else "none denied",
            bool(limited),
        )
        await asyncio.sleep(2.5)  # let the bucket refill before the next checks
        bad_rows = [{**row, "f0": None}, {**row, "f1": 1e12}, {**row, "exfil": 1.0}]
        r = await self.c.admit(AdmitRequest(api_key=key, model=model, inputs=bad_rows))
        self.record(
            "serving-monitor",
            "NaN, out-of-range and unknown features",
            "denied",
            f"{r.reason}: {len(r.problems)} problems",
            not r.allowed and r.reason == "invalid_inputs",
        )
        junk = [PredictionRecord(client="scraper", features={"f0": -1e9}, prediction=0) for _ in range(200)]
        await self.c.log_predictions(model, junk)
        alert = await self.verdict(
            lambda e: e.type == "mlw.alert.serving-monitor" and (e.data.client or "") == "scraper"
        )
        self.record(
            "serving-monitor",
            "200 logged predictions with invalid inputs",
            "alert",
            alert.data.kind if alert else "no alert",
            alert is not None,
        )
        # Model extraction: fixed-size steps from a real input along a direction, the query
        # pattern of Jacobian-based training-set augmentation (Papernot et al. 2017).
        rng = np.random.default_rng(5)
        direction = rng.normal(size=x.shape[1]) * x.std(axis=0) * 0.01
        probes = [x[0] + k * direction for k in range(240)]
        stolen = [
            PredictionRecord(client="cloner", features=dict(zip(names, map(float, p), strict=True)), prediction=0)
            for p in probes
        ]
        for start in range(0, len(stolen), 60):
            await self.c.log_predictions(model, stolen[start : start + 60])
        alert = await self.verdict(
            lambda e: (
                e.type == "mlw.alert.serving-monitor"
                and (e.data.client or "") == "cloner"
                # small successive steps away from a real input: a boundary walk (issue 9)
                and e.data.kind in ("serving.extraction", "serving.boundary_walk")
            )
        )
        self.record(
            "serving-monitor",
            "240 Jacobian-style probing queries (model extraction)",
            "alert",
            f"{alert.data.kind}: {alert.data.message[:80]}" if alert else "no alert",
            alert is not None,
        )

    # --- audit-log -------------------------------------------------------------------------

    async def audit_log(self, model: str) -> None:
        """Query the trail for the model, then verify the whole trail."""
        await asyncio.sleep(1.0)  # let audit-log commit the last batch
        page = await self.c.audit_query(AuditQuery(subject=f"model:{model}:*", limit=1000))
        services = sorted({e.service for e in page.entries if e.service})
        self.record(
            "audit-log",
            f"query model:{model}:*",
            "rows from every service",
            f"{len(page.entries)} entries from {', '.join(services)}",
            {"artifact-signer", "registry-gate", "serving-monitor"} <= set(services),
        )
        # The auditor's own command, as a separate process: chain, Merkle tree, signed checkpoints.
        intact = await self._audit_verify(None)
        self.record("audit-log", "mlwarden audit verify", "intact", _trail(intact), bool(intact.get("ok")))
        # An insider edits a copy of the trail (triggers dropped first), then verifies it again.
        db = self.settings.data_dir.resolve() / "audit.db"
        if self.settings.audit_db_url is None and db.exists():
            copy = self.settings.data_dir.resolve() / "demo" / self.run / "tampered-audit.db"
            copy.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(_tamper_copy, db, copy)
            tampered = await self._audit_verify(f"sqlite:///{copy}")
            self.record(
                "audit-log",
                "a verdict rewritten in the database",
                "verify fails",
                _trail(tampered),
                tampered.get("ok") is False and tampered.get("first_bad_seq") is not None,
            )

    async def _audit_verify(self, db_url: str | None) -> dict[str, Any]:
        env = {**os.environ, "MLW_NATS_URL": self.settings.nats_url, "MLW_DATA_DIR": str(self.settings.data_dir)}
        if db_url or self.settings.audit_db_url:
            env["MLW_AUDIT_DB_URL"] = db_url or str(self.settings.audit_db_url)
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "mlwarden", "audit", "verify", "--format", "json"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        try:
            report: dict[str, Any] = orjson.loads(out)
        except orjson.JSONDecodeError:
            report = {"ok": None, "reason": out.decode(errors="replace")[:200]}
        return report

    async def main(self) -> int:
        """Run every step; print the summary table."""
        # Under the files folder: the only part of the data dir services may read references from.
        work = self.settings.files_dir.resolve() / "demo" / self.run
        work.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        async with Client.connect(self.settings, source="mlwarden/demo") as client, client.watch() as watcher:
            self.client, self.watcher = client, watcher
            await bootstrap(client.js, self.settings)
            self.console.rule("[bold]mlwarden demo")
            train = await self.data_guard(work)
            model, digest, evil_digest = await self.artifact_signer(work, train)
            await self.registry_gate(model, digest, evil_digest)
            await self.serving_monitor(model)
            await self.audit_log(model)
        elapsed = time.monotonic() - started
        table = Table("service", "attack tried", "expected", "ok", title=f"mlwarden demo ({elapsed:.1f}s)")
        for step in self.steps:
            table.add_row(step.service, step.attack, step.expected, "✔" if step.ok else "✘")
        self.console.print(table)
        passed = sum(s.ok for s in self.steps)
        self.console.print(f"{passed}/{len(self.steps)} expected verdicts seen")
        return 0 if passed == len(self.steps) else 1


def run_demo(settings: Settings, *, nats_url: str | None, console: Console, metrics_port: int | None = None) -> int:
    """Run the demo against `nats_url`, or start the embedded system when it is None (serving
    each service's metrics from `metrics_port` on, when given, and printing what they counted)."""
    data_dir = settings.data_dir.resolve()
    system: System | None = None
    if nats_url is None:
        console.print(f"starting embedded NATS and the five services (state in {data_dir})…")
        system = System(data_dir, metrics_port=metrics_port).start()
        settings = settings.model_copy(update={"nats_url": system.url, "data_dir": data_dir})
    try:
        code = asyncio.run(Demo(settings, console).main())
        if system is not None and system.metrics_urls():
            asyncio.run(_print_metrics(system.metrics_urls(), console))
        return code
    finally:
        if system is not None:
            system.stop()


async def _print_metrics(urls: dict[str, str], console: Console) -> None:
    """Scrape each service's /metrics and show the verdicts and alerts it counted."""
    from prometheus_client.parser import text_string_to_metric_families

    from shared.probes import http_get

    table = Table("service", "metric", "labels", "value", title="scraped from each service's /metrics")
    for service, url in urls.items():
        status, body = await http_get(f"{url}/metrics")
        if status != 200:
            table.add_row(service, "(scrape failed)", str(status), "")
            continue
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name in ("mlwarden_verdicts_total", "mlwarden_alerts_total", "mlwarden_dead_letters_total"):
                    labels = ", ".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "service")
                    table.add_row(service, sample.name, labels, f"{sample.value:g}")
    console.print(table)


# --- small helpers -------------------------------------------------------------------------


def _answers(event: Envelope[Any]) -> Callable[[Envelope[Any]], bool]:
    return lambda e: e.type.startswith("mlw.verdict.") and getattr(e.data, "in_reply_to", None) == event.id


def _decision(v: Envelope[Any] | None) -> str:
    return str(v.data.decision) if v is not None else "no verdict"


def _first_fail(v: Envelope[Any]) -> str:
    for f in v.data.findings:
        if f.severity == "fail":
            return f"{f.check}: {f.message[:70]}"
    return ""


def _promo(v: Envelope[Any] | None) -> str:
    if v is None:
        return "no verdict"
    reasons = [r for r in v.data.reasons][:2]
    return f"{v.data.decision}: {'; '.join(reasons)[:110]}"


def _trail(report: dict[str, Any]) -> str:
    if report.get("ok"):
        return f"intact: {report.get('entries')} entries, {report.get('checkpoints')} signed checkpoints"
    return f"TAMPERED at entry {report.get('first_bad_seq')}: {str(report.get('reason'))[:80]}"


def _tamper_copy(db: Path, copy: Path) -> None:
    """Copy the trail and flip one verdict in the copy, as an insider with SQL access would."""
    import sqlite3

    source = sqlite3.connect(db)
    target = sqlite3.connect(copy)
    with target:
        source.backup(target)
    source.close()
    triggers = [row[0] for row in target.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")]
    for name in triggers:
        target.execute(f'DROP TRIGGER "{name}"')
    target.execute(
        "UPDATE audit_entries SET body = replace(body, '\"rejected\"', '\"promoted\"') "
        "WHERE seq = (SELECT min(seq) FROM audit_entries WHERE decision = 'rejected')"
    )
    target.commit()
    target.close()


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray, names: list[str]) -> Path:
    buf = io.StringIO()
    buf.write(",".join([*names, "label"]) + "\n")
    for row, label in zip(x, y, strict=True):
        buf.write(",".join(f"{v:.6g}" for v in row) + f",{int(label)}\n")
    path.write_text(buf.getvalue())
    return path


def _lock() -> str:
    """A hash-pinned requirements file as a locker would write it for the model's runtime."""
    from importlib.metadata import version

    lines = []
    for dist in ("scikit-learn", "numpy", "scipy"):
        pinned = f"{dist}=={version(dist)}"
        # The digest stands in for the wheel's; the gate checks pinning and presence here.
        digest = hashlib.sha256(pinned.encode()).hexdigest()
        lines.append(f"{pinned} --hash=sha256:{digest}")
    return "\n".join(lines) + "\n"


def _model_folder(folder: Path, weights: bytes, lock: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.pkl").write_bytes(weights)
    (folder / "config.json").write_bytes(orjson.dumps({"framework": "scikit-learn", "task": "diagnosis"}))
    (folder / "requirements.txt").write_text(lock)
    return folder


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo owned > /tmp/mlwarden-demo-owned",))


def _hostile_pickle() -> bytes:
    """A pickle that would run a shell command if anyone loaded it (nobody does)."""
    return pickle.dumps({"weights": [0.1, 0.2], "hook": _Payload()})
