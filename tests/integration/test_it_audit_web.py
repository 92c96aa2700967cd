"""The auditors' web page in a real headless Chromium, over a trail the real services wrote.

A small pipeline runs on a real nats-server (data-guard judges an upload, artifact-signer signs
a build trained on it, registry-gate promotes it after two approvals, audit-log records it all
and signs checkpoints); a hostile producer adds an event full of markup. Then `mlwarden audit
serve`'s application is served by uvicorn on a free port and Chromium (Debian's `chromium`,
driven by Playwright) loads each view and checks what a person sees. Each view's screenshot is
written to docs/screenshots/ for the README.

Chromium missing: skipped locally with the reason, failed under CI=true (`.ci/run` installs it).
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import orjson
import pytest
import uvicorn

from mlwarden.audit_web import WebDeps, create_app, mirror_reader
from mlwarden.bootstrap import actor_key
from mlwarden.demo import _lock, _model_folder, _write_csv
from services.audit_log.settings import mirror_path
from services.audit_log.store import AuditStore
from shared.bus import load_trust
from shared.embedded import free_port
from shared.envelope import Envelope
from shared.events import DatasetRef
from shared.topology import Subjects
from shared.trust import load_root_public
from tests._poll import until, until_sync

#: Where the README's screenshots live: each test run writes them there when
#: MLW_UPDATE_SCREENSHOTS=1, and into a temporary folder otherwise (a run leaves the tree clean).
README_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
SCREENSHOTS = (
    README_SCREENSHOTS
    if os.environ.get("MLW_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.mkdtemp(prefix="mlw-screenshots-"))
)
HOSTILE = "<script>document.title='pwned';window.pwned=1</script>"
MODEL, VERSION, STAGE = "churn", "3", "production"


def _chromium() -> str:
    """The system Chromium, or skip (fail under CI) with the reason."""
    found = os.environ.get("MLW_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    reason = ""
    if found is None:
        reason = "no chromium on PATH (Debian: apt-get install chromium; or set MLW_CHROMIUM)"
    else:
        try:
            import playwright.async_api  # noqa: F401
        except ImportError:
            reason = "the playwright package is missing (uv sync)"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: the browser tests must run)")
        pytest.skip(reason)
    assert found is not None
    return found


@dataclass
class Trail:
    """What the pipeline wrote, for the assertions."""

    data_dir: Path
    url: str
    key: Any
    #: seq of the hostile producer's event.
    hostile_seq: int
    entries: int


def _answers(event: Envelope[Any]) -> Any:
    return lambda e: e.type.startswith("mlw.verdict.") and getattr(e.data, "in_reply_to", None) == event.id


def _hostile_envelope() -> tuple[str, bytes]:
    """An unsigned upload whose every free-text field is markup."""
    event_id = str(uuid.uuid4())
    body = {
        "specversion": "1.0",
        "id": event_id,
        "source": f"tests/{HOSTILE}",
        "type": Subjects.DATASET_UPLOADED,
        "time": datetime.now(UTC).isoformat(),
        "subject": f"dataset:{HOSTILE}:1",
        "datacontenttype": "application/json",
        "data": {"dataset": HOSTILE, "uploader": f'"><img src=x onerror="window.pwned=1">{HOSTILE}'},
    }
    return event_id, orjson.dumps(body)


@pytest.fixture
async def trail(bus: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Trail:
    """A trail written by the real services, every entry covered by a signed checkpoint."""
    monkeypatch.setenv("MLW_AUDIT_CHECKPOINT_INTERVAL_S", "0.3")
    # One audit-log here: a renewal starved by four in-process services on a loaded two-core
    # machine must not make it stand by (the lease has its own tests).
    monkeypatch.setenv("MLW_AUDIT_LEASE_TTL_S", "600")
    running = await bus("audit-log", "data-guard", "artifact-signer", "registry-gate")
    client = running.client
    settings = running.settings
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + 0.1 * rng.normal(size=200) > 0).astype(int)
    csv = _write_csv(tmp_path / "train.csv", x, y, ["a", "b", "c", "d"])
    folder = _model_folder(tmp_path / "model", pickle.dumps({"weights": [0.1, 0.2]}), _lock())
    alice, bob, carol = (actor_key(settings, n) for n in ("alice", "bob", "carol"))
    async with client.watch() as watcher:
        upload = await client.upload_dataset(csv, dataset="customers", version="7", label="label", uploader="pipeline")
        data_verdict = await watcher.wait(_answers(upload), 60)
        assert data_verdict is not None and data_verdict.data.decision != "fail", data_verdict
        train = DatasetRef(dataset="customers", version="7", sha256=data_verdict.data.sha256)
        built = await client.model_built(
            folder,
            model=MODEL,
            version=VERSION,
            builder="ci-bot",
            lockfile=folder / "requirements.txt",
            datasets=[train],
            upload=True,
        )
        artifact = await watcher.wait(_answers(built), 60)
        assert artifact is not None and artifact.data.decision == "pass", artifact.data.findings if artifact else None
        request = await client.request_promotion(
            alice, model=MODEL, version=VERSION, stage=STAGE, root_digest=artifact.data.root_digest
        )
        for approver in (bob, carol):
            await client.approve(approver, request_id=request.id, model=MODEL, version=VERSION, stage=STAGE)
        promoted = await watcher.wait(
            lambda e: (
                e.type == Subjects.VERDICT_PROMOTION
                and e.data.request_id == request.id
                and e.data.decision == "promoted"
            ),
            60,
        )
        assert promoted is not None
    hostile_id, raw = _hostile_envelope()
    await client.js.publish(Subjects.DATASET_UPLOADED, raw, headers={"Nats-Msg-Id": hostile_id})
    store: AuditStore = running.apps["audit-log"].state["store"]
    await until(lambda: store.find(hostile_id) is not None, what="the hostile event recorded")
    # The producers' side stops first; then audit-log records what is left and signs it all.
    for name in ("data-guard", "artifact-signer", "registry-gate"):
        await running.stop(name)
    await until(running.settled, what="audit-log caught up")
    mirror = mirror_reader(mirror_path(settings.data_dir))

    def covered() -> bool:
        found = mirror()
        return bool(found) and found[-1].tree_size == store.count()

    await until(covered, what="a signed checkpoint covering the whole trail")
    trust = await load_trust(client.js, load_root_public(None, settings.keys_dir), ["audit-log"])
    await running.stop("audit-log")
    hostile = store.find(hostile_id)
    assert hostile is not None
    return Trail(settings.data_dir, settings.audit_url, trust.history("audit-log"), hostile.seq, store.count())


@pytest.fixture
def page_url(trail: Trail) -> Iterator[str]:
    """The page served by uvicorn on a free port, as `mlwarden audit serve` serves it."""
    path = mirror_path(trail.data_dir)
    with AuditStore(trail.url, read_only=True) as store:
        deps = WebDeps(store, mirror_reader(path), trail.key, "trust store", f"local mirror {path}")
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(deps), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="audit-web", daemon=True)
        thread.start()
        try:
            until_sync(lambda: server.started, what="uvicorn listening")
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)


@pytest.fixture
def chromium() -> str:
    """The system Chromium's path; asked first, so a missing browser skips before the pipeline runs."""
    return _chromium()


