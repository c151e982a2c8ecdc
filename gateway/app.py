"""The gateway: the public REST API of the mesh (DESIGN.md section 3), as a FastAPI app.

This module only wires: ``create_app(settings)`` builds the adapters in a lifespan (``gateway.deps.Services``),
installs the error handlers (``gateway.errors``) and middlewares, and includes the routers: ``images``
(upload, read, similar, content, encode), ``search``, ``models``, ``health`` (health, readiness, mesh status,
metrics) and ``web`` (the page). Nothing imports this module but the entry point (``gateway/__main__.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI
from nats.errors import Error as NatsError

from actors.adapters.config_client import ConfigClient
from actors.adapters.embedder import Embedder
from actors.adapters.events import Events
from actors.adapters.index_client import IndexClient
from actors.adapters.job_queue import JobQueue
from actors.adapters.object_store import ObjectStore
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.runtime import connect_nats
from actors.settings import Settings
from gateway import health, images, metrics, models, search, web
from gateway.deps import Services
from gateway.errors import install_error_handlers
from gateway.forms import UploadGuard
from gateway.intents import UploadIntents

log = structlog.get_logger("gateway")


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect_nats(settings, "gateway")
        store = WorkflowStore(settings.redis_server_url, settings.redis_prefix)
        embedder = Embedder(settings.triton_grpc_url, timeout_s=settings.triton_timeout_s)
        intents = UploadIntents(settings.redis_server_url, settings.redis_prefix)
        async with (
            ObjectStore(settings) as objects,
            VectorIndex.from_settings(settings) as vectors,
            ConfigClient.from_settings(nc, settings) as config,  # follows the Config DB (a KV watch)
        ):
            app.state.services = Services(
                settings=settings,
                nc=nc,
                store=store,
                objects=objects,
                config=config,
                index=IndexClient(nc),
                search=vectors,
                embedder=embedder,
                events=Events(nc),
                intents=intents,
                jobs=JobQueue(nc.jetstream()),
            )
            sweeper = asyncio.create_task(intents.run(store, objects), name="upload-intents")
            log.info("gateway.started", port=settings.gateway_port)
            yield
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await intents.close()
        await embedder.close()
        await store.close()
        try:
            await nc.drain()
        except (TimeoutError, NatsError, OSError) as e:  # shutting down: a failed drain only loses time
            log.info("gateway.drain_failed", error=f"{type(e).__name__}: {e}")

    app = FastAPI(
        title="Image similarity mesh",
        version="0.1.0",
        description="Upload images; find similar ones. Embeddings by Triton, search by Redis, work by NATS.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(UploadGuard)
    metrics.install(app)
    app.include_router(images.router)
    app.include_router(search.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(web.router)
    return app
