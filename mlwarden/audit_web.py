"""`mlwarden audit serve`: a read-only web page for auditors over the audit database.

Four views, each also as JSON under `/api/`: search (the `mlw.audit.query` filters of
`services.audit_log.query.run_query`, keyset pages), one entry (its verified signer, body and
inclusion proof checked by `services.audit_log.browse.check_entry`), the signed checkpoints with
the result of a verification run (`services.audit_log.verify.verify_trail`), and one model
version's timeline.

Server-rendered with Jinja2 autoescaping: every stored string is attacker-written, and is only
ever shown as text. The Content-Security-Policy allows no script at all, so even a template
mistake could not run one; the Host header must name this server (no DNS rebinding from a page
the auditor has open elsewhere).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from services.audit_log import browse
from services.audit_log.checkpoint import AuditKey, CheckpointMirror
from services.audit_log.errors import StoreUnavailableError
from services.audit_log.query import run_query
from services.audit_log.store import AuditStore, StoredEntry
from services.audit_log.verify import TrailReport, verify_trail
from shared.errors import InputError, MlwardenError
from shared.events import AuditCheckpoint, AuditPage, AuditQuery

_TEMPLATES: Final = Path(__file__).parent / "templates" / "audit"
#: Entries a page shows unless asked otherwise.
PAGE_SIZE: Final = 50
#: Checkpoints listed, newest first.
CHECKPOINTS_SHOWN: Final = 20
#: The filters of the search form, in the order shown; each is a `shared.events.AuditQuery` field.
FILTERS: Final = ("service", "type", "subject", "actor", "decision", "client")
_CSP: Final = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class VerificationRun:
    """One run of `verify_trail` from the page, as shown on the checkpoints view."""

    ok: bool
    reason: str
    report: TrailReport
    started: float
    took_s: float


@dataclass
class WebDeps:
    """What the page reads: the store (opened read-only), checkpoints and audit-log's key."""

    store: AuditStore
    #: Every signed checkpoint, in signing order (read on each request: the trail grows).
    checkpoints: Callable[[], list[AuditCheckpoint]]
    #: audit-log's public key; None makes every proof "NOT verified".
    key: AuditKey | None
    #: Where the key and the checkpoints came from, shown to the auditor.
    key_source: str = "none"
    checkpoint_source: str = ""
    last_run: VerificationRun | None = None
    _verify_lock: threading.Lock = field(default_factory=threading.Lock)

    def latest_checkpoint(self) -> AuditCheckpoint | None:
        """The newest signed checkpoint (largest tree, as published last)."""
        found = self.checkpoints()
        return found[-1] if found else None


def mirror_reader(path: Path) -> Callable[[], list[AuditCheckpoint]]:
    """The checkpoints of audit-log's mirror file, re-read only when the file changed."""
    mirror = CheckpointMirror(path)
    cache: dict[tuple[int, int], list[AuditCheckpoint]] = {}
    lock = threading.Lock()

    def read() -> list[AuditCheckpoint]:
        try:
            info = path.stat()
        except FileNotFoundError:
            return []
        key = (info.st_mtime_ns, info.st_size)
        with lock:
            if key not in cache:
                cache.clear()
                cache[key] = mirror.read()
            return cache[key]

    return read


# --- pure request parsing --------------------------------------------------------------------


