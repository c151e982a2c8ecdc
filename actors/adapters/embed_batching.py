"""Coalescing concurrent single-image embeddings into batched Triton requests.

A coordinator holds several jobs at a time and each embeds one image. Sent one by one, every image pays
Triton's per-request cost (gRPC, protobuf copies, scheduling: about 5.7 ms of CPU per image for the default
model, as much as the inference itself on this machine). ``Coalescer`` gathers the images that callers hand
it into one request of up to ``max_batch`` images, with no added wait: a request goes out as soon as fewer
than ``max_in_flight`` of its model's requests are outstanding, carrying every image queued by then (natural
batching). An idle mesh still embeds a lone image at once; a busy one sends batches as large as the load.
Triton's dynamic batcher still serves every other client (the gateway's query embeddings, other
coordinators).

Every caller gets its own image's row of the answer (its vector, and its class probabilities for a model with a
classifier) or the batch's error. A caller that is cancelled before its batch
is sent is left out of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
from prometheus_client import Histogram

BATCH_SIZE = Histogram(
    "mesh_embed_batch_images",
    "Images per Triton request sent by the coordinator's embedder (concurrent jobs coalesced)",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
)

Row = TypeVar("Row")
# a stack of images (``uint8 [N, H, W, 3]``) -> one answer per image, in order
SendBatch = Callable[[np.ndarray], Awaitable[Sequence[Row]]]


@dataclass
class _Waiting(Generic[Row]):
    pixels: np.ndarray
    result: asyncio.Future[Row]


class Coalescer(Generic[Row]):
    """One model's queue: ``await embed(pixels)`` returns the image's row of a batched ``send``."""

    def __init__(self, model: str, send: SendBatch[Row], *, max_batch: int, max_in_flight: int = 2) -> None:
        self.model = model
        self._send = send
        self.max_batch = max(1, max_batch)
        self.max_in_flight = max(1, max_in_flight)
        self._queue: list[_Waiting[Row]] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    async def embed(self, pixels: np.ndarray) -> Row:
        waiting: _Waiting[Row] = _Waiting(pixels, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._dispatch()
        return await waiting.result

    def _dispatch(self) -> None:
        """Send what is queued while fewer than ``max_in_flight`` requests are outstanding."""
        while len(self._in_flight) < self.max_in_flight:
            self._queue = [w for w in self._queue if not w.result.done()]  # cancelled callers leave
            if not self._queue:
                return
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            task = asyncio.create_task(self._run(batch))
            self._in_flight.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._dispatch()

    async def _run(self, batch: list[_Waiting[Row]]) -> None:
        BATCH_SIZE.labels(self.model).observe(len(batch))
        try:
            rows = await self._send(np.stack([w.pixels for w in batch]))
        except asyncio.CancelledError:  # the embedder is closing: so are its callers' waits
            for w in batch:
                w.result.cancel()
            raise
        except Exception as e:  # broad on purpose: each caller gets its batch's error, whatever it is
            for w in batch:
                if not w.result.done():
                    w.result.set_exception(e)
            return
        for w, row in zip(batch, rows, strict=True):
            if not w.result.done():
                w.result.set_result(row)


__all__ = ["BATCH_SIZE", "Coalescer", "SendBatch"]
