"""The image API: upload, read, similar, content, encode (DESIGN.md section 3, the public contract)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, RedirectResponse, Response

from gateway import params
from gateway.deps import WRITE, Svc, require_api_key
from gateway.errors import error_responses
from gateway.intake import embed_bytes, read_limited, validate
from gateway.metadata import parse_metadata
from gateway.records import get_record, record_view, similar_hits
from gateway.replies import EncodeReply, ImageRecordView, SimilarReply, UploadAccepted
from gateway.upload import accept_upload

# every route needs an API key with `read` (when keys are on); uploads and /encode need `write`
router = APIRouter(
    dependencies=[Depends(require_api_key)], tags=["images"], responses=error_responses(401, 403, 429)
)


@router.post(
    "/images/upload",
    status_code=202,
    dependencies=[WRITE],
    operation_id="upload_image",
    responses={  # the route answers its JSONResponse itself (202 or 200): typed here, not checked again
        202: {"model": UploadAccepted, "description": "a new image, queued for processing"},
        200: {"model": UploadAccepted, "description": "identical bytes already uploaded (`duplicate: true`)"},
        **error_responses(
            400,
            413,
            415,
            (422, "malformed `metadata` (`invalid_metadata`)"),
            (503, "a dependency is down, or the backlog is full (`backlog_full`): retry after Retry-After"),
            (
                507,
                "a store is nearly full (`insufficient_storage`, the message names it): nothing was stored",
            ),
        ),
    },
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
    info = await validate(svc, data, cfg)
    await svc.admission.check(cfg, len(data))  # 503 / 507 before anything is stored
    accepted = await accept_upload(
        data=data,
        info=info,
        metadata=meta,
        store=svc.store,
        objects=svc.objects,
        nc=svc.nc,
        jobs=svc.jobs,
        events=svc.events,
        intents=svc.intents,
        filename=file.filename or "",
    )
    body: UploadAccepted = {
        "image_id": accepted.image_id,
        "status": accepted.status,
        "sha256": accepted.sha256,
    }
    if accepted.duplicate:
        body["duplicate"] = True
        return JSONResponse(body, status_code=200)
    return JSONResponse(body, status_code=202)


@router.get("/images/{image_id}", operation_id="get_image", responses=error_responses(400, 404, 503))
async def get_image(
    image_id: str,
    svc: Svc,
    include: Annotated[str | None, Query(description="`embedding` adds the vector")] = None,
) -> ImageRecordView:
    """An image's record: status, history, size, metadata, model, error."""
    rec = await get_record(svc, image_id)
    body = record_view(rec)
    if include and "embedding" in include.split(","):
        vec = await svc.store.get_embedding(rec.model, image_id) if rec.model else None
        body["embedding"] = None if vec is None else vec.astype(float).tolist()
    return body


@router.get(
    "/images/{image_id}/similar",
    operation_id="similar_images",
    responses=error_responses(
        (400, "bad `filter`, or a page beyond offset 10000"),
        (404, "unknown image"),
        (409, "the image is not indexed yet"),
        503,
    ),
)
async def similar(
    image_id: str,
    svc: Svc,
    k: params.KParam = None,
    offset: params.OffsetParam = 0,
    filter: params.FilterParam = [],  # noqa: B006 (the public name; FastAPI copies defaults)
) -> SimilarReply:
    """The stored images most like this one, best first (cosine similarity); the image itself is excluded.

    `k` above the config's `max_k` is clamped to it; `offset` pages (at most 10000). `filter=key:value`
    (repeatable, ANDed) keeps only images whose upload metadata has that value: the index filters before
    ranking, so a page holds `k` matching images whenever that many exist.
    """
    cfg = await svc.config.get()
    filters = params.parse_filters(filter)
    size = params.page_size(k, offset, cfg)
    model, hits = await similar_hits(svc, image_id, cfg, size, offset, filters)
    return {
        "image_id": image_id,
        "model": model,
        "results": [{"image_id": h.image_id, "score": h.score} for h in hits],
    }


@router.get(
    "/images/{image_id}/content",
    response_class=Response,
    operation_id="get_content",
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


@router.post(
    "/encode",
    operation_id="encode_image",
    responses=error_responses(400, 413, 415, 503),
    dependencies=[WRITE],
)
async def encode(svc: Svc, request: Request, file: Annotated[UploadFile, File()]) -> EncodeReply:
    """The embedding service: an image in, its vector out under the active model; nothing is stored."""
    cfg = await svc.config.get()
    data = await read_limited(request, file, cfg.max_upload_bytes)
    await validate(svc, data, cfg)
    vec = await embed_bytes(svc, cfg.active_model, data)
    return {
        "model": cfg.active_model,
        "embedding_dim": int(vec.shape[-1]),
        "embedding": vec.astype(float).tolist(),
    }
