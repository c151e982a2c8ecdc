"""Back up and restore JetStream streams through the snapshot API (ops/backup/streams.py), against real NATS.

Each test uses its own stream (``BKP_<hex>``, subjects ``bkp.<hex>.>``) or KV bucket and deletes it at the end.
What is checked is what a user of backup/restore sees: the messages, the stream's state, a consumer's place,
a bucket's keys and history.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, StreamConfig
from nats.js.errors import KeyNotFoundError, NotFoundError

from ops.backup.streams import BackupError, data_path, meta_path, restore_stream, snapshot_stream


@dataclass(frozen=True)
class Scratch:
    """A stream name and the subjects only it uses."""

    stream: str
    prefix: str  # subjects are ``<prefix>.<something>``


@pytest.fixture
async def scratch(ops_nc: Client) -> AsyncIterator[Scratch]:
    tag = uuid.uuid4().hex
    s = Scratch(stream=f"BKP_{tag}", prefix=f"bkp.{tag}")
    yield s
    with contextlib.suppress(NotFoundError):
        await ops_nc.jetstream().delete_stream(s.stream)


async def add_stream(js: JetStreamContext, s: Scratch, **extra: Any) -> None:
    await js.add_stream(StreamConfig(name=s.stream, subjects=[f"{s.prefix}.>"], **extra))


Message = tuple[int | None, str | None, bytes | None, dict[str, str] | None]


async def all_messages(js: JetStreamContext, stream: str, last: int) -> list[Message]:
    """(seq, subject, data, headers) of every message up to ``last``; interior deletes are skipped."""
    out: list[Message] = []
    for seq in range(1, last + 1):
        try:
            m = await js.get_msg(stream, seq)
        except NotFoundError:
            continue
        out.append((m.seq, m.subject, m.data, m.headers))
    return out


def files_in(folder: Path) -> dict[str, int]:
    """The folder's files and their sizes."""
    return {p.name: p.stat().st_size for p in folder.iterdir()}


def state_of(info: Any) -> tuple[int, int, int, int, int | None]:
    st = info.state
    return (st.first_seq, st.last_seq, st.messages, st.bytes, st.num_deleted)


async def test_messages_state_and_a_consumers_place_survive_the_round_trip(
    ops_nc: Client, scratch: Scratch, tmp_path: Path
) -> None:
    js = ops_nc.jetstream()
    await add_stream(js, scratch)
    # over 8 MiB of incompressible data: more than the server's snapshot window (8 MiB unanswered), so the
    # snapshot only completes when every chunk's flow control is answered
    for i in range(1, 201):
        size = 100_000 if i % 2 == 0 and i <= 180 else (i * 37) % 3000
        headers = {"X-Bkp": f"h{i}", "X-Kind": "even" if i % 2 == 0 else "odd"} if i % 3 == 0 else None
        await js.publish(f"{scratch.prefix}.{i % 4}", os.urandom(size), headers=headers)
    await js.delete_msg(scratch.stream, 120)  # an interior delete: part of the state too
    psub = await js.pull_subscribe(f"{scratch.prefix}.>", durable="reader", stream=scratch.stream)
    done = 0
    while done < 50:
        for m in await psub.fetch(50 - done, timeout=10):
            await m.ack_sync()
            done += 1
    await psub.unsubscribe()
    before = await js.stream_info(scratch.stream)
    messages = await all_messages(js, scratch.stream, 200)
    assert len(messages) == 199 and before.state.bytes > 8 * 1024 * 1024
    reader = await js.consumer_info(scratch.stream, "reader")
    assert reader.ack_floor is not None and reader.ack_floor.stream_seq == 50

    snap = await snapshot_stream(ops_nc, scratch.stream, tmp_path, chunk_size=32 * 1024)

    assert snap.stream == scratch.stream and snap.messages == 199
    assert snap.path == data_path(tmp_path, scratch.stream)
    assert snap.bytes > 8 * 1024 * 1024  # random payloads do not compress: many chunks went by
    files = files_in(tmp_path)  # the data and its metadata, nothing half-written
    assert files.keys() == {snap.path.name, meta_path(tmp_path, scratch.stream).name}
    assert files[snap.path.name] == snap.bytes

    await js.delete_stream(scratch.stream)
    info = await restore_stream(ops_nc, tmp_path, scratch.stream)

    assert info["config"]["name"] == scratch.stream
    after = await js.stream_info(scratch.stream)
    assert state_of(after) == state_of(before)
    assert after.config.subjects == [f"{scratch.prefix}.>"]
    assert await all_messages(js, scratch.stream, 200) == messages
    restored = await js.consumer_info(scratch.stream, "reader")
    assert restored.config.durable_name == "reader"
    assert restored.config.ack_policy == AckPolicy.EXPLICIT
    assert restored.ack_floor is not None and restored.ack_floor.stream_seq == 50
    assert restored.num_pending == 199 - 50
    psub = await js.pull_subscribe_bind("reader", stream=scratch.stream)
    try:
        [m] = await psub.fetch(1, timeout=10)
        assert m.metadata.sequence.stream == 51
        assert (m.subject, m.data, m.headers) == messages[50][1:]
        await m.ack_sync()
    finally:
        await psub.unsubscribe()


