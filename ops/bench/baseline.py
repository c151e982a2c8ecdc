"""The equal-work ingest baseline: one Python process doing, for each image, exactly what the mesh does.

Per image, ``image_work`` runs the coordinator's own functions with the coordinator's arguments
(``Pipeline._pixels`` and ``Pipeline._run_steps`` in ``actors/workflow.py``): the header read with the pixel
cap and the JPEG draft target (the largest ``resize`` of the models the image is embedded with),
``actors.preprocess.pixels_for`` (decode, EXIF orientation, RGB, then ``to_pixels`` per model), and every
pipeline step the configuration names, on the image decoded at full size. ``tests/unit/test_bench_equal_work.py``
pins that both call the same functions with the same arguments.

``baseline_ingest`` is as fast as one process gets: a thread per core decodes and preprocesses while the main
thread runs batched ONNX Runtime inference (every core, as in Triton's backend) on the model file Triton
serves, in batches of the size the batch scan of the same run found best, then writes each batch to an HNSW
index with the indexer's schema and the indexer's write (``VectorIndex.upsert``: DEL and HSET of the same
document in MULTI; one round trip per batch here). Not done, because they are the mesh's bookkeeping, not
work on the image: workflow records, history, events, the object store, and the copy of the vector the
Workflow DB keeps for ``?include=embedding``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from actors import imaging, preprocess
from actors.adapters.vector_index import (
    ID_FIELD,
    TAGS_FIELD,
    VECTOR_FIELD,
    VectorIndex,
    as_vector,
    tags_field,
)
from actors.contract import ImageRecord, MeshConfig, PreprocessSpec, Status
from actors.steps import StepContext, run_steps
from actors.workflow import metadata_tags


@dataclass(frozen=True)
class ImageResult:
    """One image's pixels for each model (in order) and the index tags the pipeline would give it."""

    pixels: list[np.ndarray]
    tags: dict[str, str]


def image_work(data: bytes, specs: Sequence[PreprocessSpec], cfg: MeshConfig, image_id: str) -> ImageResult:
    """What the coordinator's pipeline does to one image before embedding, with the same calls."""
    # Pipeline._pixels -> ImageWork.pixels_for: header (cap, draft target), decode, each model's pixels
    target = max(spec.resize for spec in specs)
    img = imaging.open_header(data, target, cfg.max_pixels)
    try:
        arrays = preprocess.pixels_for(img, specs)
    finally:
        img.close()
    # Pipeline._run_steps: the configured steps on the image at full size
    tags = metadata_tags({})
    if cfg.pipeline_steps:
        tags = _run_steps(data, cfg, image_id)
    return ImageResult(arrays, tags)


async def _no_note(step: str, detail: dict[str, Any]) -> None:
    return None  # the mesh writes a history note: bookkeeping, not work on the image


def _run_steps(data: bytes, cfg: MeshConfig, image_id: str) -> dict[str, str]:
    full = preprocess.decode_opened(imaging.open_header(data, None, cfg.max_pixels))
    try:
        now = time.time()
        rec = ImageRecord(
            image_id=image_id,
            status=Status.PROCESSING,
            sha256=hashlib.sha256(data).hexdigest(),
            object_key=f"baseline/{image_id}",
            content_type="image/jpeg",
            size_bytes=len(data),
            width=full.width,
            height=full.height,
            created_at=now,
            updated_at=now,
        )
        ctx = StepContext(image_id=image_id, data=data, image=full, record=rec, config=cfg, metadata={})
        added = asyncio.run(run_steps(cfg.pipeline_steps, ctx, _no_note))
    finally:
        full.close()
    return metadata_tags(dict(added.metadata)) | added.tags


async def ensure_baseline_index(redis_url: str, prefix: str, model: str, dim: int) -> str:
    """The baseline's own index (same schema and HNSW parameters as the mesh's); returns its key prefix."""
    async with VectorIndex(redis_url, prefix) as index:
        await index.ensure_index(model, dim)
        return index.key_prefix(model)


def _write(
    r: redis.Redis, key_prefix: str, ids: list[str], vecs: np.ndarray, tags: list[dict[str, str]]
) -> None:
    """The indexer's write for each image (``VectorIndex.upsert``): DEL and HSET of the document in MULTI."""
    with r.pipeline(transaction=True) as pipe:
        for image_id, v, t in zip(ids, vecs, tags, strict=True):
            key = key_prefix + image_id
            pipe.delete(key)
            pipe.hset(
                key,
                mapping={ID_FIELD: image_id, TAGS_FIELD: tags_field(t), VECTOR_FIELD: as_vector(v).tobytes()},
            )
        pipe.execute()


def baseline_ingest(
    images: list[bytes],
    spec: PreprocessSpec,
    cfg: MeshConfig,
    session: Any,
    r: redis.Redis,
    key_prefix: str,
    batch: int,
    tag: str,
    workers: int | None = None,
) -> float:
    """Images/s of ``images`` through ``image_work`` on a thread per core, batched inference and the write."""
    input_name = session.get_inputs()[0].name
    workers = workers or os.cpu_count() or 2
    window = 2 * batch + workers  # images decoded ahead of inference: every core busy, memory bounded
    pending: deque[tuple[str, Future[ImageResult]]] = deque()
    todo = iter(enumerate(images))
    start = time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="baseline") as pool:

        def refill() -> None:
            while len(pending) < window:
                item = next(todo, None)
                if item is None:
                    return
                image_id = f"{tag}-{item[0]}"
                pending.append((image_id, pool.submit(image_work, item[1], (spec,), cfg, image_id)))

        refill()
        while pending:
            chunk = [pending.popleft() for _ in range(min(batch, len(pending)))]
            results = [f.result() for _, f in chunk]
            refill()  # the next images decode while this batch is embedded
            px = np.stack([res.pixels[0] for res in results])
            vecs = np.asarray(session.run(None, {input_name: px})[0], dtype=np.float32)
            _write(r, key_prefix, [i for i, _ in chunk], vecs, [res.tags for res in results])
    return len(images) / (time.perf_counter() - start)
