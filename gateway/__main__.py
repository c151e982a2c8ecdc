"""``python -m gateway``: serve the REST API on ``MESH_HOST:MESH_GATEWAY_PORT`` (and, in production, /status,
/metrics and the docs on ``MESH_GATEWAY_ADMIN_PORT``); SIGTERM drains, then exit 0."""

from __future__ import annotations

import asyncio
import gc
import signal
from typing import Literal

import uvicorn
from fastapi import FastAPI

from actors.decode_budget import release_freed_memory_promptly
from actors.runtime import OwnSignalsServer, configure_logging
from actors.settings import Settings
from gateway.app import create_admin_app, create_app


async def serve(settings: Settings) -> None:
    app = create_app(settings)
    server = OwnSignalsServer(_config(app, settings.host, settings.gateway_port, "on"))  # we own the signals
    servers = [server]

    def stop() -> None:
        for s in servers:
            s.should_exit = True

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    if settings.admin_port_split:  # production: /status, /metrics and the docs on their own port
        admin_app = create_admin_app(app)  # no lifespan: the public app's builds and closes what both use
        servers.append(
            OwnSignalsServer(_config(admin_app, settings.host, settings.gateway_admin_port, "off"))
        )
    # what the imports and the app built lives as long as the process: out of the collector's sight, a full
    # collection scans only what came after, not ~150k objects (over 100 ms, paid by whichever request
    # happens to trigger it). Collected first, so that no garbage is kept for good.
    gc.collect()
    gc.freeze()
    await asyncio.gather(*(s.serve() for s in servers))


def _config(app: FastAPI, host: str, port: int, lifespan: Literal["on", "off"]) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,  # at "warning" its lines are dropped anyway; off, no request formats one first
        timeout_graceful_shutdown=10,
        lifespan=lifespan,
    )


def main() -> None:
    settings = Settings()
    configure_logging("gateway", settings.log_level)
    release_freed_memory_promptly()  # decoded frames go back to the kernel (actors/decode_budget.py)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
