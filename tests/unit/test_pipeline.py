"""``Pipeline.process`` over in-memory fakes: states, history, events, vectors, re-embeds and failures."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator

import msgspec
import numpy as np
import pytest
from PIL import Image

from actors.adapters.embedder import EmbedderError
from actors.adapters.object_store import copy_features_key, thumbnail_key
from actors.contract import MeshConfig, ProcessJob, Status
from actors.copies import COPY_CHECK_VERSION
from actors.errors import PermanentError
from actors.preprocess import THUMBNAIL_SIDE
from actors.workflow import ContentMismatch
from tests.unit.workflow_fakes import DIM, World, error_of

FLOW = ["pending", "processing", "embedded", "indexed", "done"]


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()


async def test_a_new_image_ends_done_with_its_vector_indexed_and_its_events_in_order(world: World) -> None:
    job = world.add_image(metadata={"album": "x"})
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        beats += 1

    assert await world.pipeline.process(job, heartbeat) == "done"

    rec = world.store.records[job.image_id]
    assert rec.status == Status.DONE and rec.error is None
    assert (rec.model, rec.embedding_dim) == ("m1", DIM)
    assert world.store.states(job.image_id) == FLOW
    assert world.events.statuses(job.image_id) == FLOW[1:]  # the gateway publishes ``pending``
    assert all(e.trace_id == job.trace_id for e in world.events.published)
    assert [e.model for e in world.events.published if e.status == Status.EMBEDDED] == ["m1"]
    [upsert] = world.nats.upserts
    assert (upsert.model, upsert.image_id, upsert.tags) == ("m1", job.image_id, {"album": "x"})
    stored = world.store.embeddings[("m1", job.image_id)]
    assert np.array_equal(world.nats.vectors()[("m1", job.image_id)], stored)
    # its thumbnail: WebP, 256 px on the long side (the fake photo is 64 x 48: never enlarged)
    assert rec.thumbnail_key == thumbnail_key(job.image_id, THUMBNAIL_SIDE)
    with Image.open(io.BytesIO(world.objects.objects[rec.thumbnail_key])) as thumb:
        assert (thumb.format, thumb.size) == ("WEBP", (64, 48))
    assert beats >= 3  # a heartbeat between the slow steps

    # a redelivered job for a done image changes nothing
    assert await world.pipeline.process(job) == "skipped"
    assert world.store.states(job.image_id) == FLOW and len(world.nats.upserts) == 1


async def test_a_deleted_image_is_skipped(world: World) -> None:
    job = world.add_image()
    del world.store.records[job.image_id]
    assert await world.pipeline.process(job) == "skipped"
    assert not world.events.published and not world.nats.upserts


async def test_during_a_switch_a_new_image_is_indexed_under_both_models(world: World) -> None:
    world.config.cfg = MeshConfig(active_model="m1", next_model="model2")
    job = world.add_image()
    assert await world.pipeline.process(job) == "done"
    assert set(world.nats.vectors()) == {("m1", job.image_id), ("model2", job.image_id)}
    rec = world.store.records[job.image_id]
    assert rec.model == "m1" and world.store.states(job.image_id) == FLOW


async def test_the_switch_model_failing_leaves_the_image_done_under_the_active_one(world: World) -> None:
    world.config.cfg = MeshConfig(active_model="m1", next_model="model2")
    world.embedder.fail["model2"] = EmbedderError("model2 cannot take this image", model="model2")
    job = world.add_image()
    assert await world.pipeline.process(job) == "done"
    assert set(world.nats.vectors()) == {("m1", job.image_id)}
    notes = [h for h in world.store.records[job.image_id].history if h.get("step") == "embed"]
    assert notes and notes[0]["model"] == "model2" and "cannot take" in notes[0]["error"]


async def test_a_reembed_job_adds_vectors_without_touching_the_record(world: World) -> None:
    made = {"thumbnail_key": thumbnail_key("img1", THUMBNAIL_SIDE), "copy_features_key": "derived/copies/x"}
    job = world.add_image(status=Status.DONE, metadata={"exif.make": "Canon"}, model="m1", **made)
    before = world.store.records[job.image_id]
    reembed = ProcessJob(
        image_id=job.image_id, object_key=job.object_key, sha256=job.sha256, models=["model2"]
    )
    assert await world.pipeline.process(reembed) == "reembedded"
    [upsert] = world.nats.upserts
    assert (upsert.model, upsert.tags) == ("model2", {"exif.make": "Canon"})
    assert ("model2", job.image_id) in world.store.embeddings
    assert world.store.records[job.image_id] == before  # no state change, no history entry
    assert not world.events.published

    # an image indexed before thumbnails existed gets one from its re-embed (the reconciler's backfill)
    old = world.add_image("old1", status=Status.DONE, seed=3)
    again = ProcessJob(image_id="old1", object_key=old.object_key, sha256=old.sha256, models=["m1"])
    assert await world.pipeline.process(again) == "reembedded"
    assert world.store.records["old1"].thumbnail_key == thumbnail_key("old1", THUMBNAIL_SIDE)
    assert world.store.records["old1"].copy_features_key == copy_features_key("old1")
    assert {thumbnail_key("old1", THUMBNAIL_SIDE), copy_features_key("old1")} <= set(world.objects.objects)

    # a failed re-embed is a history note, the image stays done
    await world.pipeline.fail(reembed, "undecodable", "bad")
    rec = world.store.records[job.image_id]
    assert rec.status == Status.DONE and rec.history[-1]["step"] == "reembed"
    assert not world.events.published


async def test_a_permanent_error_is_raised_and_fail_records_it(world: World) -> None:
    world.embedder.fail["m1"] = EmbedderError("invalid argument", model="m1")
    job = world.add_image()
    with pytest.raises(PermanentError) as raised:
        await world.pipeline.process(job)
    assert not world.nats.upserts
    # the coordinator records the error (``fail``) after the delivery policy gives up
    await world.pipeline.fail(job, raised.value.code, raised.value.message)
    rec = world.store.records[job.image_id]
    assert rec.status == Status.ERROR
    assert (error_of(rec).code, error_of(rec).message) == (raised.value.code, "invalid argument")
    assert world.store.states(job.image_id) == ["pending", "processing", "error"]
    assert world.events.statuses(job.image_id) == ["processing", "error"]
    assert world.events.published[-1].error == rec.error


async def test_an_object_that_does_not_hold_the_uploaded_bytes_is_a_mismatch(world: World) -> None:
    job = world.add_image()
    world.objects.objects[job.object_key] = b"other bytes"
    with pytest.raises(ContentMismatch) as raised:
        await world.pipeline.process(job)
    assert raised.value.code == "sha256_mismatch"
    assert not world.nats.upserts and not world.store.embeddings


async def test_bytes_that_do_not_decode_are_a_permanent_error(world: World) -> None:
    job = world.add_image()
    data = b"\xff\xd8 not really a jpeg"
    world.objects.objects[job.object_key] = data
    job = ProcessJob(
        image_id=job.image_id, object_key=job.object_key, sha256=hashlib.sha256(data).hexdigest()
    )
    with pytest.raises(PermanentError) as raised:
        await world.pipeline.process(job)
    assert raised.value.code == "undecodable"


async def test_pipeline_steps_add_metadata_tags_and_notes(world: World) -> None:
    world.config.cfg = MeshConfig(
        active_model="m1", pipeline_steps=["moderation"], moderation_rules=["flag:min_side:100"]
    )
    job = world.add_image(metadata={"album": "x"})
    assert await world.pipeline.process(job) == "done"
    [upsert] = world.nats.upserts
    assert upsert.tags == {"album": "x", "moderation.flagged": "true"}
    notes = [h for h in world.store.records[job.image_id].history if h.get("step") == "moderation"]
    assert notes and notes[0]["outcome"] == "flagged"


async def test_a_step_that_rejects_the_image_stops_it_before_embedding(world: World) -> None:
    world.config.cfg = MeshConfig(
        active_model="m1", pipeline_steps=["moderation"], moderation_rules=["min_side:100"]
    )
    job = world.add_image()
    with pytest.raises(PermanentError) as raised:
        await world.pipeline.process(job)
    assert raised.value.code == "moderation"
    assert not world.embedder.calls and not world.nats.upserts


async def test_a_done_image_is_queued_for_the_copy_checker_and_again_after_a_lost_queueing(
    world: World,
) -> None:
    queued: list[str] = []

    class Queue:
        async def enqueue(self, image_ids: Iterable[str], at: float | None = None) -> int:
            queued.extend(image_ids)
            return 1

    world.pipeline.copy_queue = Queue()
    job = world.add_image()
    assert await world.pipeline.process(job) == "done"
    assert queued == [job.image_id]
    # the job delivered again (a crash after done, before the queue or the ack): queued again, not redone
    assert await world.pipeline.process(job) == "skipped"
    assert queued == [job.image_id, job.image_id]
    world.store.records[job.image_id] = msgspec.structs.replace(
        world.store.records[job.image_id], copy_check=COPY_CHECK_VERSION
    )
    assert await world.pipeline.process(job) == "skipped" and len(queued) == 2  # checked: nothing to queue