@pytest.fixture
async def browser_page(chromium: str, page_url: str) -> AsyncIterator[Any]:
    """A Chromium page (1280 px wide) that records any dialog a script would open."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800}, base_url=page_url)
            page = await context.new_page()
            page.dialogs = []
            page.on("dialog", lambda d: page.dialogs.append(d.message))
            yield page
            await context.close()
        finally:
            await browser.close()


async def _shot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def _search(page: Any, trail: Trail) -> None:
    """Search: every entry listed, then one service's only."""
    await page.goto("/")
    assert await page.title() == "Search · mlwarden"
    rows = page.locator("#results tbody tr")
    assert await rows.count() == min(trail.entries, 50)
    await page.fill("input[name=service]", "registry-gate")
    await page.click("button[type=submit]")
    await page.wait_for_url("**/?*service=registry-gate*")
    services = await page.locator("#results tbody tr td:nth-child(4)").all_inner_texts()
    assert services and set(services) == {"registry-gate"}
    assert "promoted" in await page.locator("#results").inner_text()
    await page.goto("/")
    await _shot(page, "search")


async def _entry(page: Any, trail: Trail) -> None:
    """An entry: verified signer, body, proof checked against the latest checkpoint."""
    await page.goto("/?decision=promoted")
    await page.locator("#results tbody tr td a").first.click()
    await page.wait_for_selector("#proof-status")
    status = await page.inner_text("#proof-status")
    assert status == f"verified: included in the trail signed by audit-log at {trail.entries} entries"
    assert (await page.inner_text("#signer")).startswith("registry-gate")
    assert '"decision": "promoted"' in await page.inner_text("#body")
    await _shot(page, "entry")


