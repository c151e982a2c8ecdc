"""The workflow's blocking image work and its timings: decode and preprocess off the event loop, within a budget.

``ImageWork`` runs Pillow decoding and ``preprocess.to_pixels`` on a bounded thread pool (one thread per core
at most), so a coordinator with many jobs in flight keeps answering NATS. Every full decode first reads the
image's header (refusing more pixels than the cap before anything is decoded), then holds what the decode
costs of the process's ``DecodeBudget`` (``actors.decode_budget``) until its frame is closed: 32 jobs in
flight hold at most the budget in decoded pixels, not 32 frames. ``pixels_for`` turns bytes into each model's
pixels, thumbnail and copy features (``preprocess.derive``), and drops the frame before the job waits for Triton; ``decoded`` lends the full frame to the pipeline
steps. ``stage`` times a pipeline stage into ``mesh_stage_seconds`` (``decode_wait``: waiting for the budget;
``preprocess``: decode and resize for every model). Bytes Pillow cannot decode become ``UndecodableImage``, an
image over the pixel cap ``TooManyPixels`` (both permanent errors).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from PIL import Image
from prometheus_client import Histogram

from actors import preprocess
from actors.contract import PreprocessSpec
from actors.decode_budget import DEFAULT_DECODE_BUDGET_BYTES, DecodeBudget
from actors.errors import PermanentError

_T = TypeVar("_T")

STAGE_SECONDS = Histogram(
    "mesh_stage_seconds",
    "Time spent in each pipeline stage",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class UndecodableImage(PermanentError):
    code = "undecodable"


class TooManyPixels(PermanentError):
    code = "too_many_pixels"


@asynccontextmanager
async def stage(name: str) -> AsyncIterator[None]:
    """Time the block as pipeline stage ``name`` (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - start)


def open_header(data: bytes, target: int | None, max_pixels: int | None) -> Image.Image:
    """The image's header (``preprocess.open_image``), refused when it declares more than ``max_pixels``."""
    try:
        return preprocess.open_image(data, target, max_pixels)
    except Image.DecompressionBombError as e:  # over the cap (or Pillow's own), read from the header
        raise TooManyPixels(str(e)) from e
    except Exception as e:  # broad on purpose: Pillow raises many types (and plain ones) for bad bytes
        raise UndecodableImage(f"cannot decode image: {type(e).__name__}: {e}") from e


def _decoded(img: Image.Image) -> Image.Image:
    try:
        return preprocess.decode_opened(img)
    except Exception as e:  # broad on purpose: Pillow raises many types (and plain ones) for bad bytes
        raise UndecodableImage(f"cannot decode image: {type(e).__name__}: {e}") from e


def _derive(img: Image.Image, specs: Sequence[PreprocessSpec]) -> preprocess.Derived:
    try:
        return preprocess.derive(img, specs)
    except UndecodableImage:
        raise
    except Exception as e:  # broad on purpose: Pillow raises many types (and plain ones) for bad bytes
        raise UndecodableImage(f"cannot decode image: {type(e).__name__}: {e}") from e


class ImageWork:
    """Decode and preprocess on the pipeline's own threads, every decode within ``budget``."""

    def __init__(self, workers: int | None = None, budget: DecodeBudget | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2, thread_name_prefix="pre")
        self.budget = budget or DecodeBudget(DEFAULT_DECODE_BUDGET_BYTES)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def pixels_for(
        self,
        data: bytes,
        specs: Sequence[PreprocessSpec],
        *,
        target: int | None = None,
        max_pixels: int | None = None,
    ) -> preprocess.Derived:
        """The image's pixels for each spec, its thumbnail and its copy features, from one decode (``target``:
        the smallest side every spec needs: the JPEG draft, at least the thumbnail's side)."""
        target = max(target or 0, preprocess.THUMBNAIL_SIDE)
        img = await self._run(open_header, data, target, max_pixels)
        try:
            async with self._holding(img):
                async with stage("preprocess"):
                    return await self._run(_derive, img, specs)
        finally:
            img.close()

    @asynccontextmanager
    async def decoded(self, data: bytes, *, max_pixels: int | None = None) -> AsyncIterator[Image.Image]:
        """The image at full size (RGB, upright) for the block, its decode cost held until the block ends."""
        img = await self._run(open_header, data, None, max_pixels)
        try:
            async with self._holding(img):
                full = await self._run(_decoded, img)
                try:
                    yield full
                finally:
                    full.close()
        finally:
            img.close()

    @asynccontextmanager
    async def _holding(self, img: Image.Image) -> AsyncIterator[None]:
        async with stage("decode_wait"):
            cost = preprocess.decode_cost(img)
            await self.budget.acquire(cost)
        try:
            yield
        finally:
            self.budget.release(cost)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the pool. Cancelled, it still waits for the thread to finish (a thread cannot be
        stopped), so the budget is given back only once the frame it decodes is gone."""
        fut = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            if not fut.cancelled():
                fut.exception()  # retrieved and dropped: the job is cancelled, what the thread raised is moot
            raise
