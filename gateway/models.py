"""The models: which ones Triton serves, which is active, and switching the active one without downtime.

``GET /models`` lists them with the state of the latest switch (``actors/model_switch.py`` drives it in the
coordinator). ``POST /models/switch`` asks for a switch. The gateway's NATS user may not write the Config DB
(least privilege: nor could it raise the upload limits), so the request is checked here (Triton serves the
model, and it takes images), left in Redis, and the coordinator's switcher sets ``next_model`` within a second.
An operator can set ``next_model`` directly instead (README, "Model switch").
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import msgspec
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from actors.adapters.embedder import EmbedderException, EmbedderUnavailable, ModelInfo
from actors.adapters.vector_index import MODEL_RE
from actors.errors import MeshError, RetryableError
from actors.model_switch import read_progress, request_key, switch_target
from actors.settings import Settings
from gateway.app import ApiError, Services, services_dependency
from gateway.images import require_api_key

router = APIRouter(dependencies=[Depends(require_api_key)], tags=["models"])
Svc = Annotated[Services, Depends(services_dependency)]

# Triton reports per-model counters for every model it loaded, used or not
_METRIC_MODEL = re.compile(r'^nv_inference_count\{[^}]*model="([^"]+)"', re.MULTILINE)


class SwitchRequest(BaseModel):
    model: str = Field(description="the image model to make active (one Triton serves)", max_length=64)


def configured_models(settings: Settings) -> set[str]:
    """The models this deployment's repository is meant to hold (``MESH_MODELS``)."""
    names = {"efficientnet_lite0"}
    if "clip" in settings.model_set:
        names |= {f"{settings.clip_prefix}_image", f"{settings.clip_prefix}_text"}
    return names


async def metrics_models(settings: Settings) -> set[str]:
    """The models Triton reports metrics for (its repository API is closed to clients); empty on failure."""
    host = settings.triton_grpc_url.rsplit(":", 1)[0]
    try:
        async with httpx.AsyncClient(timeout=2.0) as c:
            r = await c.get(f"http://{host}:{settings.triton_metrics_port}/metrics")
    except httpx.HTTPError:
        return set()
    return set(_METRIC_MODEL.findall(r.text)) if r.status_code == 200 else set()


@asynccontextmanager
async def switch_redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    """A short-lived client: these routes are for operators, not the hot path."""
    client = aioredis.Redis.from_url(settings.redis_server_url, socket_timeout=5, socket_connect_timeout=3)
    try:
        yield client
    except (aioredis.RedisError, OSError) as e:
        raise RetryableError(f"redis unavailable: {e}") from e
    finally:
        await client.aclose()


async def describe(svc: Services, name: str) -> dict[str, Any] | None:
    """One model as Triton serves it (None when it does not), with its index's size for image models."""
    try:
        info: ModelInfo = await svc.embedder.model_info(name)
    except EmbedderUnavailable:
        return {"name": name, "kind": None, "dim": None, "ready": False}
    except EmbedderException:
        return None
    body: dict[str, Any] = {
        "name": name,
        "kind": info.kind,
        "dim": info.dim,
        "ready": await svc.embedder.ready(name),
    }
    if info.kind == "image":
        try:
            body["vectors"] = (await svc.index.stats(name)).num_docs
        except MeshError:
            body["vectors"] = None
    return body


@router.get("/models")
async def list_models(svc: Svc) -> dict[str, Any]:
    """Every model Triton serves, which one is active, and the latest switch (state, `done`/`total` images).

    `switch.state`: `building` (re-embedding the done images under the new model; the active one serves),
    `swapping`, `done`, `failed` (with `reason`) or `cancelled`.
    """
    cfg = await svc.config.get()
    names = configured_models(svc.settings) | await metrics_models(svc.settings) | {cfg.active_model}
    target = switch_target(cfg)
    if target:
        names.add(target)
    found = await asyncio.gather(*(describe(svc, n) for n in sorted(names)))
    models = [m | {"active": m["name"] == cfg.active_model} for m in found if m is not None]
    async with switch_redis(svc.settings) as r:
        progress = await read_progress(r, svc.settings.redis_prefix, target)
        requested = await r.get(request_key(svc.settings.redis_prefix))
    return {
        "active": cfg.active_model,
        "next": target,
        "requested": msgspec.json.decode(requested).get("model") if requested else None,
        "models": models,
        "switch": None if progress is None else msgspec.to_builtins(progress),
    }


@router.post(
    "/models/switch",
    status_code=202,
    responses={
        200: {"description": "the model is already active and no switch is running: nothing to do"},
        400: {"description": "Triton does not serve this model, or it is not an image model"},
        503: {"description": "Triton or Redis is down: retry later"},
    },
)
async def request_switch(body: SwitchRequest, svc: Svc) -> Any:
    """Make `model` the active model without downtime: its index is built in the background (every done
    image re-embedded) while the active one keeps answering, then they swap. Poll `GET /models`.

    Asking for the active model while a switch runs cancels that switch.
    """
    model = body.model
    if not MODEL_RE.match(model):
        raise ApiError(400, "unknown_model", f"{model[:64]!r} is not a model name")
    try:
        info = await svc.embedder.model_info(model)
    except EmbedderUnavailable as e:
        raise ApiError(503, "unavailable", str(e), headers={"Retry-After": "2"}) from e
    except EmbedderException as e:
        raise ApiError(400, "unknown_model", f"Triton does not serve {model}: {e}") from e
    if info.kind != "image":
        raise ApiError(400, "not_image_model", f"{model} is a {info.kind} model; images need an image model")
    cfg = await svc.config.get()
    async with switch_redis(svc.settings) as r:
        if model == cfg.active_model and switch_target(cfg) is None:
            await r.delete(request_key(svc.settings.redis_prefix))  # an older request loses to this one
            return JSONResponse({"active": model, "requested": None}, status_code=200)
        await r.set(request_key(svc.settings.redis_prefix), msgspec.json.encode({"model": model}))
    return {"active": cfg.active_model, "requested": model}
