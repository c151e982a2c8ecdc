"""Duplicates: copies of the same picture (``mode=copies``, the default) apart from pictures that merely look
alike (``mode=similar``).

Copies are what the copy checker verified in the background (``actors/copy_check.py``: look-alikes above
``near_duplicate_threshold`` checked by local features and a geometric model, ``actors/copies.py``); these
routes only read its verdicts, so a page costs no verification. The similar tier is the cosine similarity
alone: one image's is a range query; the groups at ``near_duplicate_threshold`` are kept by the indexers at
index time (``actors/group_keeper.py``) and only read here, those at another threshold are computed on demand
for a library of up to 20,000 images. Every result says its tier (``copy`` or ``similar``).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query

from actors.duplicates import connected_components, page
from actors.errors import ServiceCallError
from gateway import params
from gateway.deps import Svc, require_api_key
from gateway.errors import ApiError, error_responses
from gateway.records import active_embedding, get_record
from gateway.replies import DuplicateGroupsReply, DuplicateHit, DuplicatesMode, DuplicatesReply

router = APIRouter(
    dependencies=[Depends(require_api_key)], tags=["duplicates"], responses=error_responses(401, 403, 429)
)

ModeParam = Annotated[
    DuplicatesMode,
    Query(description="`copies`: verified copies of the same picture; `similar`: cosine similarity alone"),
]
ThresholdParam = Annotated[
    float | None,
    Query(
        gt=0,
        le=1,
        description="`similar` mode: the cosine cut (default: the config's near_duplicate_threshold)",
    ),
]
_R503 = (503, "Redis, the indexer or the object store is down: retry later")


@router.get(
    "/images/{image_id}/duplicates",
    operation_id="image_duplicates",
    responses=error_responses(
        (400, "bad parameter"), (404, "unknown image"), (409, "not indexed yet"), _R503
    ),
)
async def image_duplicates(
    image_id: str,
    svc: Svc,
    mode: ModeParam = "copies",
    k: params.KParam = None,
    offset: params.OffsetParam = 0,
    threshold: ThresholdParam = None,
) -> DuplicatesReply:
    """The duplicates of a stored image, most similar first, each with its `tier`.

    `mode=copies` (default): the images verified as copies of this one (an edit of it: re-encoded, resized,
    cropped keeping half, mirrored, slightly rotated, tone or colour changed), scored by cosine similarity;
    `checked` is false while the copy checker has not verified this image's look-alikes yet (a few seconds
    after `done`). `mode=similar`: every image at least `threshold` similar (cosine alone, as `/similar` with
    a cut), which includes pictures that merely look alike.
    """
    cfg = await svc.config.get()
    size = params.page_size(k, offset, cfg)
    model, vec = await active_embedding(svc, image_id, cfg.active_model)
    if mode == "similar":
        cut = threshold if threshold is not None else cfg.near_duplicate_threshold
        hits = await svc.search.query(model, vec, size, offset=offset, exclude_id=image_id, min_score=cut)
        results: list[DuplicateHit] = [
            {"image_id": h.image_id, "score": h.score, "tier": "similar"} for h in hits
        ]
        return {"image_id": image_id, "model": model, "mode": mode, "threshold": cut, "results": results}
    rec = await get_record(svc, image_id)
    scored = []
    for other in await svc.copies.copies(image_id):
        theirs = await svc.store.get_embedding(model, other)
        if theirs is not None:  # deleted meanwhile, or not under this model
            scored.append((other, round(float(np.dot(vec, theirs)), 6)))
    scored.sort(key=lambda p: (-p[1], p[0]))
    copies: list[DuplicateHit] = [
        {"image_id": i, "score": sc, "tier": "copy"} for i, sc in scored[offset : offset + size]
    ]
    return {
        "image_id": image_id,
        "model": model,
        "mode": mode,
        "checked": bool(rec.copy_check),
        "results": copies,
    }


@router.get(
    "/duplicates",
    operation_id="duplicate_groups",
    responses=error_responses(
        (
            400,
            "bad parameter; `mode=similar` at a `threshold` other than the config's near_duplicate_threshold: "
            "the index holds over 20000 images (`index_refused`, the message names the kept threshold), or the "
            "threshold is so low that the images have more than 50 near pairs each on average "
            "(`too_many_pairs`); at any threshold, one group of over 100000 images (`group_too_large`)",
        ),
        (
            503,
            "Redis, the indexer or the object store is down; or `mode=similar`: the groups at the kept "
            "threshold are being rebuilt (after it or the active model changed) and the index is over 20000 "
            "images: retry later",
        ),
    ),
)
async def duplicate_groups(
    svc: Svc,
    mode: ModeParam = "copies",
    limit: Annotated[int, Query(ge=1, le=1000, description="groups per page")] = 50,
    cursor: Annotated[
        str, Query(max_length=200, description="`next_cursor` of the previous page; empty for the first")
    ] = "",
    threshold: ThresholdParam = None,
) -> DuplicateGroupsReply:
    """Groups of duplicates, a page at a time; each group says its `tier`.

    `mode=copies` (default): groups of images joined by verified copy pairs (a copy of a copy joins the
    group), read from the copy checker's verdicts: no verification, one scan of the verdicts per call;
    `pending` is how many images still wait for their check. `mode=similar`: connected components of the
    graph "cosine >= threshold". At the config's `near_duplicate_threshold` (the default) they are kept up to
    date as images are indexed and deleted, and a page is read from them in time independent of the library's
    size, with no cap. At any other `threshold` they are computed on every call (one range query per image,
    O(N) work), for a library of up to 20000 images: above that, `400 index_refused` naming the kept threshold
    (also at a threshold so low that nearly everything is near everything). After the kept threshold or the
    active model changes, the groups are rebuilt in the background: meanwhile they are computed on demand, or
    `503` above 20000 images. Groups of two or more, each sorted, ordered by their smallest id; `next_cursor`
    is null on the last page.
    """
    cfg = await svc.config.get()
    if mode == "copies":
        edges = await svc.copies.edges()
        # a verdict can outlive its image by a moment (the checker wrote it as the image was deleted): only
        # stored images are grouped, so a page never names an image that answers 404
        alive = await svc.store.existing({i for edge in edges for i in edge})
        groups = connected_components([], [(a, b) for a, b in edges if a in alive and b in alive])
        chunk, next_cursor = page(groups, cursor, limit)
        pending, _ = await svc.copies.backlog()
        return {
            "model": cfg.active_model,
            "mode": mode,
            "pending": pending,
            "total_groups": len(groups),
            "groups": [{"image_ids": g, "size": len(g), "tier": "copy"} for g in chunk],
            "next_cursor": next_cursor,
        }
    cut = threshold if threshold is not None else cfg.near_duplicate_threshold
    try:
        reply = await svc.index.groups(cfg.active_model, cut, limit=limit, cursor=cursor)
    except ServiceCallError as e:
        if e.retryable:
            raise
        raise ApiError(400, "index_refused", e.description) from e
    return {
        "model": reply.model,
        "mode": mode,
        "threshold": reply.threshold,
        "images": reply.images,
        "total_groups": reply.total_groups,
        "groups": [{"image_ids": g, "size": len(g), "tier": "similar"} for g in reply.groups],
        "next_cursor": reply.next_cursor,
    }