async def _hostile(page: Any, trail: Trail) -> None:
    """An entry full of markup shows as text and runs nothing."""
    await page.goto("/?" + urlencode({"subject": f"dataset:{HOSTILE}:1"}))
    # The person sees the markup as text, in the results and on the entry; nothing ran: no
    # dialog, title untouched, no global set, no image element made from the uploader field.
    assert HOSTILE in await page.inner_text("#results")
    await page.goto(f"/entries/{trail.hostile_seq}")
    assert HOSTILE in await page.inner_text("#body")
    assert await page.title() == f"Entry {trail.hostile_seq} · mlwarden"
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert await page.locator("img").count() == 0
    assert page.dialogs == []
    assert "none verified" in await page.inner_text("#signer")
    assert (await page.inner_text("#proof-status")).startswith("verified")


async def _checkpoints(page: Any, trail: Trail) -> None:
    """The checkpoints, then a verification run from the button."""
    await page.goto("/checkpoints")
    first = page.locator("#checkpoints tbody tr").first
    assert (await first.locator("td").first.inner_text()) == str(trail.entries)
    assert "verified" in await first.inner_text()
    assert await page.inner_text("#verify-result") == "No verification run yet."
    await page.click("#run-verify")
    await page.wait_for_selector("div#verify-result")
    result = await page.inner_text("#verify-result")
    assert result.startswith(f"intact: {trail.entries} entries"), result
    await _shot(page, "checkpoints")


async def _timeline(page: Any, trail: Trail) -> None:
    """One model version's story, oldest first."""
    await page.goto("/timeline")
    await page.fill("input[name=model]", MODEL)
    await page.fill("input[name=version]", VERSION)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#timeline")
    steps = await page.locator("#timeline .step .what").all_inner_texts()
    assert steps[0] == "dataset verdict"
    assert steps[1:4] == ["model built", "artifact verdict", "promotion requested"]
    assert steps.count("approval") == 2
    assert steps[-1] == "promotion verdict"
    outcomes = await page.locator("#timeline .step .outcome").all_inner_texts()
    assert outcomes[-1] == f"promoted ({STAGE})"
    signers = await page.locator("#timeline .step .who").all_inner_texts()
    assert "signed by data-guard" in signers[0] and "signed by registry-gate" in signers[-1]
    await _shot(page, "timeline")


async def test_an_auditor_walks_every_view(chromium: str, browser_page: Any, trail: Trail) -> None:
    """One auditor's session over the pipeline's trail, each view checked and photographed."""
    for view in (_search, _entry, _hostile, _checkpoints, _timeline):
        await view(browser_page, trail)


def test_chromium_is_reachable_or_the_reason_is_stated(chromium: str) -> None:
    """Run alone, this tells whether the browser test above can run here."""
    assert Path(chromium).exists()
