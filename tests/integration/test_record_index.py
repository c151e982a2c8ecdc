"""The library's listing (``actors/adapters/record_index.py``) over records written by the real Workflow DB, in
the real Redis Stack, as the gateway's own ACL user: newest first, cursor pages that stay put while uploads
arrive, and the status, metadata and label filters."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.exceptions

from actors.adapters.record_index import RecordIndex, encode_cursor
from actors.adapters.redis_client import redis_client
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import ImageRecord, Label, Status
from actors.errors import PermanentError
from actors.settings import Settings
from tests.helpers import wait_until

T0 = 1_700_000_000.0


def record(image_id: str, at: float, **fields: object) -> ImageRecord:
    return ImageRecord(
        image_id=image_id,
        status=Status.PENDING,
        sha256=uuid.uuid4().hex * 2,
        object_key=f"images/{image_id[:2]}/{image_id}",
        content_type="image/jpeg",
        size_bytes=100,
        width=4,
        height=3,
        created_at=at,
        updated_at=at,
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
async def world(
    server_settings: Settings, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[WorkflowStore, RecordIndex]]:
    prefix = "r_" + re.sub(r"[^A-Za-z0-9]+", "_", request.node.name)[:50]
    store = WorkflowStore(server_settings.redis_server_url, prefix)
    # the gateway's own user: the ACL of ops/stack/privileges.py must let it create and search the index
    gateway = redis_client(server_settings.redis_url_for("gateway"))
    from ops.stack.privileges import redis_grant_commands

    ops = redis_client(server_settings.redis_server_url)
    for command in redis_grant_commands(server_settings.model_copy(update={"redis_prefix": prefix})):
        await ops.execute_command(*command)
    index = RecordIndex(gateway, prefix)
    await index.ensure()  # as the gateway does when it starts
    try:
        yield store, index
    finally:
        with contextlib.suppress(redis.exceptions.ResponseError):  # never created: refused before it
            await ops.execute_command("FT.DROPINDEX", f"{prefix}_records_idx", "DD")
        await ops.aclose()
        await gateway.aclose()
        await store.close()


async def ids_of(index: RecordIndex, limit: int, **kw: object) -> tuple[list[str], str | None]:
    rows, nxt = await index.page(limit, **kw)  # type: ignore[arg-type]
    return [r.image_id for r in rows], nxt


async def test_pages_are_newest_first_and_stay_put_while_uploads_arrive(
    world: tuple[WorkflowStore, RecordIndex],
) -> None:
    store, index = world
    for i in range(7):
        await store.create(record(f"img{i}", T0 + i, filename=f"photo {i}.jpg"))
    await store.create(record("tie-a", T0 + 3))  # the same instant as img3: ties go by id, descending
    first, cursor = await ids_of(index, 3)
    assert first == ["img6", "img5", "img4"] and cursor is not None
    await store.create(record("newer", T0 + 100))  # an upload while the user pages
    second, cursor = await ids_of(index, 3, cursor=cursor)
    assert second == ["tie-a", "img3", "img2"]
    third, cursor = await ids_of(index, 3, cursor=cursor)
    assert third == ["img1", "img0"] and cursor is None
    rows, _ = await index.page(1)
    assert rows[0].image_id == "newer" and rows[0].fields["filename"] == ""
    rows, _ = await index.page(1, cursor=encode_cursor(T0 + 7, "zzz"))
    assert rows[0].fields["filename"] == "photo 6.jpg" and rows[0].fields["size_bytes"] == "100"


async def test_status_metadata_and_label_filters(world: tuple[WorkflowStore, RecordIndex]) -> None:
    store, index = world
    await store.create(record("a", T0 + 1, metadata={"album": "summer 2024", "n": 3}))
    await store.create(record("b", T0 + 2, metadata={"album": "winter"}))
    await store.create(record("c", T0 + 3))
    await store.transition("a", Status.DONE, labels=[Label(name="tiger cat", score=0.5)])
    await store.transition("c", Status.DONE, labels=[Label(name="tabby", score=0.9)])
    assert (await ids_of(index, 10, status=Status.DONE))[0] == ["c", "a"]
    assert (await ids_of(index, 10, status=Status.PENDING))[0] == ["b"]
    assert (await ids_of(index, 10, filters={"album": "summer 2024"}))[0] == ["a"]
    assert (await ids_of(index, 10, filters={"n": "3"}))[0] == ["a"]
    assert (await ids_of(index, 10, filters={"label": "tiger cat"}))[0] == ["a"]
    assert (await ids_of(index, 10, filters={"label": "tabby", "album": "winter"}))[0] == []
    # a step's metadata update rewrites the tags with the record
    await store.update("b", metadata={"album": "winter", "exif.make": "Canon"})
    assert (await ids_of(index, 10, filters={"exif.make": "Canon"}))[0] == ["b"]


async def test_records_written_before_the_index_existed_are_listed_once_redis_scanned_them(
    server_settings: Settings, world: tuple[WorkflowStore, RecordIndex]
) -> None:
    _, index = world
    ops = redis_client(server_settings.redis_server_url)
    late = RecordIndex(ops, index.prefix + "_late")  # an index made after its prefix's records
    other = WorkflowStore(server_settings.redis_server_url, index.prefix + "_late")
    try:
        await other.create(record("old1", T0 + 1))
        await other.create(record("old2", T0 + 2))

        async def listed() -> bool:
            return (await ids_of(late, 10))[0] == ["old2", "old1"]

        await wait_until("FT.CREATE's scan lists the older records", listed, timeout_s=10)
    finally:
        with contextlib.suppress(redis.exceptions.ResponseError):
            await ops.execute_command("FT.DROPINDEX", late.name, "DD")
        await ops.aclose()
        await other.close()


async def test_a_bad_cursor_or_limit_is_refused(world: tuple[WorkflowStore, RecordIndex]) -> None:
    _, index = world
    with pytest.raises(PermanentError, match="bad cursor"):
        await index.page(10, cursor="not-a-cursor")
    with pytest.raises(PermanentError, match="limit"):
        await index.page(0)
