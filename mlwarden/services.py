"""Where each service's app factory lives, and how to run one."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
from collections.abc import Callable

from shared.service import ServiceApp
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


async def serve(name: str, settings: Settings, *, ready: Callable[[], None] | None = None) -> None:
    """Run one service until SIGINT/SIGTERM."""
    svc = factory(name)(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with svc.app:
        logging.getLogger("mlwarden").info("%s serving on %s", name, settings.nats_url_redacted)
        if ready is not None:
            ready()
        await stop.wait()
