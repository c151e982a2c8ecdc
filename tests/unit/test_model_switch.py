"""The model switch's logic: the target, progress, when to swap, the config rule, the pipeline's plan, and how a
``models.switch`` request changes ``next_model``."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client

from actors.adapters.job_queue import JobQueue
from actors.adapters.switch_progress import (
    Progress,
    SwitchProgress,
    SwitchState,
    decode_progress,
    encode_progress,
    switch_target,
)
from actors.config_rules import InvalidConfig, apply_change
from actors.contract import ImageRecord, MeshConfig, ModelSwitchRequest, ProcessJob, Status
from actors.errors import PermanentError, RetryableError
from actors.model_switch import (
    ModelSwitcher,
    count,
    drain,
    next_model_for,
    ready_to_swap,
    stalled,
    switch_msg_id,
)
from actors.workflow import is_reembed, planned_models
from tests.conftest import free_port

OLD, NEW = "efficientnet_lite0", "clip_image"


def record(status: Status, attempt: int = 0) -> ImageRecord:
    return ImageRecord(
        image_id="a",
        status=status,
        sha256="0" * 64,
        object_key="k",
        content_type="image/jpeg",
        size_bytes=1,
        width=1,
        height=1,
        attempt=attempt,
    )


# --- config -------------------------------------------------------------------------------------------------
def test_next_model_is_empty_or_a_safe_name_other_than_the_active_one() -> None:
    base = MeshConfig(active_model=OLD)
    assert apply_change(base, "next_model", NEW).next_model == NEW
    assert apply_change(base, "next_model", "").next_model == ""
    for bad, says in [
        (OLD, "already the active model"),
        ("../x", "must be 1-64 letters"),
        ("a:b", "letters"),
    ]:
        with pytest.raises(InvalidConfig) as info:
            apply_change(base, "next_model", bad)
        assert says in info.value.reason
    # the swap: active_model = next_model is one accepted write, then next_model is cleared
    mid = apply_change(apply_change(base, "next_model", NEW), "active_model", NEW)
    assert (mid.active_model, mid.next_model) == (NEW, NEW)
    assert switch_target(mid) is None  # a swap half done is no switch
    assert apply_change(mid, "next_model", "").next_model == ""


def test_switch_target() -> None:
    assert switch_target(MeshConfig(active_model=OLD)) is None
    assert switch_target(MeshConfig(active_model=OLD, next_model=NEW)) == NEW
    assert switch_target(MeshConfig(active_model=NEW, next_model=NEW)) is None


# --- the pipeline's side --------------------------------------------------------------------------------------
def test_new_images_land_in_both_indexes_during_a_switch() -> None:
    assert planned_models(MeshConfig(active_model=OLD)) == [OLD]
    assert planned_models(MeshConfig(active_model=OLD, next_model=NEW)) == [OLD, NEW]
    assert planned_models(MeshConfig(active_model=NEW, next_model=NEW)) == [NEW]


def test_a_job_with_models_for_a_done_image_is_a_background_reembed() -> None:
    job = ProcessJob(image_id="a", object_key="k", sha256="0" * 64, models=[NEW])
    assert is_reembed(job, record(Status.DONE))
    assert not is_reembed(job, record(Status.PROCESSING))  # not done yet: the full workflow
    assert not is_reembed(ProcessJob(image_id="a", object_key="k", sha256="0" * 64), record(Status.DONE))
    replay = ProcessJob(image_id="a", object_key="k", sha256="0" * 64, models=[NEW], attempt=2)
    assert not is_reembed(replay, record(Status.DONE, attempt=1))  # an operator's replay reprocesses


# --- progress and the swap ----------------------------------------------------------------------------------
def test_progress_counts_done_images_with_a_vector_under_the_new_model() -> None:
    done, total, missing = count(["a", "b", "c", "d"], ["b", "d", "x"])  # x: deleted or errored since
    assert (done, total, missing) == (2, 4, ["a", "c"])
    assert count([], []) == (0, 0, [])
    # an image uploaded during the switch is done with both vectors: total and done grow together
    assert count(["a", "b", "n"], ["a", "b", "n"]) == (3, 3, [])


def test_when_to_swap() -> None:
    assert ready_to_swap(True, set(), waited_s=0.0, drain_max_s=60.0)
    assert not ready_to_swap(False, None, waited_s=0.0, drain_max_s=60.0)  # an image lacks its vector
    assert not ready_to_swap(True, None, waited_s=0.0, drain_max_s=60.0)
    assert not ready_to_swap(True, {"a"}, waited_s=10.0, drain_max_s=60.0)  # an upload is still in flight
    assert ready_to_swap(True, {"a"}, waited_s=60.0, drain_max_s=60.0)  # ... stuck: do not wait forever


def test_the_swap_waits_for_the_images_unfinished_when_the_index_became_complete() -> None:
    assert drain(None, False, {"a"}) is None
    first = drain(None, True, {"a", "b"})  # the snapshot
    assert first == {"a", "b"}
    # "a" finished, "c" was uploaded since: not waited for (a steady stream can not hold the swap)
    assert drain(first, True, {"b", "c"}) == {"b"}
    assert drain({"b"}, True, {"c"}) == set()
    assert drain({"b"}, False, {"b"}) is None  # an image lost its vector (or a new one is missing): again


def test_a_stalled_switch_publishes_again_and_msg_ids_change_per_round() -> None:
    assert stalled(last_progress_at=0.0, now=121.0, missing=3, stall_s=120.0)
    assert not stalled(last_progress_at=0.0, now=119.0, missing=3, stall_s=120.0)
    assert not stalled(last_progress_at=0.0, now=500.0, missing=0, stall_s=120.0)
    a = switch_msg_id(NEW, 1700000000.123, 0, "img")
    assert a == "switch:clip_image:1700000000123:0:img"
    assert a != switch_msg_id(NEW, 1700000000.123, 1, "img")  # a new round is not dropped as a repeat
    assert a != switch_msg_id(NEW, 1700000500.0, 0, "img")  # nor a later switch to the same model


def test_progress_round_trips_through_a_redis_hash() -> None:
    p = Progress(model=NEW, state=SwitchState.BUILDING, from_model=OLD, done=3, total=7, started_at=1.5)
    raw = {k.encode(): v.encode() for k, v in encode_progress(p).items()}
    assert decode_progress(raw) == p
    assert decode_progress({}) is None
    assert decode_progress({b"model": b"x", b"state": b"bogus"}) is None


# --- requests on ``models.switch`` ------------------------------------------------------------------------------
class FakeConfig:
    """The switcher's ConfigClient, with the config actor's own rules (``apply_change``) and no NATS."""

    def __init__(self, cfg: MeshConfig, fail: Exception | None = None) -> None:
        self.value, self.fail = cfg, fail
        self.writes: list[tuple[str, Any]] = []

    async def get(self) -> MeshConfig:
        return self.value

    async def read(self) -> MeshConfig:
        if self.fail is not None:
            raise self.fail
        return self.value

    async def set(self, key: str, value: Any) -> MeshConfig:
        if self.fail is not None:
            raise self.fail
        self.writes.append((key, value))
        self.value = apply_change(self.value, key, value)
        return self.value


def switcher(config: FakeConfig) -> ModelSwitcher:
    """A switcher that only serves requests: its Redis and NATS clients are never connected."""
    return ModelSwitcher(
        prefix="test",
        redis=aioredis.Redis(),
        jobs=JobQueue(Client().jetstream()),
        config=config,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        vectors=None,  # type: ignore[arg-type]
        embedder=None,  # type: ignore[arg-type]
    )


def test_a_request_for_the_active_model_cancels_and_others_become_next_model() -> None:
    assert next_model_for(NEW, MeshConfig(active_model=OLD)) == NEW
    assert next_model_for(OLD, MeshConfig(active_model=OLD, next_model=NEW)) == ""


@pytest.mark.parametrize(
    ("active", "next_", "asked", "want_next", "want_cancelled"),
    [
        (OLD, "", NEW, NEW, ""),  # a new switch
        (OLD, NEW, NEW, NEW, ""),  # asked again: the same switch goes on
        (OLD, NEW, OLD, "", NEW),  # the active model: cancels the running switch
        (OLD, "", OLD, "", ""),  # the active model, nothing running: nothing to do (the gateway's 200)
        (OLD, NEW, "other_image", "other_image", NEW),  # another model replaces the running switch
        (NEW, NEW, NEW, "", ""),  # a swap half done: clearing next_model is what the swap does next anyway
    ],
)
async def test_a_switch_request_sets_next_model_and_says_what_it_cancelled(
    active: str, next_: str, asked: str, want_next: str, want_cancelled: str
) -> None:
    config = FakeConfig(MeshConfig(active_model=active, next_model=next_))
    reply = await switcher(config).request(ModelSwitchRequest(model=asked))
    assert (reply.active_model, reply.next_model, reply.cancelled) == (active, want_next, want_cancelled)
    assert config.value.next_model == want_next
    assert config.writes == ([] if next_ == want_next else [("next_model", want_next)])


async def test_a_switch_request_fails_typed_when_it_can_not_be_applied() -> None:
    with pytest.raises(PermanentError):
        await switcher(FakeConfig(MeshConfig())).request(ModelSwitchRequest(model=""))
    down = FakeConfig(MeshConfig(), fail=RetryableError("config.set timed out after 2.0s"))
    with pytest.raises(RetryableError):  # the service answers 503: the gateway's 503 with Retry-After
        await switcher(down).request(ModelSwitchRequest(model=NEW))


async def test_a_redis_outage_reading_the_progress_is_retryable() -> None:
    # the gateway answers 503 with Retry-After for it
    async with SwitchProgress.from_url(f"redis://127.0.0.1:{free_port()}/0", "test") as store:
        with pytest.raises(RetryableError):
            await store.read()
