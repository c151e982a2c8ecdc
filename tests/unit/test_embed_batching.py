"""The embedder's coalescing: concurrent images of one model go to Triton as batches, each caller gets its own
image's vector (or its batch's error), a lone image goes out at once, and a cancelled caller is left out."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from actors.adapters.embed_batching import Coalescer


class FakeTriton:
    """Records each batch sent; answers each image with a vector made of its own first pixel."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on = fail_on  # the index of the batch that fails

    async def send(self, pixels: np.ndarray) -> np.ndarray:
        self.batches.append([int(p[0, 0, 0]) for p in pixels])
        await self.gate.wait()
        if self.fail_on == len(self.batches) - 1:
            raise RuntimeError("triton: INTERNAL: boom")
        return pixels[:, 0, 0, :].astype(np.float32)


def image(i: int) -> np.ndarray:
    return np.full((4, 4, 3), i, np.uint8)


async def test_a_lone_image_is_sent_at_once() -> None:
    triton = FakeTriton()
    vector = await Coalescer("m", triton.send, max_batch=32).embed(image(7))
    assert triton.batches == [[7]]
    assert vector.tolist() == [7.0, 7.0, 7.0]


async def test_concurrent_images_share_requests_and_each_caller_gets_its_own_vector() -> None:
    triton = FakeTriton()
    triton.gate.clear()  # the first request stays outstanding while the others queue
    c = Coalescer("m", triton.send, max_batch=4, max_in_flight=1)
    calls = [asyncio.create_task(c.embed(image(i))) for i in range(10)]
    await asyncio.sleep(0)
    triton.gate.set()
    vectors = await asyncio.gather(*calls)

    assert [v[0] for v in vectors] == list(range(10))
    assert triton.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]  # never more than max_batch


async def test_a_failed_batch_fails_its_own_callers_only() -> None:
    triton = FakeTriton(fail_on=1)
    triton.gate.clear()
    c = Coalescer("m", triton.send, max_batch=2, max_in_flight=1)
    calls = [asyncio.create_task(c.embed(image(i))) for i in range(5)]
    await asyncio.sleep(0)
    triton.gate.set()
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert triton.batches == [[0], [1, 2], [3, 4]]
    assert [type(r).__name__ for r in results] == [
        "ndarray",
        "RuntimeError",
        "RuntimeError",
        "ndarray",
        "ndarray",
    ]


async def test_a_caller_cancelled_while_queued_is_left_out() -> None:
    triton = FakeTriton()
    triton.gate.clear()
    c = Coalescer("m", triton.send, max_batch=8, max_in_flight=1)
    first = asyncio.create_task(c.embed(image(1)))
    await asyncio.sleep(0)
    gone = asyncio.create_task(c.embed(image(2)))
    kept = asyncio.create_task(c.embed(image(3)))
    await asyncio.sleep(0)
    gone.cancel()
    triton.gate.set()

    assert (await first)[0] == 1 and (await kept)[0] == 3
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert triton.batches == [[1], [3]]


async def test_two_requests_may_be_outstanding_at_once() -> None:
    triton = FakeTriton()
    triton.gate.clear()
    c = Coalescer("m", triton.send, max_batch=8)  # max_in_flight 2 by default
    calls = [asyncio.create_task(c.embed(image(i))) for i in range(4)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert triton.batches == [[0], [1]]  # two requests out before either answered, the rest queued
    triton.gate.set()
    await asyncio.gather(*calls)
    assert triton.batches == [[0], [1], [2, 3]]
