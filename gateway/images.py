"""The image API: upload, read, similar, content, encode (DESIGN.md section 3, the public contract)."""

from __future__ import annotations

import asyncio
import hmac
import os
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse, Response

from actors import preprocess
from actors.contract import ImageRecord, MeshConfig, Status
from gateway import params
from gateway.app import ApiError, Services, error_responses, services, services_dependency
from gateway.upload import accept_upload
from gateway.validation import ImageInfo, UploadError, parse_metadata, validate_image

# validations (full decodes) at once per process: one per core, so peak memory stays bounded under load
DECODE_SLOTS = asyncio.Semaphore(os.cpu_count() or 2)
SEARCHABLE = frozenset({Status.INDEXED, Status.DONE})


async def require_api_key(
    request: Request,
    x_api_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> None:
    """401 unless the request carries one of ``MESH_API_KEYS`` (when API keys are on)."""
    keys = services(request).settings.api_key_set
    if not keys:
        return
    given = x_api_key or (
        authorization[7:] if authorization and authorization.startswith("Bearer ") else None
    )
    if not given or not any(hmac.compare_digest(given, k) for k in keys):
        raise ApiError(401, "unauthorized", "a valid API key is required (X-API-Key header)")


router = APIRouter(dependencies=[Depends(require_api_key)])
Svc = Annotated[Services, Depends(services_dependency)]


async def validate(data: bytes, cfg: MeshConfig) -> ImageInfo:
    """Validate an image off the event loop; a full decode holds up to ~4 bytes per pixel, so at most
    ``DECODE_SLOTS`` run at once and peak memory stays bounded under load."""
    async with DECODE_SLOTS:
        return await asyncio.to_thread(
            validate_image, data, max_bytes=cfg.max_upload_bytes, max_pixels=cfg.max_pixels
        )


async def read_limited(request: Request, file: UploadFile, max_bytes: int) -> bytes:
    """The file's bytes, refusing more than ``max_bytes`` without reading them all."""
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadError(413, "too_large", f"the upload is over the limit of {max_bytes} bytes")
    return bytes(data)


@router.post(
    "/images/upload",
    status_code=202,
    responses={200: {"description": "identical bytes already uploaded"}, 400: {}, 413: {}, 415: {}, 422: {}},
)
async def upload(
    request: Request,
    svc: Svc,
    file: Annotated[UploadFile, File(description="the image")],
    metadata: Annotated[
        str | None, Form(description="JSON object of short keys to string/number values")
    ] = None,
) -> JSONResponse:
    """Upload an image: 202 with its id when new, 200 with `duplicate: true` for bytes already uploaded."""
    cfg = await svc.config.get()
    data = await read_limited(request, file, cfg.max_upload_bytes)
    # the raw bytes, kept by gateway.forms.UploadGuard: Starlette would decode non-UTF-8 as Latin-1 silently
    meta = parse_metadata(getattr(request.state, "raw_metadata", None) or metadata)
    info = await validate(data, cfg)
    accepted = await accept_upload(
        data=data,
        info=info,
        metadata=meta,
        store=svc.store,
        objects=svc.objects,
        nc=svc.nc,
        events=svc.events,
        intents=svc.intents,
    )
    body: dict[str, Any] = {
        "image_id": accepted.image_id,
        "status": accepted.status,
        "sha256": accepted.sha256,
    }
    if accepted.duplicate:
        body["duplicate"] = True
        return JSONResponse(body, status_code=200)
    return JSONResponse(body, status_code=202)


async def get_record(svc: Services, image_id: str) -> ImageRecord:
    rec = await svc.store.get(image_id)
    if rec is None:
        raise ApiError(404, "not_found", f"no image {image_id}")
    return rec


def record_view(rec: ImageRecord) -> dict[str, Any]:
    body: dict[str, Any] = msgspec.to_builtins(rec)
    body.pop("object_key", None)
    body.pop("attempt", None)
    return body


@router.get("/images/{image_id}", responses=error_responses(400, 404, 503))
async def get_image(
    image_id: str,
    svc: Svc,
    include: Annotated[str | None, Query(description="`embedding` adds the vector")] = None,
) -> dict[str, Any]:
    """An image's record: status, history, size, metadata, model, error."""
    rec = await get_record(svc, image_id)
    body = record_view(rec)
    if include and "embedding" in include.split(","):
        vec = await svc.store.get_embedding(rec.model, image_id) if rec.model else None
        body["embedding"] = None if vec is None else vec.astype(float).tolist()
    return body


@router.get(
    "/images/{image_id}/similar",
    responses={
        400: {"description": "bad `filter`, or a page beyond offset 10000"},
        404: {"description": "unknown image"},
        409: {"description": "the image is not indexed yet"},
    },
)
async def similar(
    image_id: str,
    svc: Svc,
    k: params.KParam = None,
    offset: params.OffsetParam = 0,
    filter: params.FilterParam = [],  # noqa: B006 (the public name; FastAPI copies defaults)
) -> dict[str, Any]:
    """The stored images most like this one, best first (cosine similarity); the image itself is excluded.

    `k` above the config's `max_k` is clamped to it; `offset` pages (at most 10000). `filter=key:value`
    (repeatable, ANDed) keeps only images whose upload metadata has that value: the index filters before
    ranking, so a page holds `k` matching images whenever that many exist.
    """
    cfg = await svc.config.get()
    filters = params.parse_filters(filter)
    size = params.page_size(k, offset, cfg)
    model, vec = await active_embedding(svc, image_id, cfg.active_model)
    hits = await svc.search.query(
        model, vec, size, offset=offset, exclude_id=image_id, filters=filters, ef_runtime=cfg.ef_runtime
    )
    return {
        "image_id": image_id,
        "model": model,
        "results": [{"image_id": h.image_id, "score": h.score} for h in hits],
    }


async def active_embedding(svc: Services, image_id: str, active_model: str) -> tuple[str, Any]:
    """The image's vector under the active model (not the model at ingest: a model switch re-embeds done
    images in the background), read with its state in one round trip. 404 for an unknown image; 409 when it
    is not indexed yet, or has no vector under the active model yet (an image uploaded before a direct
    ``active_model`` change, not re-embedded)."""
    status, vec = await svc.store.status_and_embedding(image_id, active_model)
    if status is None:
        raise ApiError(404, "not_found", f"no image {image_id}")
    if status not in SEARCHABLE:
        raise ApiError(409, "not_indexed", f"image {image_id} is {status}, not indexed yet")
    if vec is None:
        raise ApiError(
            409,
            "not_indexed",
            f"image {image_id} has no vector under the active model {active_model} yet",
        )
    return active_model, vec


@router.get(
    "/images/{image_id}/content",
    response_class=Response,
    responses={
        200: {"description": "the original bytes", "content": {"image/*": {}}},
        307: {"description": "redirect to a pre-signed object-store URL"},
        **error_responses(400, 404, 503),
    },
)
async def content(
    image_id: str,
    svc: Svc,
    presigned: Annotated[bool | None, Query(description="redirect to a pre-signed object-store URL")] = None,
) -> Response:
    """The original bytes, or a redirect to a pre-signed URL (``MESH_CONTENT_PRESIGNED`` or ``?presigned=``)."""
    rec = await get_record(svc, image_id)
    if presigned if presigned is not None else svc.settings.content_presigned:
        return RedirectResponse(await svc.objects.presigned_url(rec.object_key), status_code=307)
    data = await svc.objects.get(rec.object_key)
    return Response(data, media_type=rec.content_type, headers={"Cache-Control": "private, max-age=3600"})


@router.post("/encode", responses=error_responses(400, 413, 415, 503))
async def encode(svc: Svc, request: Request, file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    """The embedding service: an image in, its vector out under the active model; nothing is stored."""
    cfg = await svc.config.get()
    data = await read_limited(request, file, cfg.max_upload_bytes)
    await validate(data, cfg)
    vec = await embed_bytes(svc, cfg.active_model, data)
    return {
        "model": cfg.active_model,
        "embedding_dim": int(vec.shape[-1]),
        "embedding": vec.astype(float).tolist(),
    }


async def embed_bytes(svc: Services, model: str, data: bytes) -> Any:
    spec = await svc.embedder.preprocess_spec(model)
    # decoded exactly as the pipeline does (actors/workflow.py), so the vector matches the stored one
    img = await asyncio.to_thread(preprocess.decode_image, data, spec.resize)
    pixels = await asyncio.to_thread(preprocess.to_pixels, img, spec)
    return await svc.embedder.embed_image(model, pixels)
