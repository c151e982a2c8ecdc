"""The equal-work ingest baseline: one Python process doing, for each image, exactly what the mesh does.

Per image, ``image_work`` runs the coordinator's own functions with the coordinator's arguments
(``Pipeline._pixels`` and ``Pipeline._run_steps`` in ``actors/workflow.py``): the header read with the pixel
cap and the JPEG draft target (the largest ``resize`` of the models the image is embedded with, at least the
thumbnail's side), ``actors.preprocess.derive`` (decode, EXIF orientation, RGB, ``to_pixels`` per model, the
WebP thumbnail, the copy features), their PUTs to the object store, and every pipeline step the
configuration names, on the image decoded at full size. ``tests/unit/test_bench_equal_work.py`` pins that both
call the same functions with the same arguments.

``baseline_ingest`` is as fast as one process gets: a thread per core decodes and preprocesses while the main
thread runs batched ONNX Runtime inference (every core, as in Triton's backend) on the model file Triton
serves, in batches of the size the batch scan of the same run found best, then writes each batch to an HNSW
index with the indexer's schema and the indexer's write (``VectorIndex.upsert``: DEL and HSET of the same
document in MULTI, its labels' tags and scores included; one round trip per batch here). The labels come from
the same inference (the model's ``PROBS``), cut as the config says. Not done, because they are the mesh's
bookkeeping, not work on the image: workflow records, history, events, the original's storage, and the copy of
the vector the Workflow DB keeps for ``?include=embedding``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis
from redis.typing import EncodableT, FieldT

from actors import imaging, preprocess
from actors.adapters.object_store import copy_features_key, thumbnail_key
from actors.adapters.vector_index import (
    ID_FIELD,
    TAGS_FIELD,
    VECTOR_FIELD,
    VectorIndex,
    as_vector,
    tags_field,
)
from actors.adapters.vector_index.names import LABEL_SCORES_FIELD
from actors.contract import ImageRecord, MeshConfig, PreprocessSpec, Status
from actors.labels import vocabulary
from actors.settings import Settings
from actors.steps import StepContext, run_steps
from actors.workflow import label_scores, metadata_tags

PutObject = Callable[[str, bytes, str], None]  # key, bytes, content type: the mesh's object-store PUT


@dataclass(frozen=True)
class ImageResult:
    """One image's pixels for each model (in order) and the index tags the pipeline would give it."""

    pixels: list[np.ndarray]
    tags: dict[str, str]
    thumbnail: bytes


def image_work(
    data: bytes, specs: Sequence[PreprocessSpec], cfg: MeshConfig, image_id: str, put: PutObject | None = None
) -> ImageResult:
    """What the coordinator's pipeline does to one image before embedding, with the same calls; ``put`` stores
    the thumbnail as ``Pipeline._store_thumbnail`` does."""
    # Pipeline._pixels -> ImageWork.pixels_for: header (cap, draft target), decode, each model's pixels and
    # the thumbnail
    target = max(max(spec.resize for spec in specs), preprocess.THUMBNAIL_SIDE)
    img = imaging.open_header(data, target, cfg.max_pixels)
    try:
        derived = preprocess.derive(img, specs)
    finally:
        img.close()
    if put is not None:  # Pipeline._store_derived
        put(thumbnail_key(image_id, preprocess.THUMBNAIL_SIDE), derived.thumbnail, "image/webp")
        put(copy_features_key(image_id), derived.copy_features, "application/octet-stream")
    # Pipeline._run_steps: the configured steps on the image at full size
    tags = metadata_tags({})
    if cfg.pipeline_steps:
        tags = _run_steps(data, cfg, image_id)
    return ImageResult(derived.pixels, tags, derived.thumbnail)


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
    r: redis.Redis,
    key_prefix: str,
    ids: list[str],
    vecs: np.ndarray,
    tags: list[dict[str, str]],
    labels: list[dict[str, float]],
) -> None:
    """The indexer's write for each image (``VectorIndex.upsert``): DEL and HSET of the document in MULTI."""
    with r.pipeline(transaction=True) as pipe:
        for image_id, v, t, scores in zip(ids, vecs, tags, labels, strict=True):
            key = key_prefix + image_id
            doc: dict[FieldT, EncodableT] = {
                ID_FIELD: image_id,
                TAGS_FIELD: tags_field(t, scores),
                VECTOR_FIELD: as_vector(v).tobytes(),
            }
            if scores:
                doc[LABEL_SCORES_FIELD] = json.dumps(scores, sort_keys=True)
            pipe.delete(key)
            pipe.hset(key, mapping=doc)
        pipe.execute()


def s3_put(s: Settings, folder: str) -> PutObject:
    """The baseline's thumbnail PUT: the mesh's S3, the operators' identity, keys under ``folder/``."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "s3",
        endpoint_url=s.s3_server_url,
        aws_access_key_id=s.s3_access_key,
        aws_secret_access_key=s.s3_secret_key,
        region_name=s.s3_region,
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=32),
    )

    def put(key: str, data: bytes, content_type: str) -> None:
        client.put_object(Bucket=s.s3_bucket, Key=f"{folder}/{key}", Body=data, ContentType=content_type)

    return put


def _labels(probs: np.ndarray | None, vocab: str | None, cfg: MeshConfig) -> list[dict[str, float]]:
    """Each image's labels as the pipeline keeps them (``pipeline_io.labels_of``)."""
    if probs is None or vocab is None:
        return [{} for _ in range(0 if probs is None else len(probs))]
    v = vocabulary(vocab)
    return [label_scores(v.top(row, cfg.label_min_score, cfg.label_max_count)) for row in probs]


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
    *,
    labels: str | None = None,
    put: PutObject | None = None,
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
                pending.append((image_id, pool.submit(image_work, item[1], (spec,), cfg, image_id, put)))

        refill()
        while pending:
            chunk = [pending.popleft() for _ in range(min(batch, len(pending)))]
            results = [f.result() for _, f in chunk]
            refill()  # the next images decode while this batch is embedded
            px = np.stack([res.pixels[0] for res in results])
            outs = session.run(None, {input_name: px})
            vecs = np.asarray(outs[0], dtype=np.float32)
            scores = _labels(outs[1] if len(outs) > 1 else None, labels, cfg) or [{} for _ in chunk]
            _write(r, key_prefix, [i for i, _ in chunk], vecs, [res.tags for res in results], scores)
    return len(images) / (time.perf_counter() - start)
