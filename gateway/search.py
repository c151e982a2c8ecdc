"""Search beyond the seed: text to image, query by an image that is not stored, delete (duplicates:
``gateway/duplicates.py``).

Every search runs in the index of the active model (``config.active_model``); filters and pages work as in
``gateway/params.py``. Near-duplicate means a cosine similarity at or above ``near_duplicate_threshold``
(README, "Search", for how it was tuned); exact duplicates never get this far (the upload answers
``duplicate: true``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response

from actors.adapters.embedder import EmbedderException, EmbedderUnavailable, ModelNotFound
from actors.adapters.object_store import copy_features_key, thumbnail_key
from actors.contract import Hit, ImageEvent, Status
from actors.labels import UnknownVocabulary, Vocabulary, match, vocabulary
from actors.preprocess import THUMBNAIL_SIDE
from gateway import params
from gateway.deps import WRITE, Services, Svc, require_api_key
from gateway.errors import ApiError, error_responses
from gateway.intake import embed_bytes, read_limited, validate
from gateway.library import PREVIEW_SIDE
from gateway.records import get_record
from gateway.replies import ImageSearchReply, ScoredImage, SearchReply

# every route needs an API key with `read` (when keys are on); DELETE needs `write`
router = APIRouter(
    dependencies=[Depends(require_api_key)], tags=["search"], responses=error_responses(401, 403, 429)
)

IMAGE_SUFFIX, TEXT_SUFFIX = "_image", "_text"
THUMBNAIL_SIDES = (THUMBNAIL_SIDE, PREVIEW_SIDE)  # the pipeline's thumbnail, the preview (gateway/library.py)
MAX_QUERY_CHARS = 1000

_R503 = (503, "Triton, the indexer or Redis is down: retry later")


def text_model_for(image_model: str) -> str | None:
    """The text tower paired with an image tower: ``<prefix>_image`` <-> ``<prefix>_text``; None for a model
    without one (``efficientnet_lite0``). The one place this naming rule is written down (docs/MODELS.md:
    the CLIP export writes the pair under one prefix, ``MESH_CLIP_PREFIX``)."""
    prefix = image_model.removesuffix(IMAGE_SUFFIX)
    if not prefix or prefix == image_model:
        return None
    return prefix + TEXT_SUFFIX


@contextlib.contextmanager
def embedding_errors(model: str) -> Iterator[None]:
    """Triton's failures as the API's: 503 when it may pass, 502 when the model failed on this input."""
    try:
        yield
    except EmbedderUnavailable as e:
        raise ApiError(503, "unavailable", str(e), headers={"Retry-After": "2"}) from e
    except EmbedderException as e:
        raise ApiError(502, "embedder_error", f"{model}: {e}") from e


def hits_view(hits: list[Hit]) -> list[ScoredImage]:
    return [{"image_id": h.image_id, "score": h.score} for h in hits]


_R400_TEXT = (
    400,
    "bad `filter`, `k`/`offset` beyond the limits, a bad parameter, or `no_text_tower`: the active model has "
    "neither a text tower nor a classifier's labels",
)


@router.get("/search", operation_id="search_text", responses=error_responses(_R400_TEXT, _R503))
async def search_text(
    svc: Svc,
    q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_CHARS, description="the text to match")],
    k: params.KParam = None,
    offset: params.OffsetParam = 0,
    filter: params.FilterParam = [],  # noqa: B006 (the public name; FastAPI copies defaults)
) -> SearchReply:
    """Text to image: the stored images that best match `q`, best first; `mode` says how.

    `"mode": "embedding"`: the text is embedded by the text tower paired with the active model (`clip_image`
    -> `clip_text`, through Triton) and searched in the active model's index; scores are cosine similarities.
    With the random-weight test CLIP the ranking is real arithmetic but carries no meaning (README, "Search").

    `"mode": "labels"`: the active model has no text tower but a classifier (the default `efficientnet_lite0`):
    the query's words are matched against its label names and synonyms (lower case, plurals: "cats" finds
    tabby, tiger cat, Persian cat...), `labels` lists the labels matched, and images are ranked by the summed
    probability of those labels. A query that names no label answers `200` with no results and a `reason`.
    `400 no_text_tower` only when the active model has neither.
    """
    cfg = await svc.config.get()
    filters = params.parse_filters(filter)
    size = params.page_size(k, offset, cfg)
    model = cfg.active_model
    text_model = text_model_for(model)
    if text_model is not None:
        with embedding_errors(text_model):
            try:
                vec = await svc.embedder.embed_text(text_model, q)
            except ModelNotFound:
                vec = None  # Triton does not serve it: the labels, if the model has them
        if vec is not None:
            hits = await svc.search.query(
                model, vec, size, offset=offset, filters=filters, ef_runtime=cfg.ef_runtime
            )
            return {"model": model, "mode": "embedding", "results": hits_view(hits)}
    with embedding_errors(model):
        info = await svc.embedder.model_info(model)
    try:
        vocab = vocabulary(info.labels or "")
    except UnknownVocabulary as e:
        why = f"names the vocabulary {info.labels!r}, which this version does not ship" if info.labels else ""
        raise ApiError(
            400, "no_text_tower", f"the active model {model} has no text tower and no classifier labels {why}"
        ) from e
    return await search_labels(svc, model, vocab, q, size, offset, filters)


async def search_labels(
    svc: Services,
    model: str,
    vocab: Vocabulary,
    q: str,
    size: int,
    offset: int,
    filters: dict[str, str],
) -> SearchReply:
    """``GET /search`` in ``labels`` mode (``actors/labels/matching.py``)."""
    found = match(vocab, q)
    labels = list(found.names)
    if not found.names:
        reason = found.reason or ""  # never empty when nothing matched
        return {
            "model": model,
            "mode": "labels",
            "labels": labels,
            "matched": 0,
            "results": [],
            "reason": reason,
        }
    page = await svc.search.label_search(model, found.names, size, offset, filters)
    body: SearchReply = {
        "model": model,
        "mode": "labels",
        "labels": labels,
        "matched": page.matched,
        "results": hits_view(page.hits),
    }
    if page.truncated:
        body["truncated"] = True  # more images have these labels than one search ranks (LABEL_WINDOW)
    return body


@router.post(
    "/search/image",
    operation_id="search_image",
    responses=error_responses(
        (400, "not an image, a broken image, or a bad parameter"),
        (413, "over the byte or pixel limit"),
        (415, "a format that is not allowed"),
        _R503,
    ),
)
async def search_image(
    request: Request,
    svc: Svc,
    file: Annotated[UploadFile, File(description="the query image (validated like an upload, never stored)")],
    k: params.KParam = None,
    offset: params.OffsetParam = 0,
    filter: params.FilterParam = [],  # noqa: B006
) -> ImageSearchReply:
    """Query by an image that is not stored: the stored images most like it, best first.

    The upload is validated like `POST /images/upload` (same limits, same errors; the byte limit is enforced
    by `gateway.forms.UploadGuard` before the body is read), embedded with the active model and searched;
    nothing is written anywhere (no object, record, vector, job or event).
    """
    cfg = await svc.config.get()
    filters = params.parse_filters(filter)
    size = params.page_size(k, offset, cfg)
    data = await read_limited(request, file, cfg.max_upload_bytes)
    await validate(svc, data, cfg)
    model = cfg.active_model
    with embedding_errors(model):
        vec = await embed_bytes(svc, model, data)
    hits = await svc.search.query(model, vec, size, offset=offset, filters=filters, ef_runtime=cfg.ef_runtime)
    return {"model": model, "results": hits_view(hits)}


@router.delete(
    "/images/{image_id}",
    status_code=204,
    dependencies=[WRITE],
    response_class=Response,
    operation_id="delete_image",
    responses={
        204: {"description": "deleted everywhere"},
        **error_responses((404, "unknown image, or already deleted"), _R503),
    },
)
async def delete_image(image_id: str, svc: Svc) -> Response:
    """Delete an image everywhere: every model's index, the object store (original and thumbnails), its record,
    history, embeddings and sha256 claim (the same bytes can be uploaded again as a new image); then
    `images.events.deleted`.

    `204`, then `404` for every later `DELETE` or `GET`: the end state is the same (idempotent), and the
    status says whether this call found it. The record goes last, so a `DELETE` that failed half way (503)
    can be sent again and finishes the work. A job still queued for the image finds no record and skips.
    """
    rec = await get_record(svc, image_id)
    vectors = await svc.index.delete(image_id)
    for side in THUMBNAIL_SIDES:  # the pipeline's thumbnail and the preview, when made
        await svc.objects.delete(thumbnail_key(image_id, side))
    await svc.objects.delete(copy_features_key(image_id))
    await svc.copies.forget(image_id)  # its copy verdicts, both ways
    await svc.objects.delete(rec.object_key)
    await svc.store.delete(image_id, rec.sha256)
    await svc.events.publish(
        ImageEvent(
            image_id=image_id,
            status=Status.DELETED,
            at=time.time(),
            trace_id=rec.trace_id,
            detail={"vectors": vectors},
        )
    )
    return Response(status_code=204)
