"""mesh check's rule for failed workflows (ops/check_temporal.py): only an image whose latest workflow failed
while its record does not say ``error`` is an anomaly."""

from __future__ import annotations

from actors.contract import ImageRecord, Status
from ops.check_temporal import Failed, failed_without_error


def record(image_id: str, status: Status) -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        status=status,
        object_key=f"images/{image_id}",
        sha256="0" * 64,
        content_type="image/jpeg",
        size_bytes=1,
        width=1,
        height=1,
    )


def test_a_failed_workflow_needs_an_error_record_unless_a_reembed_or_deleted() -> None:
    failed = [Failed("errored", False), Failed("lost", False), Failed("switch", True), Failed("gone", False)]
    records = {
        "errored": record("errored", Status.ERROR),
        "lost": record("lost", Status.DONE),  # the give-up never reached the record
        "switch": record("switch", Status.DONE),  # a failed re-embed leaves the image done
        "gone": None,  # deleted since
    }
    assert failed_without_error(failed, records) == ["lost"]