def parse_time_param(value: str) -> float:
    """Unix seconds, or an ISO 8601 time (a form's `datetime-local`), UTC when no offset."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InputError(f"not a time: {value!r} (unix seconds or 2026-11-01T00:00)") from exc
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def parse_query(params: Mapping[str, str]) -> AuditQuery:
    """The `AuditQuery` a search form or API call asks for; empty fields are no filter."""
    given = {k: v.strip() for k, v in params.items() if v.strip()}
    fields: dict[str, Any] = {name: given[name] for name in FILTERS if name in given}
    for name in ("since", "until"):
        if name in given:
            fields[name] = parse_time_param(given[name])
    for name in ("limit", "cursor"):
        if name in given:
            try:
                fields[name] = int(given[name])
            except ValueError as exc:
                raise InputError(f"{name} must be a whole number, got {given[name]!r}") from exc
    fields.setdefault("limit", PAGE_SIZE)
    try:
        return AuditQuery(**fields)
    except ValidationError as exc:
        raise InputError("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from exc


def same_origin(headers: Mapping[str, str]) -> bool:
    """Whether a request comes from this page, or from no page at all (curl, scripts).

    Browsers say where a request comes from in `Sec-Fetch-Site`; older ones in `Origin` only.
    """
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = headers.get("origin")
    return origin is None or urlsplit(origin).netloc == headers.get("host")


def stamp(seconds: float | None) -> str:
    """A UTC time a person reads: 2026-11-29 03:04:05Z (milliseconds when they matter)."""
    if seconds is None:
        return ""
    when = datetime.fromtimestamp(seconds, UTC)
    text = when.strftime("%Y-%m-%d %H:%M:%S")
    return f"{text}.{when.microsecond // 1000:03d}Z" if when.microsecond >= 1000 else f"{text}Z"


def _form_time(seconds: float | None) -> str:
    return "" if seconds is None else datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


# --- the application ---------------------------------------------------------------------------


def _environment() -> Environment:
    # autoescape=True for every template, whatever its name: nothing rendered here is trusted.
    env = Environment(loader=FileSystemLoader(_TEMPLATES), autoescape=True, undefined=StrictUndefined)
    env.filters["stamp"] = stamp
    env.filters["pretty"] = _pretty
    return env


def create_app(deps: WebDeps, *, allowed_hosts: list[str] | None = None) -> Starlette:
    """The web application over `deps` (its store must have been opened read-only)."""
    if not deps.store.read_only:
        raise InputError("the audit web page needs a store opened read-only")
    env = _environment()

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(key_source=deps.key_source, **context)
        return HTMLResponse(html, status_code=status, headers=_HEADERS)

    def data(value: Any, status: int = 200) -> Response:
        return Response(orjson.dumps(value), status_code=status, media_type="application/json", headers=_HEADERS)

    def fail(request: Request, status: int, message: str) -> Response:
        if request.url.path.startswith("/api/"):
            return data({"error": message}, status)
        return page("error.html", status, message=message)

    def search(request: Request) -> Response:
        """Search the trail (the search form and its results)."""
        try:
            query = parse_query(request.query_params)
            result = run_query(deps.store, query)
        except InputError as exc:
            return fail(request, 400, str(exc))
        if request.url.path.startswith("/api/"):
            return data(result.model_dump(mode="json"))
        form = {name: request.query_params.get(name, "") for name in FILTERS}
        form.update(since=_form_time(query.since), until=_form_time(query.until))
        more = dict(request.query_params) | {"cursor": str(result.next_cursor)} if result.next_cursor else None
        return page("search.html", page=result, form=form, more=more, signers=_signers(result))

    def entry(request: Request) -> Response:
        """One entry, its verified signer and its inclusion proof checked against the latest checkpoint."""
        seq = int(request.path_params["seq"])
        rows = deps.store.select_entries(deps.store.table.c.seq == seq, limit=1)
        if not rows:
            return fail(request, 404, f"no entry {seq} in the audit trail")
        stored = rows[0]
        check = browse.check_entry(deps.store, stored, deps.latest_checkpoint(), deps.key)
        signer = browse.verified_signer(stored)
        event = browse.parse_body(stored)
        if request.url.path.startswith("/api/"):
            return data(_entry_json(stored, event, signer, check))
        return page("entry.html", entry=stored, event=event, signer=signer, check=check)

    def checkpoints(request: Request) -> Response:
        """The latest signed checkpoints, and the last verification run."""
        found = deps.checkpoints()
        rows = browse.check_checkpoints(reversed(found[-CHECKPOINTS_SHOWN:]), deps.key)
        if request.url.path.startswith("/api/"):
            return data(
                {
                    "total": len(found),
                    "source": deps.checkpoint_source,
                    "checkpoints": [
                        r.checkpoint.model_dump(mode="json") | {"verified": r.verified, "reason": r.reason}
                        for r in rows
                    ],
                    "last_run": _run_json(deps.last_run),
                }
            )
        return page("checkpoints.html", rows=rows, total=len(found), source=deps.checkpoint_source, run=deps.last_run)

    def verify(request: Request) -> Response:
        """Run a verification of the whole trail now (one at a time), then show its result."""
        if not same_origin(request.headers):
            # A page on another site posting here (the auditor's browser can reach localhost).
            return fail(request, 403, "a verification is started from this page only")
        with deps._verify_lock:
            started = time.time()
            begin = time.perf_counter()
            found = deps.checkpoints()
            report = verify_trail(deps.store, found, deps.key)
            ok, reason = _conclusion(report, found, deps.checkpoint_source)
            deps.last_run = VerificationRun(ok, reason, report, started, time.perf_counter() - begin)
        if request.url.path.startswith("/api/"):
            return data(_run_json(deps.last_run))
        return RedirectResponse("/checkpoints", status_code=303, headers=_HEADERS)

    def timeline(request: Request) -> Response:
        """One model version's story: dataset verdicts, artifact verdict, approvals, promotion."""
        model = request.query_params.get("model", "").strip()
        version = request.query_params.get("version", "").strip()
        steps: list[browse.TimelineStep] = []
        if model or version:
            try:
                steps = browse.model_timeline(deps.store, model, version)
            except InputError as exc:
                return fail(request, 400, str(exc))
        if request.url.path.startswith("/api/"):
            return data({"model": model, "version": version, "steps": [_step_json(s) for s in steps]})
        return page("timeline.html", model=model, version=version, steps=steps)

    def style(_request: Request) -> Response:
        return Response((_TEMPLATES / "style.css").read_bytes(), media_type="text/css", headers=_HEADERS)

    def trouble(request: Request, exc: Exception) -> Response:
        # The store's errors (database unavailable, an unreadable entry) reach the auditor as
        # a page that says so, never as a traceback.
        status = 503 if isinstance(exc, StoreUnavailableError) else 500
        return fail(request, status, str(exc))

    routes = [
        Route("/", search),
        Route("/api/entries", search),
        Route("/entries/{seq:int}", entry),
        Route("/api/entries/{seq:int}", entry),
        Route("/checkpoints", checkpoints),
        Route("/api/checkpoints", checkpoints),
        Route("/verify", verify, methods=["POST"]),
        Route("/api/verify", verify, methods=["POST"]),
        Route("/timeline", timeline),
        Route("/api/timeline", timeline),
        Route("/style.css", style),
    ]
    hosts = allowed_hosts or ["127.0.0.1", "localhost", "[::1]", "::1"]
    return Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={MlwardenError: trouble},
    )


