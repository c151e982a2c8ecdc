"""The models: which ones Triton serves, which is active, and switching the active one without downtime.

``GET /models`` lists them with the state of the latest switch (the coordinator's switcher drives it; its
progress is read through ``actors/adapters/switch_progress.py``). ``POST /models/switch`` asks for a switch.
The gateway's NATS user may not write the Config DB (least privilege: nor could it raise the upload limits),
so the request is checked here (Triton serves the model, and it takes images) and sent to the coordinator's
``models.switch`` service, whose switcher sets ``next_model`` before it answers. An operator can set
``next_model`` directly instead (README, "Model switch").
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, cast

import httpx
import msgspec
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from actors import contract
from actors.adapters.embedder import EmbedderException, EmbedderUnavailable, ModelInfo
from actors.adapters.switch_progress import SwitchProgress, switch_target
from actors.adapters.vector_index import MODEL_RE
from actors.contract import ModelSwitchReply, ModelSwitchRequest
from actors.errors import MeshError, PermanentError, RetryableError
from actors.rpc import call
from actors.settings import Settings
from gateway.deps import ADMIN, Services, Svc, require_api_key
from gateway.errors import ApiError, error_responses
from gateway.replies import ModelsReply, ModelView, SwitchAccepted, SwitchView

# every route needs an API key with `read` (when keys are on); the switch needs `admin`
router = APIRouter(
    dependencies=[Depends(require_api_key)], tags=["models"], responses=error_responses(401, 403, 429)
)

# Triton reports per-model counters for every model it loaded, used or not
_METRIC_MODEL = re.compile(r'^nv_inference_count\{[^}]*model="([^"]+)"', re.MULTILINE)
SWITCH_CALL_TIMEOUT_S = 5.0  # the switcher reads, then writes, the config (2 s timeout each)


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


@router.get("/models", operation_id="list_models", responses=error_responses(503))
async def list_models(svc: Svc) -> ModelsReply:
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
    models = [cast(ModelView, m | {"active": m["name"] == cfg.active_model}) for m in found if m is not None]
    # a short-lived client: these routes are for operators, not the hot path (an outage: RetryableError, 503)
    url = svc.settings.redis_url_for("gateway")
    async with SwitchProgress.from_url(url, svc.settings.redis_prefix) as store:
        progress = await store.read(target)
    return {
        "active": cfg.active_model,
        "next": target,
        # a request not applied yet: none since POST /models/switch sets next_model before it answers
        "requested": None,
        "models": models,
        "switch": None if progress is None else cast(SwitchView, msgspec.to_builtins(progress)),
    }


@router.post(
    "/models/switch",
    status_code=202,
    dependencies=[ADMIN],
    operation_id="switch_model",
    response_model=SwitchAccepted,
    responses={
        202: {"description": "the switch is under way (or the running one cancelled): poll `GET /models`"},
        200: {
            "model": SwitchAccepted,
            "description": "the model is already active and no switch is running: nothing to do",
        },
        **error_responses(
            (400, "Triton does not serve this model, or it is not an image model"),
            (503, "Triton or the coordinator is down: retry later"),
        ),
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
    try:
        reply = await call(
            svc.nc,
            contract.MODELS_SWITCH,
            ModelSwitchRequest(model=model),
            ModelSwitchReply,
            timeout=SWITCH_CALL_TIMEOUT_S,
        )
    except RetryableError as e:  # no coordinator answers, or the config actor behind it is down
        raise ApiError(503, "unavailable", e.message, headers={"Retry-After": "2"}) from e
    except PermanentError as e:  # the Config DB refused the name
        raise ApiError(400, "unknown_model", e.message) from e
    if model == reply.active_model and not reply.cancelled:
        return JSONResponse({"active": model, "requested": None}, status_code=200)
    return {"active": reply.active_model, "requested": model}
