"""Where each service's app factory lives, and how to run one."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from collections.abc import Callable

from shared.service import STOP_GRACE_S, ServiceApp
from shared.settings import Settings
from shared.topology import SERVICES

FACTORIES: dict[str, str] = {name: f"services.{name.replace('-', '_')}.app:create_app" for name in SERVICES}


def factory(name: str) -> Callable[[Settings], ServiceApp]:
    """The `create_app` of service `name`."""
    if name not in FACTORIES:
        raise KeyError(f"unknown service {name!r}; one of {', '.join(SERVICES)}")
    module, attr = FACTORIES[name].split(":")
    fn: Callable[[Settings], ServiceApp] = getattr(importlib.import_module(module), attr)
    return fn


async def serve(name: str, settings: Settings, *, ready: Callable[[ServiceApp], None] | None = None) -> None:
    """Run one service until SIGINT/SIGTERM.

    The signal handlers come first: a stop request is honoured at any moment, also while the
    service is still waiting for NATS or starting (issue 13: it once waited 674 s for an
    unreachable server and ignored both signals). Stopping is bounded by `STOP_GRACE_S`;
    whatever was not acknowledged by then is redelivered by JetStream.
    """
    log = logging.getLogger("mlwarden")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    svc = factory(name)(settings)
    starting = asyncio.create_task(svc.start(), name=f"{name}:start")
    stop_requested = asyncio.create_task(stop.wait(), name=f"{name}:stop")
    try:
        await asyncio.wait({starting, stop_requested}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("%s: stop requested before it started; stopping", name)
            starting.cancel()
            # The start-up closes what it opened when cancelled (ServiceApp._startup).
            await asyncio.wait({starting}, timeout=STOP_GRACE_S)
            return
        starting.result()  # a start-up that failed raises here
        log.info("%s serving on %s", name, settings.nats_url_redacted)
        if ready is not None:
            ready(svc)
        await stop_requested
        log.info("%s: stopping", name)
        if not await svc.stop(STOP_GRACE_S):
            log.warning("%s: exiting without a clean stop (unacknowledged messages are redelivered)", name)
    finally:
        stop_requested.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
