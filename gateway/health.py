"""Health (alive), readiness (can accept uploads), the whole mesh's status, and Prometheus metrics.

``router`` (health, readiness) is always on the public port; ``admin_router`` (status, metrics) too in the local
profile, and only on the admin port in production (``gateway/app.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from actors import contract
from actors.errors import MeshError
from actors.settings import package_version
from gateway.deps import Services, services
from gateway.errors import error_responses
from gateway.replies import Health, MeshStatus, Readiness

router = APIRouter(tags=["health"])
admin_router = APIRouter(tags=["health"])


@router.get("/health", operation_id="health")
async def health() -> Health:
    """200 while the process is alive."""
    return {"status": "ok"}


async def _problems(svc: Services) -> dict[str, str]:
    """What the gateway needs to accept uploads: NATS, Redis and S3 (not Triton: work queues up meanwhile)."""
    problems: dict[str, str] = {}
    if not svc.nc.is_connected:
        problems["nats"] = "not connected"
    redis_p, s3_p = await asyncio.gather(svc.store.ping(), svc.objects.ping())
    if redis_p:
        problems["redis"] = redis_p
    if s3_p:
        problems["s3"] = s3_p
    return problems


@router.get(
    "/ready",
    operation_id="readiness",
    responses={  # answered as a JSONResponse (200 or 503): typed here, not checked again
        200: {"model": Readiness, "description": "NATS, Redis and S3 answer"},
        503: {"model": Readiness, "description": "`failed` names what does not answer"},
    },
)
async def ready(request: Request) -> JSONResponse:
    """200 when NATS, Redis and S3 answer; else 503 naming what failed."""
    problems = await _problems(services(request))
    if problems:
        return JSONResponse({"status": "unavailable", "failed": problems}, status_code=503)
    return JSONResponse({"status": "ready"})


async def _micro_services(svc: Services) -> dict[str, int]:
    """How many instances of each mesh service answer ``$SRV.PING`` (NATS micro discovery)."""
    counts: dict[str, int] = {}
    if not svc.nc.is_connected:
        return counts
    inbox = svc.nc.new_inbox()
    sub = await svc.nc.subscribe(inbox)
    try:
        await svc.nc.publish("$SRV.PING", b"", reply=inbox)
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(0.5):
                async for msg in sub.messages:
                    if not msg.data:  # no responders: NATS answers with an empty 503 status message
                        continue
                    name = json.loads(msg.data).get("name", "?")
                    counts[name] = counts.get(name, 0) + 1
    finally:
        await sub.unsubscribe()
    return counts


@admin_router.get("/status", operation_id="mesh_status", responses=error_responses(503))
async def status(request: Request) -> MeshStatus:
    """The whole mesh: each server, each actor service, the active index and Triton's models."""
    svc = services(request)
    problems = await _problems(svc)
    cfg = await svc.config.get()
    body: MeshStatus = {
        "version": package_version(),
        "workflow_engine": svc.settings.workflow_engine,
        "servers": {name: problems.get(name, "ok") for name in ("nats", "redis", "s3")},
        "services": await _micro_services(svc),
        "active_model": cfg.active_model,
        "triton": {},
        "index": {},
        "resources": {},
    }
    try:
        body["triton"] = {
            cfg.active_model: "ready" if await svc.embedder.ready(cfg.active_model) else "not ready"
        }
    except Exception as e:  # broad on purpose: the status page shows whatever Triton's client raised
        body["triton"] = {"error": str(e) or type(e).__name__}
    body["servers"]["triton"] = "ok" if body["triton"].get(cfg.active_model) == "ready" else "down"
    try:
        stats = await svc.index.stats(cfg.active_model)
        state = "ready" if stats.percent_indexed >= 1.0 or not stats.exists else "loading"
        body["index"] = {**_builtins(stats), "state": state}
    except MeshError as e:
        body["index"] = {"state": "unavailable", "error": e.message}
    try:
        body["resources"] = {k: _builtins(u) for k, u in (await svc.admission.usage(cfg)).items()}
    except MeshError as e:
        body["resources"] = {"error": e.message}
    engine = await svc.jobs.health()  # Temporal's frontend (its worker answers as the coordinator service)
    if engine is not None:
        body["servers"]["temporal"] = engine
    for name in (contract.CONFIG_SERVICE, contract.INDEXER_SERVICE, contract.COORDINATOR_SERVICE):
        body["services"].setdefault(name, 0)
    return body


def _builtins(x: Any) -> dict[str, Any]:
    """A msgspec struct or a dataclass as plain JSON values."""
    import msgspec

    out: dict[str, Any] = msgspec.to_builtins(x)
    return out


@admin_router.get("/metrics", response_class=PlainTextResponse, operation_id="metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text; the admission gauges (``mesh_resource_used``, ``mesh_resource_limit``) are read fresh."""
    svc: Services | None = getattr(request.app.state, "services", None)
    if svc is not None:
        with contextlib.suppress(MeshError):  # NATS away: the gauges keep their last values
            await svc.admission.usage(await svc.config.get())
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
