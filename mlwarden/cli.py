"""The `mlwarden` command line. Errors become exit codes here and nowhere else:
0 ok / pass, 1 fail / tampered, 2 usage or input error."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import nats.errors
from rich.markup import escape

from mlwarden.apikey_cli import add_api_key_commands
from mlwarden.artifact_cli import add_artifact_commands
from mlwarden.audit_cli import add_audit_commands
from mlwarden.cliutil import (
    EXIT_ERROR,
    EXIT_FAIL,
    EXIT_OK,
    HelpFormatter,
    _print_json,
    _settings,
    err,
    out,
    printable,
    redact_urls,
)
from mlwarden.keys_cli import add_keys_commands
from mlwarden.registry_cli import add_recall_commands, add_registry_commands
from mlwarden.serving_cli import add_serving_commands
from mlwarden.traffic_cli import add_traffic_commands
from shared.errors import InputError, MlwardenError
from shared.topology import SERVICES

# --- operators -----------------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    """Start embedded NATS (unless --nats) and every service until Ctrl-C."""
    from mlwarden.supervisor import System

    settings = _settings(args)
    if args.cluster and args.nats:
        raise InputError("--cluster runs its own NATS nodes: drop --nats")
    system = System(
        settings.data_dir.resolve(),
        nats_url=args.nats,
        port=args.port,
        cluster_size=args.cluster,
        metrics_port=None if args.no_metrics else args.metrics_port,
    )

    def stop_requested(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # Ctrl-C and SIGTERM (systemd, containers) both stop everything cleanly, also when SIGINT
    # was ignored by whatever started us in the background.
    signal.signal(signal.SIGINT, stop_requested)
    signal.signal(signal.SIGTERM, stop_requested)
    try:
        # Inside the try: a signal while the services start stops them too (issue 13).
        system.start()
        out.print(f"[bold green]mlwarden is up[/] on {system.url}; state in {system.data_dir}")
        metrics = system.metrics_urls()
        for name, proc in system.processes.items():
            where = f"  metrics {metrics[name]}/metrics" if name in metrics else ""
            out.print(f"  {name:16} pid {proc.pid}{where}")
        out.print("Ctrl-C stops everything.")
        while all(p.poll() is None for p in system.processes.values()):
            time.sleep(0.5)
        dead = [n for n, p in system.processes.items() if p.poll() is not None]
        err.print(f"[red]service exited:[/] {', '.join(dead)}; stopping")
        return EXIT_FAIL
    except KeyboardInterrupt:
        out.print("stopping...")
        return EXIT_OK
    finally:
        # A second Ctrl-C (or SIGTERM) while stopping must not abandon NATS and the services
        # half-stopped: the stop is bounded (STOP_TIMEOUT_S) anyway.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        system.stop()


def cmd_run(args: argparse.Namespace) -> int:
    """Run one service against a NATS URL, as compose does."""
    from mlwarden.services import serve
    from shared.service import ServiceApp

    settings = _settings(args)
    ready_file: Path | None = Path(args.ready_file) if args.ready_file else None

    def ready(svc: ServiceApp) -> None:
        if ready_file is not None:
            # The pid, then the metrics URL (when served): `mlwarden up` prints it. Written
            # whole, then renamed, so a reader never sees half of it.
            ready_file.parent.mkdir(parents=True, exist_ok=True)
            partial = ready_file.with_suffix(".partial")
            partial.write_text(f"{os.getpid()}\n{svc.probes.url if svc.probes else ''}\n")
            partial.replace(ready_file)

    asyncio.run(serve(args.service, settings, ready=ready))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """The scripted pipeline: every attack tried, every verdict shown."""
    from mlwarden.demo import run_demo

    return run_demo(_settings(args), nats_url=args.nats, console=out, metrics_port=args.metrics_port)


def cmd_nats_config(args: argparse.Namespace) -> int:
    """Write a nats-server config for the secured deployment: one user per identity (services,
    operator, producer, auditor, and each --actor) with least-privilege permissions, and one env
    file each. With --add-actor, add actors' users to an existing folder instead."""
    from mlwarden.nats_config import add_actor_identity, reload_server, write_config

    if args.add_actor:
        for name in args.add_actor:
            out.print(f"{name:16} {add_actor_identity(Path(args.out), name)}")
        if args.reload_pid is not None:
            reload_server(args.reload_pid)
        else:
            out.print("reload the server to admit them: nats-server --signal reload=PID (or SIGHUP)")
        return EXIT_OK
    config = write_config(
        Path(args.out),
        url=args.url,
        listen=args.listen,
        store_dir=Path(args.store_dir) if args.store_dir else None,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        force=args.force,
        actors=args.actor,
    )
    out.print(f"server:  nats-server -c {config.server_conf}")
    for identity, path in config.env_files.items():
        out.print(f"{identity:16} {path}")
    out.print("then, with operator.env: mlwarden keys init --nats $MLW_NATS_URL")
    return EXIT_OK


