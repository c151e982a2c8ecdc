"""The library: browse what was uploaded. ``GET /images`` lists images newest first (cursor pages, filters), and
``GET /images/{id}/thumbnail`` serves small versions for grids.

Thumbnails: the pipeline stores a 256 px WebP of every image from the frame it decodes anyway
(``Pipeline._store_thumbnail``); the 1024 px preview is made here on its first request, from the original, and
kept in the object store beside it. The bytes of an id's thumbnail never change, so they are served with a
strong ``ETag`` (their hash), ``Cache-Control: immutable`` and ``304`` on ``If-None-Match``.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import Response

from actors import preprocess
from actors.adapters.object_store import ObjectMissing, thumbnail_key
from actors.adapters.record_index import MAX_PAGE, Listed
from actors.contract import Status
from actors.errors import PermanentError
from gateway import params
from gateway.deps import Svc, require_api_key
from gateway.errors import ApiError, error_responses
from gateway.records import get_record
from gateway.replies import ImageList, ListedImage

router = APIRouter(
    dependencies=[Depends(require_api_key)], tags=["library"], responses=error_responses(401, 403, 429)
)

PREVIEW_SIDE = 1024
IMMUTABLE = "private, max-age=31536000, immutable"


def thumbnail_url(image_id: str, has_thumbnail: bool) -> str | None:
    """Where a client gets the image's thumbnail (relative to the API root); None while there is none."""
    return f"images/{image_id}/thumbnail" if has_thumbnail else None


def listed_view(row: Listed) -> ListedImage:
    f = row.fields
    return {
        "image_id": row.image_id,
        "status": Status(row.status),
        "filename": f.get("filename", ""),
        "content_type": f.get("content_type", ""),
        "size_bytes": int(f.get("size_bytes") or 0),
        "width": int(f.get("width") or 0),
        "height": int(f.get("height") or 0),
        "created_at": row.created_at,
        "thumbnail_url": thumbnail_url(row.image_id, bool(f.get("thumbnail_key"))),
    }


@router.get("/images", operation_id="list_images", responses=error_responses(400, 503))
async def list_images(
    svc: Svc,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="images per page")] = 50,
    cursor: Annotated[
        str, Query(max_length=300, description="`next_cursor` of the previous page; empty for the first")
    ] = "",
    status: Annotated[Status | None, Query(description="only images in this state")] = None,
    filter: params.FilterParam = [],  # noqa: B006 (the public name; FastAPI copies defaults)
) -> ImageList:
    """The uploaded images, newest first, a page at a time.

    `next_cursor` (null on the last page) continues after the last image shown, so uploads that arrive while
    a client pages never shift what it has seen. `filter=key:value` (repeatable, ANDed) matches the upload
    metadata and the steps' fields as elsewhere; `filter=label:tabby` matches the labels. Each image carries
    its original file name, size, time and `thumbnail_url` (null until the pipeline made it).
    """
    filters = params.parse_filters(filter)
    try:
        rows, next_cursor = await svc.records.page(limit, cursor, status, filters)
    except PermanentError as e:
        raise ApiError(400, e.code or "bad_request", e.message) from e
    return {"images": [listed_view(r) for r in rows], "next_cursor": next_cursor}


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


def _not_modified(if_none_match: str | None, etag: str) -> bool:
    return if_none_match is not None and etag in {t.strip() for t in if_none_match.split(",")}


@router.get(
    "/images/{image_id}/thumbnail",
    response_class=Response,
    operation_id="get_thumbnail",
    responses={
        200: {"description": "WebP bytes", "content": {"image/webp": {}}},
        304: {"description": "`If-None-Match` names these bytes"},
        **error_responses(400, 404, 409, 503),
    },
)
async def thumbnail(
    image_id: str,
    svc: Svc,
    size: Annotated[int, Query(description="long side in pixels: 256 or 1024")] = 256,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """A small WebP of the image: 256 px (made by the pipeline; `409` until it is) or a 1024 px preview (made
    on first request from the original, then kept). Never larger than the original."""
    if size not in (preprocess.THUMBNAIL_SIDE, PREVIEW_SIDE):
        raise ApiError(400, "bad_size", f"size must be {preprocess.THUMBNAIL_SIDE} or {PREVIEW_SIDE}")
    rec = await get_record(svc, image_id)
    if size == preprocess.THUMBNAIL_SIDE:
        if not rec.thumbnail_key:
            raise ApiError(409, "no_thumbnail", f"image {image_id} is {rec.status}: no thumbnail yet")
        data = await svc.objects.get(rec.thumbnail_key)
    else:
        data = await _preview(svc, image_id, rec.object_key)
    etag = _etag(data)
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE}
    if _not_modified(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="image/webp", headers=headers)


async def _preview(svc: Any, image_id: str, original_key: str) -> bytes:
    """The 1024 px preview, from the object store, or made now from the original (within the decode budget)
    and stored: two first requests at once make the same bytes."""
    key = thumbnail_key(image_id, PREVIEW_SIDE)
    try:
        data: bytes = await svc.objects.get(key)
        return data
    except ObjectMissing:
        pass
    original = await svc.objects.get(original_key)
    img = await asyncio.to_thread(preprocess.open_image, original, PREVIEW_SIDE)
    try:
        async with svc.decode_budget.hold(preprocess.decode_cost(img)):
            rgb = await asyncio.to_thread(preprocess.decode_opened, img)
            try:
                data = await asyncio.to_thread(preprocess.thumbnail_webp, rgb, PREVIEW_SIDE)
            finally:
                rgb.close()
    finally:
        img.close()
    await svc.objects.put(key, data, "image/webp")
    return data