def _conclusion(report: TrailReport, checkpoints: list[AuditCheckpoint], source: str) -> tuple[bool, str]:
    """ok and why not, by `mlwarden audit verify`'s own rule (an unanchored trail is not ok)."""
    from mlwarden.audit_cli import Checkpoints, _conclude

    verdict = _conclude(report, Checkpoints(checkpoints, source), None, False)
    return verdict.ok, verdict.reason


def _signers(page: AuditPage) -> dict[int, bool]:
    """seq -> whether the entry's signer was verified when recorded (for the result table)."""
    return {e.seq: (e.service or e.actor) is not None for e in page.entries}


def _entry_json(
    stored: StoredEntry, event: dict[str, Any] | None, signer: browse.Signer, check: browse.ProofCheck
) -> dict[str, Any]:
    cp = check.checkpoint
    return {
        "seq": stored.seq,
        "leaf_index": stored.leaf_index,
        "event_id": stored.event_id,
        "type": stored.type,
        "subject": stored.subject,
        "service": stored.service,
        "actor": stored.actor,
        "decision": stored.decision,
        "time": stored.time,
        "recorded_at": stored.recorded_at,
        "entry_hash": stored.entry_hash,
        "signer": {"verified": signer.verified, "claimed": signer.claimed, "note": signer.note},
        "event": event,
        "proof": {
            "verified": check.verified,
            "reason": check.reason,
            "checkpoint": cp.model_dump(mode="json") if cp is not None else None,
            "inclusion_path": list(check.path),
        },
    }


def _run_json(run: VerificationRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    r = run.report
    return {
        "ok": run.ok,
        "reason": run.reason,
        "entries": r.entries,
        "checkpoints": r.checkpoints,
        "verified_size": r.verified_size,
        "first_bad_seq": r.first_bad_seq,
        "root_hash": r.root_hash,
        "started": run.started,
        "took_s": run.took_s,
    }


def _step_json(step: browse.TimelineStep) -> dict[str, Any]:
    e = step.entry
    return {
        "seq": e.seq,
        "time": e.time,
        "type": e.type,
        "step": step.step,
        "outcome": step.outcome,
        "subject": e.subject,
        "decision": e.decision,
        "signer": step.signer.verified,
        "signer_note": step.signer.note,
    }
