"""The bootstrap's streams on a real NATS: created when missing; on a live stream, what an operator raised
(age, size, duplicate window) stays, and what we set is the floor (actors/streams.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid

from nats.aio.client import Client
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from actors.streams import ensure_stream


async def test_the_bootstrap_keeps_what_an_operator_raised_and_restores_the_floor(ops_nc: Client) -> None:
    js = ops_nc.jetstream()
    tag = uuid.uuid4().hex
    ours = StreamConfig(name=f"KEEP_{tag}", subjects=[f"keep.{tag}.>"], max_age=3600, duplicate_window=60)
    try:
        await ensure_stream(js, ours)  # created
        live = (await js.stream_info(str(ours.name))).config
        assert (live.max_age, live.duplicate_window) == (3600, 60)

        # an operator keeps jobs longer, caps the bytes and widens the duplicate window
        await js.update_stream(dataclasses.replace(live, max_age=7200, max_bytes=10**9, duplicate_window=120))
        await ensure_stream(js, ours)  # the next `make up` / deploy
        live = (await js.stream_info(str(ours.name))).config
        assert (live.max_age, live.max_bytes, live.duplicate_window) == (7200, 10**9, 120)

        # below our floor: brought back up
        await js.update_stream(dataclasses.replace(live, max_age=600, duplicate_window=30))
        await ensure_stream(js, ours)
        live = (await js.stream_info(str(ours.name))).config
        assert (live.max_age, live.duplicate_window) == (3600, 60)
    finally:
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(str(ours.name))