# --- producers and subscribers --------------------------------------------------------------


def cmd_publish(args: argparse.Namespace) -> int:
    """Publish a dataset, model, promotion, demotion, rollback or approval event."""
    from mlwarden.ops import publish, published_facts

    settings = _settings(args)
    event = asyncio.run(publish(settings, args))
    facts = published_facts(event, args)
    if args.format == "json":
        _print_json(facts)
    else:
        extra = "".join(f" {k}={v}" for k, v in facts.items() if k not in ("id", "type", "subject"))
        out.print(f"published {event.type} id={event.id}{extra}", markup=False)
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """Print verdicts, alerts and dead letters as they happen (`--format json`: one JSON object
    per line, with `verified` and, when not verified, `problem`)."""
    from mlwarden.ops import WatchFilter, watch

    wanted = WatchFilter(types=tuple(args.type), subjects=tuple(args.subject))

    async def until_stopped() -> None:
        # Ctrl-C and SIGTERM end the loop instead of cancelling it half-way: the subscriptions
        # and the connection close in order, and the exit is bounded even when they hang (a
        # loaded machine once kept a cancelled `watch` alive for over 60 s).
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        task = asyncio.create_task(
            watch(_settings(args), out, args.seconds, wanted=wanted, as_json=args.format == "json", stop=stop)
        )
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        done, _ = await asyncio.wait({task}, timeout=WATCH_STOP_S)
        stopped.cancel()
        if not done:
            err.print(f"watch: not closed within {WATCH_STOP_S:g} s of the stop request; exiting")
            sys.stdout.flush()
            # asyncio.run would wait for the stuck task's cancellation too: leave now (the server
            # drops the subscriptions with the connection).
            os._exit(EXIT_OK)
        task.result()  # a failure (NATS unreachable) is raised here

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(until_stopped())
    return EXIT_OK


#: How long `watch` may take to close its subscriptions and connection once asked to stop.
WATCH_STOP_S = 10.0


# --- offline checks for CI pipelines ------------------------------------------------------


def cmd_check_dataset(args: argparse.Namespace) -> int:
    """Run data-guard's detector suite on a file, without a bus."""
    from mlwarden.offline import check_dataset

    return check_dataset(args, out, _print_json)


def cmd_health(args: argparse.Namespace) -> int:
    """Exit 0 when every service answers its health request, JetStream has mlwarden's streams
    and every service key is trusted; 1 otherwise; 2 when NATS cannot be reached."""
    from rich.table import Table

    from mlwarden.ops import health

    report = asyncio.run(health(_settings(args)))
    if args.format == "json":
        _print_json(report.to_json())
    else:
        table = Table("service", "alive", "detail", "ms")
        for row in report.services:
            alive = "[green]yes[/]" if row.alive else "[red]no[/]"
            table.add_row(row.service, alive, row.detail, "" if row.latency_ms is None else f"{row.latency_ms:.1f}")
        out.print(table)
        for problem in report.problems:
            err.print(f"[red]unhealthy:[/] {escape(problem)}", soft_wrap=True)
        if report.healthy:
            out.print("healthy")
    return EXIT_OK if report.healthy else EXIT_FAIL


def cmd_schemas(args: argparse.Namespace) -> int:
    """Print the JSON Schema (2020-12) of every message by subject: the whole signed envelope of
    each stored subject, and the request and reply bodies of each request/reply subject."""
    from shared.asyncapi import build_json_schemas

    _print_json(build_json_schemas())
    return EXIT_OK


def cmd_asyncapi(args: argparse.Namespace) -> int:
    """Print the AsyncAPI 3.0 document of the bus (generated from the topology and schemas)."""
    from shared.asyncapi import build_asyncapi

    _print_json(build_asyncapi())
    return EXIT_OK


