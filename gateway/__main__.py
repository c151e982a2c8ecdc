"""``python -m gateway``: serve the REST API on ``MESH_HOST:MESH_GATEWAY_PORT``; SIGTERM drains, then exit 0."""

from __future__ import annotations

import asyncio
import signal

import uvicorn

from actors.runtime import OwnSignalsServer, configure_logging
from actors.settings import Settings
from gateway.app import create_app


async def serve(settings: Settings) -> None:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.gateway_port,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )
    server = OwnSignalsServer(config)  # we own the signals and only ask the server to finish
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    await server.serve()


def main() -> None:
    settings = Settings()
    configure_logging("gateway", settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
