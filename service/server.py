"""Run the server until SIGTERM or SIGINT (`python -m service serve`, or flags alone)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from service.api.auth import warn_if_open
from service.api.keys import SERVICES
from service.api.middleware import JsonErrorsRunner
from service.app import create_app
from service.logs import configure_logging
from service.settings import Settings, parse_settings
from service.store.files import StorageLocked

log = logging.getLogger("service")

# How long a stop waits for requests in flight. aiohttp's default (60 s) lets one stalled
# upload hold SIGTERM past a container's stop timeout, which then ends in SIGKILL.
REQUEST_DRAIN_SECONDS = 5.0


async def serve(settings: Settings) -> int:
    """Listen at once (so /health answers while the model loads); stop on a signal or a fatal error."""
    app = create_app(settings)
    runner = JsonErrorsRunner(app, access_log=None, shutdown_timeout=REQUEST_DRAIN_SECONDS)
    try:
        await runner.setup()
    except StorageLocked as exc:
        log.error("%s", exc)
        await runner.cleanup()
        return 2
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info(
            "listening on http://%s:%d (storage %s); loading model %s",
            settings.host,
            settings.port,
            settings.storage_dir.resolve(),
            settings.model,
        )
        warn_if_open(settings.host, settings.api_token)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        worker = app[SERVICES].worker
        stop_wait = asyncio.create_task(stop.wait())
        fatal_wait = asyncio.create_task(worker.fatal.wait())
        await asyncio.wait({stop_wait, fatal_wait}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stop_wait, fatal_wait):
            task.cancel()
        if worker.fatal_error is not None:
            log.error("stopping: %s", worker.fatal_error)
            return 1
        log.info("stopping: signal received")
        return 0
    finally:
        await runner.cleanup()
        log.info("stopped")


def run(argv: Sequence[str] | None = None) -> int:
    """Parse the server's flags, set up logging and serve; the exit status of the process."""
    settings = parse_settings(argv)
    try:
        configure_logging(settings)
    except OSError as exc:  # the log file's folder cannot be written
        print(f"cannot open the log file: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(settings))
    except OSError as exc:  # e.g. the port is taken
        log.error("cannot start: %s", exc)
        return 2
