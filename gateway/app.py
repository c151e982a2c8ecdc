"""The gateway: the public REST API of the mesh (DESIGN.md section 3), as a FastAPI app.

``create_app(settings)`` wires the adapters in a lifespan; routes live in ``gateway/images.py`` (the image API)
and ``gateway/health.py`` (health, readiness, mesh status, metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from nats.aio.client import Client
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from actors.adapters.config_client import ConfigClient, mesh_config_defaults
from actors.adapters.embedder import Embedder
from actors.adapters.events import Events
from actors.adapters.index_client import IndexClient
from actors.adapters.object_store import ObjectStore
from actors.adapters.vector_index import VectorIndex
from actors.adapters.workflow_store import WorkflowStore
from actors.errors import MeshError, RetryableError, ServiceCallError
from actors.runtime import connect_nats
from actors.settings import Settings
from gateway.forms import UploadGuard
from gateway.intents import UploadIntents
from gateway.validation import UploadError

log = structlog.get_logger("gateway")


class ApiError(Exception):
    """An error answered as ``{"error": {"code", "message"}}`` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


@dataclass
class Services:
    """What the routes use; built once in the lifespan."""

    settings: Settings
    nc: Client
    store: WorkflowStore
    objects: ObjectStore
    config: ConfigClient
    index: IndexClient  # the indexer actor over NATS: deletes, stats, duplicate groups
    # the read side of the same vector indexes, straight from Redis: a similarity query is one FT.SEARCH, and a
    # NATS hop to the indexer cost more than the search itself (docs/BENCHMARKS.md); writes stay with the indexer
    search: VectorIndex
    embedder: Embedder
    events: Events
    intents: UploadIntents


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc


async def services_dependency(request: Request) -> Services:
    """``services`` for ``Depends``: async, because FastAPI runs a plain ``def`` dependency in a worker thread
    (a thread hop on every request)."""
    return services(request)


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error the gateway answers: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


_ERROR_TEXT = {
    400: "bad input (empty, missing field, not an image, broken image, bad parameter)",
    401: "API keys are on and the request has no valid key",
    404: "no such image",
    409: "the image is not indexed yet",
    413: "over the byte or pixel limit",
    415: "a recognized image format that is not allowed",
    422: "malformed metadata",
    503: "a dependency is down; retry (see Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for these error statuses, all with the contract's error body."""
    return {s: {"model": ErrorBody, "description": _ERROR_TEXT[s]} for s in statuses}


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(error_body(e.code, e.message), status_code=e.status, headers=e.headers)

    @app.exception_handler(UploadError)
    async def _upload(_: Request, e: UploadError) -> JSONResponse:
        return JSONResponse(error_body(e.code, e.message), status_code=e.status)

    @app.exception_handler(RetryableError)
    async def _retryable(_: Request, e: RetryableError) -> JSONResponse:
        log.warning("request.unavailable", error=e.message)
        return JSONResponse(
            error_body("unavailable", e.message), status_code=503, headers={"Retry-After": "2"}
        )

    @app.exception_handler(ServiceCallError)
    async def _service(_: Request, e: ServiceCallError) -> JSONResponse:
        if e.retryable:
            return JSONResponse(
                error_body("unavailable", e.description), status_code=503, headers={"Retry-After": "2"}
            )
        return JSONResponse(error_body("upstream_error", e.message), status_code=502)

    @app.exception_handler(MeshError)
    async def _mesh(_: Request, e: MeshError) -> JSONResponse:
        return JSONResponse(error_body(e.code, e.message), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        missing = first.get("type") == "missing"
        code = "missing_field" if missing else "invalid_request"
        return JSONResponse(error_body(code, f"{where}: {first.get('msg', 'invalid')}"), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            e.status_code, "http_error"
        )
        return JSONResponse(error_body(code, str(e.detail)), status_code=e.status_code)


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await connect_nats(settings, "gateway")
        store = WorkflowStore(settings.redis_server_url, settings.redis_prefix)
        embedder = Embedder(settings.triton_grpc_url, timeout_s=settings.triton_timeout_s)
        intents = UploadIntents(settings.redis_server_url, settings.redis_prefix)
        async with ObjectStore(settings) as objects, VectorIndex.from_settings(settings) as vectors:
            app.state.services = Services(
                settings=settings,
                nc=nc,
                store=store,
                objects=objects,
                config=ConfigClient(nc, fallback=mesh_config_defaults(settings)),
                index=IndexClient(nc),
                search=vectors,
                embedder=embedder,
                events=Events(nc),
                intents=intents,
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
        with contextlib.suppress(Exception):
            await nc.drain()

    from gateway import health, images, metrics, models, search, web  # routes import Services from here

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
