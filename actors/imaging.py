"""The workflow's blocking image work and its timings: decode and preprocess off the event loop.

``ImageWork`` runs Pillow decoding and ``preprocess.to_pixels`` on a bounded thread pool (one thread per core
at most), so a coordinator with many jobs in flight keeps answering NATS. ``stage`` times a pipeline stage
into ``mesh_stage_seconds``. Bytes Pillow cannot decode become ``UndecodableImage`` (a permanent error).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from prometheus_client import Histogram

from actors import preprocess
from actors.contract import PreprocessSpec
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


@asynccontextmanager
async def stage(name: str) -> AsyncIterator[None]:
    """Time the block as pipeline stage ``name`` (also when it raises)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - start)


def decode(data: bytes, target: int | None = None) -> Image.Image:
    """Decode (and load) an image; ``target``: the smallest side the caller needs (JPEG draft decoding)."""
    try:
        img = preprocess.decode_image(data, target)
        img.load()
    except Exception as e:  # broad on purpose: Pillow raises many types (and plain ones) for bad bytes
        raise UndecodableImage(f"cannot decode image: {type(e).__name__}: {e}") from e
    return img


class ImageWork:
    """Decode and preprocess on the pipeline's own threads."""

    def __init__(self, workers: int | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 2, thread_name_prefix="pre")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def decode(self, data: bytes, target: int | None = None) -> Image.Image:
        return await self._run(decode, data, target)

    async def pixels(self, img: Image.Image, spec: PreprocessSpec) -> np.ndarray:
        async with stage("preprocess"):
            return await self._run(preprocess.to_pixels, img, spec)

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
