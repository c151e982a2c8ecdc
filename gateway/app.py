"""The gateway: the public REST API of the mesh (DESIGN.md section 3), as a FastAPI app.

This module only wires: ``create_app(settings)`` builds the adapters in a lifespan (``gateway.deps.Services``),
installs the error handlers (``gateway.errors``) and middlewares, and includes the routers: ``images``
(upload, read, similar, content, encode), ``search``, ``models``, ``session`` (the browser's cookie), ``health``
(health, readiness, mesh status, metrics) and ``web`` (the page). In the production profile ``create_admin_app``
serves status, metrics and the API docs on their own port instead. Nothing imports this module but the entry
point (``gateway/__main__.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from nats.errors import Error as NatsError

from actors.adapters.config_client import ConfigClient
from actors.adapters.copy_pairs import CopyPairs
from actors.adapters.embedder import Embedder
from actors.adapters.events import Events
from actors.adapters.index_client import IndexClient
from actors.adapters.job_queues import job_queue_for
from actors.adapters.object_store import ObjectStore
from actors.adapters.record_index import RecordIndex
from actors.adapters.redis_client import redis_client
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.decode_budget import DecodeBudget
from actors.errors import MeshError
from actors.runtime import connect_nats
from actors.settings import Settings
from gateway import duplicates, health, images, library, live, metrics, models, search, session, web
from gateway.admission import Admission
from gateway.auth import ApiKeys
from gateway.deps import Services
from gateway.errors import install_error_handlers
from gateway.forms import UploadGuard
from gateway.intents import UploadIntents
from gateway.openapi import TAGS, MeshApi, unique_id

log = structlog.get_logger("gateway")


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect_nats(settings, "gateway")
        redis_url = settings.redis_url_for("gateway")  # its own ACL user (ops/stack/privileges.py)
        store = WorkflowStore(redis_url, settings.redis_prefix)
        embedder = Embedder(settings.triton_grpc_url, timeout_s=settings.triton_timeout_s)
        intents = UploadIntents(redis_url, settings.redis_prefix)
        listing = redis_client(redis_url)
        async with (
            ObjectStore(settings, identity="gateway") as objects,
            VectorIndex.from_settings(settings, user="gateway") as vectors,
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
                jobs=job_queue_for(settings, nc.jetstream()),  # JetStream's or Temporal's
                admission=Admission(nc, listing, settings, objects),
                decode_budget=DecodeBudget(settings.decode_budget_bytes),
                records=RecordIndex(listing, settings.redis_prefix),
                copies=CopyPairs(listing, settings.redis_prefix),
            )
            with contextlib.suppress(MeshError):  # Redis away at start: the first listing creates it
                await app.state.services.records.ensure()
            sweeper = asyncio.create_task(intents.run(store, objects), name="upload-intents")
            admin_port = settings.gateway_admin_port if settings.admin_port_split else None
            log.info("gateway.started", port=settings.gateway_port, admin_port=admin_port)
            yield
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        await intents.close()
        await listing.aclose()
        await embedder.close()
        await store.close()
        try:
            await nc.drain()
        except (TimeoutError, NatsError, OSError) as e:  # shutting down: a failed drain only loses time
            log.info("gateway.drain_failed", error=f"{type(e).__name__}: {e}")

    split = settings.admin_port_split  # production: /status, /metrics and the docs only on the admin port
    app = MeshApi(  # FastAPI with an OpenAPI document that matches the answers (gateway/openapi.py)
        title="Image similarity mesh",
        version="0.1.0",
        description="Upload images; find similar ones. Embeddings by Triton, search by Redis, work by NATS.",
        lifespan=lifespan,
        docs_url=None if split else "/docs",
        redoc_url=None if split else "/redoc",
        openapi_url=None if split else "/openapi.json",
        openapi_tags=TAGS,
        generate_unique_id_function=unique_id,
    )
    app.state.api_keys = ApiKeys.from_settings(settings)
    install_error_handlers(app)
    app.add_middleware(UploadGuard)
    metrics.install(app)
    app.include_router(images.router)
    app.include_router(library.router)
    app.include_router(live.router)
    app.include_router(search.router)
    app.include_router(duplicates.router)
    app.include_router(models.router)
    app.include_router(session.router)
    app.include_router(health.router)
    if not split:
        app.include_router(health.admin_router)
    app.include_router(web.router)
    return app


def create_admin_app(public: FastAPI) -> FastAPI:
    """What production serves on ``gateway_admin_port`` only: ``/status``, ``/metrics``, and the public API's
    ``/docs`` and ``/openapi.json``. It shares the public app's state (the services its lifespan builds) and
    runs no lifespan of its own."""
    admin = FastAPI(title="Image similarity mesh (admin)", docs_url=None, redoc_url=None, openapi_url=None)
    admin.state = public.state
    install_error_handlers(admin)
    admin.include_router(health.router)
    admin.include_router(health.admin_router)

    @admin.get("/openapi.json", include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(public.openapi())

    @admin.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{public.title} - docs")

    return admin
