"""The image API: upload, read, similar, content, encode (DESIGN.md section 3, the public contract)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, File, Form, Header, Query, Request, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse, Response

from actors import preprocess
from actors.adapters.workflow_store import ImageRecord
from actors.contract import Status
from gateway.app import ApiError, Services, services
from gateway.upload import accept_upload
from gateway.validation import UploadError, parse_metadata, validate_image

MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and the metadata field, on top of the file itself
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
Svc = Annotated[Services, Depends(services)]


async def read_limited(request: Request, file: UploadFile, max_bytes: int) -> bytes:
    """The file's bytes, refusing more than ``max_bytes`` without reading them all."""
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadError(413, "too_large", f"the upload is over the limit of {max_bytes} bytes")
    return bytes(data)


async def check_declared_length(request: Request) -> None:
    """Refuse an upload whose declared length is over the limit before its body is read."""
    length = request.headers.get("content-length")
    if length and length.isdigit():
        limit = (await services(request).config.get()).max_upload_bytes
        if int(length) > limit + MULTIPART_OVERHEAD:
            raise UploadError(413, "too_large", f"the upload is over the limit of {limit} bytes")


@router.post(
    "/images/upload",
    status_code=202,
    dependencies=[Depends(check_declared_length)],
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
    meta = parse_metadata(metadata)
    info = await asyncio.to_thread(
        validate_image, data, max_bytes=cfg.max_upload_bytes, max_pixels=cfg.max_pixels
    )
    accepted = await accept_upload(
        data=data,
        info=info,
        metadata=meta,
        store=svc.store,
        objects=svc.objects,
        nc=svc.nc,
        events=svc.events,
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


@router.get("/images/{image_id}")
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


@router.get("/images/{image_id}/similar", responses={404: {}, 409: {}})
async def similar(
    image_id: str,
    svc: Svc,
    k: Annotated[
        int | None, Query(ge=1, description="how many results (at most the configured max_k)")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=10_000)] = 0,
) -> dict[str, Any]:
    """The stored images most like this one, best first (cosine similarity); the image itself is excluded."""
    rec = await get_record(svc, image_id)
    if rec.status not in SEARCHABLE or rec.model is None:
        raise ApiError(409, "not_indexed", f"image {image_id} is {rec.status}, not indexed yet")
    cfg = await svc.config.get()
    k = min(k or cfg.default_k, cfg.max_k)
    vec = await svc.store.get_embedding(rec.model, image_id)
    if vec is None:
        raise ApiError(409, "not_indexed", f"image {image_id} has no embedding under {rec.model}")
    hits = await svc.index.query(
        rec.model, vec, k, offset=offset, exclude_id=image_id, ef_runtime=cfg.ef_runtime
    )
    return {
        "image_id": image_id,
        "model": rec.model,
        "results": [{"image_id": h.image_id, "score": h.score} for h in hits],
    }


@router.get("/images/{image_id}/content", response_class=Response)
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


@router.post("/encode")
async def encode(svc: Svc, request: Request, file: Annotated[UploadFile, File()]) -> dict[str, Any]:
    """The embedding service: an image in, its vector out under the active model; nothing is stored."""
    cfg = await svc.config.get()
    data = await read_limited(request, file, cfg.max_upload_bytes)
    await asyncio.to_thread(validate_image, data, max_bytes=cfg.max_upload_bytes, max_pixels=cfg.max_pixels)
    vec = await embed_bytes(svc, cfg.active_model, data)
    return {
        "model": cfg.active_model,
        "embedding_dim": int(vec.shape[-1]),
        "embedding": vec.astype(float).tolist(),
    }


async def embed_bytes(svc: Services, model: str, data: bytes) -> Any:
    spec = await svc.embedder.preprocess_spec(model)
    img = await asyncio.to_thread(preprocess.decode_image, data)
    pixels = await asyncio.to_thread(preprocess.to_pixels, img, spec)
    return await svc.embedder.embed_image(model, pixels)
