"""Ingest throughput through the mesh end to end (upload -> done), and the model files the baselines load.

The mesh run uploads through the gateway with ``uploaders`` concurrent clients and waits until every record
says ``done`` (read straight from Redis, so the waiting adds no load to the gateway). Its baseline, one process
doing the same work per image, is ``ops.bench.baseline``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis.asyncio as aioredis

from actors import preprocess
from actors.adapters.embedder import Embedder
from ops.bench.data import tagged
from ops.bench.stack import BenchStack


@dataclass(frozen=True)
class ModelFiles:
    """A served model as the in-process baselines see it: its ONNX file, preprocessing and dimension."""

    name: str
    onnx: Path
    spec: preprocess.PreprocessSpec
    dim: int
    labels: str | None = None  # the vocabulary of its classifier's classes (None: no classifier)


async def model_files(bench: BenchStack, repository: Path, name: str) -> ModelFiles:
    """The model's preprocessing and dimension as the mesh reads them (Triton's config), and its ONNX file."""
    async with Embedder.from_settings(bench.settings) as embedder:
        info = await embedder.model_info(name)
    if info.spec is None:
        raise ValueError(f"{name} is not an image model")
    return ModelFiles(name, repository / name / "1" / "model.onnx", info.spec, info.dim, info.labels)


def ort_session(path: Path, threads: int = 0) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads  # 0: ORT's choice (every core), as in the Triton backend
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def pixels(data: bytes, spec: preprocess.PreprocessSpec, draft: bool = False) -> np.ndarray:
    """Decode and preprocess with the pipeline's functions (``draft``: JPEG decodes at a reduced scale first,
    as the coordinator does); for the per-core preprocessing figures."""
    img = preprocess.decode_image(data, spec.resize if draft else None)
    return preprocess.to_pixels(img, spec)


@dataclass
class MeshRun:
    images_per_s: float
    seconds: float
    upload_seconds: float
    errors: int
    stages: dict[str, dict[str, float]]
    checks_s: float = 0.0  # after the last ``done``: until the copy checker had checked every image (untimed)


async def _upload_all(base_url: str, images: list[bytes], uploaders: int) -> list[str]:
    ids: list[str] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for data in images:
        queue.put_nowait(data)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            data = queue.get_nowait()
            for attempt in range(5):
                r = await client.post("/images/upload", files={"file": ("image.jpg", data, "image/jpeg")})
                if r.status_code in (200, 202):
                    ids.append(r.json()["image_id"])
                    break
                if r.status_code != 503 or attempt == 4:
                    raise RuntimeError(f"upload failed: HTTP {r.status_code} {r.text[:200]}")
                await asyncio.sleep(0.5)

    limits = httpx.Limits(max_connections=uploaders, max_keepalive_connections=uploaders)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        async with asyncio.TaskGroup() as tg:
            for _ in range(uploaders):
                tg.create_task(worker(client))
    return ids


async def wait_done(r: aioredis.Redis, prefix: str, ids: list[str], timeout_s: float) -> int:
    """Wait until every record is ``done`` or ``error``; returns how many are ``error``."""
    pending = list(ids)
    errors = 0
    deadline = time.monotonic() + timeout_s
    while pending:
        async with r.pipeline(transaction=False) as pipe:
            for image_id in pending:
                pipe.hget(f"{prefix}:image:{image_id}", "status")
            statuses = await pipe.execute()
        still = []
        for image_id, st in zip(pending, statuses, strict=True):
            s = st.decode() if isinstance(st, bytes) else st
            if s == "error":
                errors += 1
            elif s != "done":
                still.append(image_id)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(pending)} of {len(ids)} images not done after {timeout_s:.0f}s")
            await asyncio.sleep(0.1)
    return errors


async def copy_checks_drained(r: aioredis.Redis, prefix: str, timeout_s: float = 900) -> float:
    """Wait until the copy checker's queue is empty (actors/copy_check.py: it yields to jobs in flight, so a
    burst's checks follow its last ``done``); returns the seconds waited. Every timed run starts after this, so
    neither the baseline nor the next mesh run shares the CPU with the checks of the run before."""
    start = time.perf_counter()
    while await r.zcard(f"{prefix}:copyq"):
        if time.perf_counter() - start > timeout_s:
            raise TimeoutError(f"the copy checker's queue is not empty after {timeout_s:.0f}s")
        await asyncio.sleep(0.2)
    return time.perf_counter() - start


async def mesh_ingest(
    bench: BenchStack, images: list[bytes], tag: str, uploaders: int = 16, timeout_s: float = 900
) -> MeshRun:
    """End-to-end images/s through the mesh: first upload sent to last record ``done``; then (untimed) until
    the copy checker has checked them all."""
    s = bench.settings
    tagged_images = [tagged(d, f"{tag}-{i}") for i, d in enumerate(images)]
    r = aioredis.Redis.from_url(s.redis_server_url)
    try:
        await copy_checks_drained(r, s.redis_prefix)  # what an earlier step left
        before = bench.stage_times()
        start = time.perf_counter()
        ids = await _upload_all(bench.base_url, tagged_images, uploaders)
        uploaded = time.perf_counter() - start
        errors = await wait_done(r, s.redis_prefix, ids, timeout_s)
        seconds = time.perf_counter() - start
        stages = bench.stage_times().minus(before)
        checks = await copy_checks_drained(r, s.redis_prefix)
    finally:
        await r.aclose()
    return MeshRun(len(images) / seconds, seconds, uploaded, errors, stages, checks)
