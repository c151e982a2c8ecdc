"""Reading image records for the routes: a record or 404, its public view, and an image's vector under the
active model (404 unknown, 409 not indexed yet). Shared by the image and search routers.
"""

from __future__ import annotations

from typing import Any, cast

import msgspec

from actors.contract import ImageRecord, Status
from gateway.deps import Services
from gateway.errors import ApiError
from gateway.replies import ImageRecordView

SEARCHABLE = frozenset({Status.INDEXED, Status.DONE})


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
