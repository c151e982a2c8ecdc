"""Reading image records for the routes: a record or 404, its public view, an image's vector under the
active model (404 unknown, 409 not indexed yet), and the images most like a stored one (``/similar``). Shared by
the image and search routers.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec

from actors.contract import Hit, ImageRecord, MeshConfig, Status
from gateway.deps import Services
from gateway.errors import ApiError
from gateway.replies import ImageRecordView

SEARCHABLE = frozenset({Status.INDEXED, Status.DONE})
SEARCHABLE_VALUES = tuple(sorted(s.value for s in SEARCHABLE))


async def get_record(svc: Services, image_id: str) -> ImageRecord:
    """The image's record; ``ApiError`` 404 when there is none."""
    rec = await svc.store.get(image_id)
    if rec is None:
        raise ApiError(404, "not_found", f"no image {image_id}")
    return rec


def record_view(rec: ImageRecord) -> ImageRecordView:
    """The record as the API shows it: without the object keys, the replay attempt, the job's stream
    sequence and the storage layout (internal); with ``thumbnail_url`` (null until the pipeline made the thumbnail). Every other field
    of ``ImageRecord`` goes out as it is (a test checks that ``ImageRecordView`` names each of them)."""
    body: dict[str, Any] = msgspec.to_builtins(rec)
    for internal in (
        "object_key",
        "thumbnail_key",
        "copy_features_key",
        "copy_check",
        "attempt",
        "job_seq",
        "layout",
    ):
        body.pop(internal, None)
    body["thumbnail_url"] = f"images/{rec.image_id}/thumbnail" if rec.thumbnail_key else None
    return cast(ImageRecordView, body)


def check_searchable(image_id: str, active_model: str, status: str | None, has_vector: bool) -> None:
    """``ApiError`` 404 for an unknown image (``status`` None); 409 when it is not indexed yet, or has no
    vector under the active model yet (an image uploaded before a direct ``active_model`` change, not
    re-embedded)."""
    if status is None:
        raise ApiError(404, "not_found", f"no image {image_id}")
    state = Status(status)
    if state not in SEARCHABLE:
        raise ApiError(409, "not_indexed", f"image {image_id} is {state}, not indexed yet")
    if not has_vector:
        raise ApiError(
            409,
            "not_indexed",
            f"image {image_id} has no vector under the active model {active_model} yet",
        )


async def active_embedding(svc: Services, image_id: str, active_model: str) -> tuple[str, Any]:
    """The image's vector under the active model (not the model at ingest: a model switch re-embeds done
    images in the background), read with its state in one round trip; ``check_searchable``'s 404 and 409."""
    status, vec = await svc.store.status_and_embedding(image_id, active_model)
    check_searchable(image_id, active_model, status, vec is not None)
    return active_model, vec


async def similar_hits(
    svc: Services, image_id: str, cfg: MeshConfig, size: int, offset: int, filters: dict[str, str]
) -> tuple[str, list[Hit]]:
    """The active model and the page of images most like this stored one (itself excluded), after
    ``check_searchable``'s 404 and 409: in one Redis round trip (a script reads the state and the vector and
    searches, ``VectorIndex.similar_to_stored``), or, for what the script leaves to it, the two-step way
    (``active_embedding``, then ``VectorIndex.query``)."""
    model = cfg.active_model
    record_key, vector_key = svc.store.status_and_embedding_keys(image_id, model)
    found = await svc.search.similar_to_stored(
        model,
        record_key,
        vector_key,
        SEARCHABLE_VALUES,
        size,
        offset=offset,
        exclude_id=image_id,
        filters=filters,
        ef_runtime=cfg.ef_runtime,
    )
    if found is not None:
        check_searchable(image_id, model, found.status, found.has_vector)
        if found.hits is not None:
            return model, found.hits
    model, vec = await active_embedding(svc, image_id, model)
    hits = await svc.search.query(
        model, vec, size, offset=offset, exclude_id=image_id, filters=filters, ef_runtime=cfg.ef_runtime
    )
    return model, hits