async def test_a_kv_bucket_keeps_its_latest_values_deletes_and_history(
    ops_nc: Client, tmp_path: Path
) -> None:
    js = ops_nc.jetstream()
    bucket = f"bkp_{uuid.uuid4().hex}"
    stream = f"KV_{bucket}"
    kv = await js.create_key_value(bucket=bucket, history=5)
    try:
        await kv.put("model", b"clip")
        await kv.put("k", b"10")
        await kv.put("gone", b"soon")
        await kv.put("model", b"siglip")  # an update
        await kv.delete("gone")
        before = await js.stream_info(stream)

        await snapshot_stream(ops_nc, stream, tmp_path)
        await js.delete_key_value(bucket)
        with pytest.raises(NotFoundError):
            await js.stream_info(stream)
        await restore_stream(ops_nc, tmp_path, stream)

        kv = await js.key_value(bucket)
        assert (await kv.get("model")).value == b"siglip"
        assert (await kv.get("k")).value == b"10"
        with pytest.raises(KeyNotFoundError) as gone:
            await kv.get("gone")
        assert gone.value.op == "DEL"  # a delete marker, as before: not a key that never was
        assert [(e.value, e.operation) for e in await kv.history("gone")] == [(b"soon", None), (b"", "DEL")]
        assert sorted(await kv.keys()) == ["k", "model"]
        assert [e.value for e in await kv.history("model")] == [b"clip", b"siglip"]
        assert (await kv.status()).history == 5
        assert state_of(await js.stream_info(stream)) == state_of(before)
        await kv.put("k", b"11")  # the restored bucket takes writes
        assert (await kv.get("k")).value == b"11"
    finally:
        with contextlib.suppress(NotFoundError):
            await js.delete_key_value(bucket)


async def test_restore_refuses_a_stream_with_messages_and_replaces_an_empty_one(
    ops_nc: Client, scratch: Scratch, tmp_path: Path
) -> None:
    js = ops_nc.jetstream()
    await add_stream(js, scratch)
    for i in range(3):
        await js.publish(f"{scratch.prefix}.a", f"m{i}".encode())
    await snapshot_stream(ops_nc, scratch.stream, tmp_path)
    await js.publish(f"{scratch.prefix}.a", b"m3")  # written after the snapshot
    before = await js.stream_info(scratch.stream)

    with pytest.raises(BackupError, match=rf"stream {scratch.stream} already holds 4 messages"):
        await restore_stream(ops_nc, tmp_path, scratch.stream)

    after = await js.stream_info(scratch.stream)
    assert state_of(after) == state_of(before)
    assert (await js.get_msg(scratch.stream, 4)).data == b"m3"

    # an empty stream of that name (as a fresh stack's bootstrap leaves it) is replaced, config and all
    await js.delete_stream(scratch.stream)
    await js.add_stream(StreamConfig(name=scratch.stream, subjects=[f"{scratch.prefix}.other"], max_msgs=7))
    await restore_stream(ops_nc, tmp_path, scratch.stream)
    info = await js.stream_info(scratch.stream)
    assert info.config.subjects == [f"{scratch.prefix}.>"]
    assert info.config.max_msgs in (None, -1)
    assert (info.state.messages, info.state.last_seq) == (3, 3)
    assert [(await js.get_msg(scratch.stream, s)).data for s in (1, 2, 3)] == [b"m0", b"m1", b"m2"]


async def test_a_snapshot_of_a_missing_stream_is_refused(ops_nc: Client, tmp_path: Path) -> None:
    name = f"BKP_{uuid.uuid4().hex}"
    with pytest.raises(BackupError, match=rf"stream {name}\b.*not found"):
        await snapshot_stream(ops_nc, name, tmp_path / "out")
    assert files_in(tmp_path / "out") == {}  # no half-written files


async def test_a_restore_without_its_files_is_refused(
    ops_nc: Client, scratch: Scratch, tmp_path: Path
) -> None:
    with pytest.raises(BackupError, match=rf"{scratch.stream}.*no snapshot metadata"):
        await restore_stream(ops_nc, tmp_path, scratch.stream)
    with pytest.raises(NotFoundError):  # nothing was created
        await ops_nc.jetstream().stream_info(scratch.stream)