PUBLISH_HELP = {
    "dataset": "Upload a dataset version to the object store and announce it for data-guard to check.",
    "model": "Upload a model folder (and its lock file) and announce the build for artifact-signer to hash, "
    "scan and sign.",
    "promotion": "Request that a model version (by its root digest) enter a stage; registry-gate decides once "
    "the verdicts and approvals are in.",
    "approval": "Approve a promotion, demotion or rollback request (by its id), signed by a reviewer.",
    "demotion": "Request that a model version, the stage's current one, leave the stage (nothing is current there "
    "afterwards); approved like a promotion to that stage.",
    "rollback": "Request that a version the stage held before (by the root digest it was promoted with) become "
    "current again; approved and checked like a promotion.",
}


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    parser = argparse.ArgumentParser(
        prog="mlwarden", description="Secure an ML pipeline from data to deployment.", formatter_class=HelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser, *, nats: bool = True) -> None:
        p.add_argument("--data-dir", help="state folder (default ./.mlwarden or $MLW_DATA_DIR)")
        if nats:
            p.add_argument("--nats", help="NATS URL (default $MLW_NATS_URL or nats://127.0.0.1:4222)")

    def add(
        name: str, fn: Callable[[argparse.Namespace], int], parent: Any = sub, **kw: Any
    ) -> argparse.ArgumentParser:
        kw.setdefault("help", fn.__doc__)
        kw.setdefault("formatter_class", HelpFormatter)
        kw.setdefault("description", fn.__doc__)
        p: argparse.ArgumentParser = parent.add_parser(name, **kw)
        p.set_defaults(func=fn)
        return p

    p = add("up", cmd_up)
    common(p)
    p.add_argument("--port", type=int, default=0, help="embedded NATS port (default: a free one)")
    p.add_argument(
        "--cluster",
        type=int,
        default=0,
        metavar="N",
        help="run an N-node JetStream cluster on loopback (free ports, streams replicated min(N, 3) times)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=_default_metrics_base(),
        metavar="BASE",
        help=(
            "serve each service's /metrics, /healthz, /readyz on 127.0.0.1:BASE+i, i its place in"
            f" {', '.join(SERVICES)} (0: free ports, printed; default $MLW_METRICS_PORT or %(default)s)"
        ),
    )
    p.add_argument("--no-metrics", action="store_true", help="serve no metrics or probes")

    p = add("run", cmd_run)
    p.add_argument("service", choices=SERVICES, help="which service to run")
    common(p)
    p.add_argument("--ready-file", help=argparse.SUPPRESS)

    p = add("demo", cmd_demo)
    common(p)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="BASE",
        help="serve each service's metrics on BASE+i (0: free ports) and print what they counted (default: off)",
    )

    keys = add_keys_commands(sub, add, common)
    add_api_key_commands(keys, add, common)

    p = add("nats-config", cmd_nats_config)
    p.add_argument("--out", required=True, help="folder for nats-server.conf, auth.conf and <identity>.env")
    p.add_argument("--url", default="nats://127.0.0.1:4222", help="URL(s) clients dial, comma-separated")
    p.add_argument("--listen", help="server listen address (default 127.0.0.1 on the URL's port)")
    p.add_argument("--store-dir", help="JetStream store folder (default OUT/jetstream)")
    p.add_argument("--tls-cert", help="server TLS certificate (PEM); clients then dial tls://")
    p.add_argument("--tls-key", help="server TLS private key (PEM)")
    p.add_argument("--force", action="store_true", help="overwrite an existing config (rotates every password)")
    p.add_argument(
        "--actor", action="append", default=[], help="give this actor its own producer user and inbox (repeatable)"
    )
    p.add_argument("--add-actor", action="append", default=[], help="add an actor's user to the existing --out")
    p.add_argument("--reload-pid", type=int, help="with --add-actor: signal this local nats-server to reload")

    pub = sub.add_parser("publish", help="publish an event").add_subparsers(dest="kind", required=True)

    def signed(p: argparse.ArgumentParser) -> None:
        common(p)
        p.add_argument(
            "--format",
            choices=["text", "json"],
            default="text",
            help="json: one object with the event id and what a next step needs (sha256, root_digest, request_id)",
        )
        p.add_argument(
            "--key", type=Path, help="your actor's Ed25519 private key, PEM (default $MLW_ACTOR_KEY; dev: demo actors)"
        )
        p.add_argument("--actor", help="your actor id in the trust store (default: the key file's name)")

    p = add("dataset", cmd_publish, pub, description=PUBLISH_HELP["dataset"], help=PUBLISH_HELP["dataset"])
    signed(p)
    p.add_argument("path", type=Path, help="the dataset file (csv, parquet or npz)")
    p.add_argument("--name", required=True, help="dataset name")
    p.add_argument("--version", default="1", help="dataset version")
    p.add_argument("--label", help="the label column, for the label checks")
    p.add_argument("--uploader", help="actor id that uploads (default: the signing key's actor)")
    p.add_argument(
        "--sensitivity",
        default="internal",
        choices=["public", "internal", "confidential", "restricted"],
        help="classification (confidential and restricted are encrypted before they leave this machine)",
    )
    p.add_argument("--readers", default="", help="comma-separated allow-list of principals")
    p = add("model", cmd_publish, pub, description=PUBLISH_HELP["model"], help=PUBLISH_HELP["model"])
    signed(p)
    p.add_argument("path", type=Path, help="the model file or folder")
    p.add_argument("--name", required=True, help="model name")
    p.add_argument("--version", default="1", help="model version")
    p.add_argument("--lockfile", type=Path, help="the build's lock file, with hashed pins (requirements.txt, uv.lock)")
    p.add_argument("--dataset", action="append", default=[], help="NAME:VERSION:SHA256 of a training dataset")
    p.add_argument("--builder", help="actor id that built it (default: the signing key's actor)")
    p.add_argument(
        "--local",
        action="store_true",
        help="send the folder's local path, not an upload to mlw-artifacts (artifact-signer must see this disk)",
    )
    versions = {
        "promotion": "the model version to promote",
        "approval": "the model version the request names",
        "demotion": "the version currently in the stage",
        "rollback": "the earlier version to put back",
    }
    for kind in ("promotion", "approval", "demotion", "rollback"):
        p = add(kind, cmd_publish, pub, description=PUBLISH_HELP[kind], help=PUBLISH_HELP[kind])
        signed(p)
        p.add_argument("--model", required=True, help="model name")
        p.add_argument("--version", required=True, help=versions[kind])
        p.add_argument("--stage", default="production", help="a stage the registry policy declares")
        if kind == "promotion":
            p.add_argument(
                "--root-digest", required=True, help="the artifact's root digest (`publish model --format json`)"
            )
        elif kind == "rollback":
            p.add_argument(
                "--root-digest",
                required=True,
                help="the root digest that version was promoted with (`registry status --format json`)",
            )
        elif kind == "approval":
            p.add_argument(
                "--request-id",
                required=True,
                help="the request's id (`publish promotion|demotion|rollback --format json`)",
            )
        if kind in ("demotion", "rollback"):
            p.add_argument("--reason", required=True, help="why (audited; required)")

    p = add("watch", cmd_watch)
    common(p)
    p.add_argument("--seconds", type=float, default=None, help="stop after this long (default: until Ctrl-C)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="json: one JSON object per line")
    p.add_argument(
        "--type", action="append", default=[], help="only events of this type, e.g. mlw.verdict.* (repeatable)"
    )
    p.add_argument(
        "--subject", action="append", default=[], help="only events about this subject, e.g. model:iris:* (repeatable)"
    )

    add_audit_commands(sub, add, common)

    check = sub.add_parser("check", help="offline checks").add_subparsers(dest="check_cmd", required=True)
    p = add("dataset", cmd_check_dataset, check)
    p.add_argument("data", type=Path, help="the dataset file (csv, parquet or npz)")
    p.add_argument("--label", help="the label column, for the label checks")
    p.add_argument("--reference", type=Path, help="trusted reference data, for drift and poisoning checks")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    add_traffic_commands(check, add)
    add_serving_commands(sub, add, common)

    add_artifact_commands(sub, add)
    add_registry_commands(sub, add, common)
    add_recall_commands(sub, add, common)

    p = add("health", cmd_health)
    common(p)
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format")

    add("schemas", cmd_schemas)
    add("asyncapi", cmd_asyncapi)
    return parser


#: `mlwarden up`'s first metrics port when $MLW_METRICS_PORT is unset: audit-log 9460 ... serving-monitor 9464.
DEFAULT_METRICS_BASE = 9460


def _default_metrics_base() -> int:
    value = os.environ.get("MLW_METRICS_PORT", "")
    return int(value) if value.isdigit() else DEFAULT_METRICS_BASE


def _version() -> str:
    """The installed mlwarden's version (its package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlwarden")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mlwarden` console script."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_ERROR if exc.code not in (0, None) else EXIT_OK
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "run" else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "subject_model", None) and not getattr(args, "subject", None):
        args.subject = f"model:{args.subject_model}:*"
    try:
        return int(args.func(args))
    except (MlwardenError, OSError, ValueError) as exc:
        # Connection failures arrive here as `cliutil.BusError`s (MlwardenError): one line each.
        return _fail(exc)
    except (nats.errors.Error, TimeoutError) as exc:
        # A NATS failure from a path that does not go through `cliutil.bus_client`.
        return _fail(exc, prefix="NATS: ")


def _fail(exc: BaseException, *, prefix: str = "") -> int:
    """Print `exc` as one line on stderr (never wrapped, never read as markup); exit code 2."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    # An error may quote a URL with its password, or a stored field (issue 8).
    err.print(f"[red]error:[/] {escape(printable(redact_urls(prefix + text)))}", soft_wrap=True)
    return EXIT_ERROR
