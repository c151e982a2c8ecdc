"""``python -m gateway``: serve the REST API on ``MESH_HOST:MESH_GATEWAY_PORT``."""

from __future__ import annotations

import uvicorn

from actors.runtime import configure_logging
from actors.settings import Settings
from gateway.app import create_app


def main() -> None:
    settings = Settings()
    configure_logging("gateway", settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.gateway_port,
        log_level="warning",
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
