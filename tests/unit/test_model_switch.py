"""The model switch's pure logic: the target, progress, when to swap, the config rule, the pipeline's plan."""

from __future__ import annotations

import pytest

from actors.contract import ImageRecord
from actors.config_actor import InvalidConfig, apply_change
from actors.contract import MeshConfig, ProcessJob, Status
from actors.model_switch import (
    Progress,
    SwitchState,
    count,
    decode_progress,
    drain,
    encode_progress,
    ready_to_swap,
    stalled,
    switch_msg_id,
    switch_target,
)
from actors.workflow import is_reembed, planned_models

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
