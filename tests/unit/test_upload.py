"""``gateway.upload.accept_upload`` with in-memory fakes: the order of its writes and how each failure is undone.

An accepted upload has its object, its record and its durable job; a failed one leaves none of them behind and
no upload intent either (gateway/upload.py, module docstring).
"""

from __future__ import annotations

from typing import Any

import pytest

from actors.adapters.object_store import object_key
from actors.contract import ImageRecord, Status
from actors.errors import RetryableError
from gateway.intents import UploadIntents
from gateway.upload import Accepted, accept_upload
from gateway.validation import ImageInfo, sha256_hex
from tests.unit.fakes import (
    FakeEvents,
    FakeJobQueue,
    FakeNats,
    FakeObjectStore,
    FakeRedis,
    FakeWorkflowStore,
)

DATA = b"\x89PNG fake bytes: accept_upload never decodes them"
INFO = ImageInfo("PNG", "image/png", 4, 3)


class Mesh:
    """The fakes one upload talks to, and ``upload()`` to run it."""

    def __init__(self) -> None:
        self.store = FakeWorkflowStore()
        self.objects = FakeObjectStore()
        self.jobs = FakeJobQueue()
        self.events = FakeEvents()
        self.nc = FakeNats()
        self.redis = FakeRedis()
        redis: Any = self.redis  # the fakes stand in for the real adapters (duck-typed)
        self.intents = UploadIntents("redis://unused", "t", redis=redis)

    async def upload(self, data: bytes = DATA, metadata: dict[str, Any] | None = None) -> Accepted:
        fakes: dict[str, Any] = {
            "store": self.store,
            "objects": self.objects,
            "nc": self.nc,
            "jobs": self.jobs,
            "events": self.events,
        }
        return await accept_upload(
            data=data, info=INFO, metadata=metadata or {}, intents=self.intents, **fakes
        )

    def open_intents(self) -> dict[bytes, bytes]:
        return self.redis.hashes.get("t:upload_intents", {})


def record(image_id: str, status: Status, data: bytes = DATA) -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        status=status,
        sha256=sha256_hex(data),
        object_key=object_key(image_id),
        content_type="image/png",
        size_bytes=len(data),
        width=4,
        height=3,
        trace_id="t-" + image_id,
    )


@pytest.fixture
def mesh() -> Mesh:
    return Mesh()


async def test_accepted_upload_has_object_record_job_and_event(mesh: Mesh) -> None:
    got = await mesh.upload(metadata={"album": "x"})
    assert got.duplicate is False and got.status == Status.PENDING and got.sha256 == sha256_hex(DATA)
    rec = mesh.store.records[got.image_id]
    assert rec.status == Status.PENDING and rec.metadata == {"album": "x"}
    assert mesh.store.claims[got.sha256] == got.image_id
    assert mesh.objects.objects == {rec.object_key: DATA}
    [job] = mesh.jobs.published
    assert (job.image_id, job.object_key, job.sha256, job.trace_id) == (
        got.image_id,
        rec.object_key,
        got.sha256,
        rec.trace_id,
    )
    assert job.attempt == 0 and job.models == []
    [event] = mesh.events.published
    assert event.image_id == got.image_id and event.status == Status.PENDING
    assert mesh.open_intents() == {}


async def test_publish_failure_removes_record_and_object(mesh: Mesh) -> None:
    mesh.jobs.fail = True
    with pytest.raises(RetryableError, match="job queue"):
        await mesh.upload()
    [key] = mesh.objects.put_keys
    assert mesh.objects.deleted == [key] and mesh.objects.objects == {}
    assert mesh.store.records == {} and mesh.store.claims == {}  # a retry is not taken for a duplicate
    # the pending event went out before the job (so that it precedes a coordinator's); the rollback says so
    assert [e.status for e in mesh.events.published] == [Status.PENDING, Status.DELETED]
    assert mesh.open_intents() == {}

    mesh.jobs.fail = False  # the retry of the same bytes is a new upload, not a duplicate
    again = await mesh.upload()
    assert again.duplicate is False and len(mesh.jobs.published) == 1


async def test_publish_failure_still_raises_when_the_undo_fails(mesh: Mesh) -> None:
    mesh.jobs.fail = True
    mesh.store.fail_delete = True
    mesh.objects.fail_delete = True
    with pytest.raises(RetryableError, match="job queue"):
        await mesh.upload()
    assert len(mesh.objects.deleted) == 1  # tried, logged as an orphan; the answer is still 503


async def test_object_put_failure_ends_intent_and_forgets_object(mesh: Mesh) -> None:
    mesh.objects.fail_put = True
    with pytest.raises(RetryableError, match="object store"):
        await mesh.upload()
    [key] = mesh.objects.put_keys
    assert mesh.objects.deleted == [key]  # a put that failed half way may still have left the object
    assert mesh.open_intents() == {}
    assert mesh.store.records == {} and mesh.jobs.published == [] and mesh.events.published == []


async def test_record_failure_ends_intent_and_forgets_object(mesh: Mesh) -> None:
    mesh.store.fail_create = True
    with pytest.raises(RetryableError, match="workflow store"):
        await mesh.upload()
    [key] = mesh.objects.put_keys
    assert mesh.objects.deleted == [key] and mesh.objects.objects == {}
    assert mesh.open_intents() == {} and mesh.jobs.published == []


async def test_intent_is_open_while_the_object_has_no_record(mesh: Mesh) -> None:
    seen: list[dict[bytes, bytes]] = []
    mesh.store.before_create = lambda: seen.append(dict(mesh.open_intents()))
    got = await mesh.upload()
    assert seen == [{object_key(got.image_id).encode(): mesh.intents.instance.encode()}]
    assert mesh.open_intents() == {}


async def test_concurrent_upload_race_answers_duplicate(mesh: Mesh) -> None:
    winner = record("w" * 32, Status.PENDING)
    mesh.store.before_create = lambda: mesh.store.add(winner)  # claimed between our check and our create
    got = await mesh.upload()
    assert got == Accepted(
        image_id=winner.image_id, status=Status.PENDING, sha256=winner.sha256, duplicate=True
    )
    [key] = mesh.objects.put_keys
    assert mesh.objects.deleted == [key] and mesh.objects.objects == {}  # our copy is gone
    assert list(mesh.store.records) == [winner.image_id]
    # the winner is still pending: its job is published again (a no-op in JetStream if it was stored)
    assert [j.image_id for j in mesh.jobs.published] == [winner.image_id]
    assert mesh.events.published == [] and mesh.open_intents() == {}


async def test_duplicate_of_a_done_image_writes_nothing(mesh: Mesh) -> None:
    done = record("d" * 32, Status.DONE)
    mesh.store.add(done)
    got = await mesh.upload()
    assert got == Accepted(image_id=done.image_id, status=Status.DONE, sha256=done.sha256, duplicate=True)
    assert mesh.objects.put_keys == [] and mesh.jobs.published == [] and mesh.open_intents() == {}


async def test_claim_without_record_is_taken_over(mesh: Mesh) -> None:
    mesh.store.claims[sha256_hex(DATA)] = "gone" * 8  # an interrupted delete left the claim behind
    got = await mesh.upload()
    assert got.duplicate is False and mesh.store.claims[got.sha256] == got.image_id


async def test_no_nats_writes_nothing(mesh: Mesh) -> None:
    mesh.nc.is_connected = False
    with pytest.raises(RetryableError, match="not connected"):
        await mesh.upload()
    assert mesh.objects.put_keys == [] and mesh.store.records == {} and mesh.open_intents() == {}
