"""Inference alone: Triton through the mesh's ``Embedder`` (32 concurrent single-image calls, which it
coalesces into batched requests as it does for a coordinator's jobs) vs in-process ONNX Runtime at its best
batch, fp32 vs int8 (dynamic quantization) with its recall cost, and preprocessing images/s per core.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from actors.adapters.embedder import Embedder
from ops.bench.ingest import ModelFiles, ort_session, pixels
from ops.bench.stack import BenchStack


def random_pixels(m: ModelFiles, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *m.spec.shape), dtype=np.uint8)


async def triton_throughput(bench: BenchStack, m: ModelFiles, px: np.ndarray, concurrency: int = 32) -> float:
    """Images/s of ``len(px)`` single-image calls of the mesh's Embedder, ``concurrency`` at a time (it sends
    them to Triton as batched requests: ``actors/adapters/embed_batching.py``)."""
    async with Embedder.from_settings(bench.settings) as embedder:
        await embedder.embed_image(m.name, px[0])  # model config cached, channel open
        nxt = iter(range(len(px)))

        async def worker() -> None:
            for i in nxt:
                await embedder.embed_image(m.name, px[i])

        start = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker())
        return len(px) / (time.perf_counter() - start)


def ort_throughput(session: Any, px: np.ndarray, batch: int) -> float:
    """Images/s of in-process ONNX Runtime over ``px`` in batches of ``batch`` (after one warm-up batch)."""
    name = session.get_inputs()[0].name
    session.run(None, {name: px[:batch]})
    start = time.perf_counter()
    for i in range(0, len(px), batch):
        session.run(None, {name: px[i : i + batch]})
    return len(px) / (time.perf_counter() - start)


def best_batch(session: Any, px: np.ndarray, sizes: tuple[int, ...] = (1, 8, 16, 32)) -> dict[int, float]:
    return {b: ort_throughput(session, px[: max(b * 2, min(len(px), 4 * b))], b) for b in sizes}


# --- int8 ------------------------------------------------------------------------------------------------
def quantized(m: ModelFiles, cache: Path) -> Path:
    """``quantize_dynamic`` of the model's ONNX file (int8 weights, MatMul/Gemm/Conv), cached by mtime."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = cache / f"{m.name}.int8.onnx"
    if out.exists() and out.stat().st_mtime >= m.onnx.stat().st_mtime:
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer warns once per tensor it cannot infer a type for
    try:
        quantize_dynamic(str(m.onnx), str(tmp), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    tmp.replace(out)
    return out


def sibling_recall_at_4(vectors: np.ndarray, groups: list[str]) -> float:
    """Share of each image's 4 nearest others (cosine) that are altered copies of the same photo."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    g = np.asarray(groups)
    hits = 0
    for i in range(len(v)):
        top = np.argsort(-sims[i])[:4]
        hits += int(np.sum(g[top] == g[i]))
    return hits / (4 * len(v))


def embed_all(session: Any, m: ModelFiles, images: list[bytes], batch: int = 8) -> np.ndarray:
    name = session.get_inputs()[0].name
    px = np.stack([pixels(d, m.spec) for d in images])
    return np.concatenate([session.run(None, {name: px[i : i + batch]})[0] for i in range(0, len(px), batch)])


# --- preprocessing ----------------------------------------------------------------------------------------
def preprocess_rate(m: ModelFiles, images: list[bytes], draft: bool = False) -> float:
    """Images/s of decode + resize + crop on one thread (= per core)."""
    pixels(images[0], m.spec, draft)
    start = time.perf_counter()
    for d in images:
        pixels(d, m.spec, draft)
    return len(images) / (time.perf_counter() - start)


def decode_share(m: ModelFiles, images: list[bytes]) -> float:
    """Share of the pipeline's preprocessing time spent in JPEG decode (the rest: resize and crop)."""
    from actors import preprocess

    t_dec = t_all = 0.0
    for d in images:
        t0 = time.perf_counter()
        img = preprocess.decode_image(d)
        img.load()
        t1 = time.perf_counter()
        preprocess.to_pixels(img, m.spec)
        t2 = time.perf_counter()
        t_dec += t1 - t0
        t_all += t2 - t0
    return t_dec / t_all if t_all else 0.0


__all__ = ["ort_session"]
