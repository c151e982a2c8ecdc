"""The steps that turn one stored image into an indexed vector. Knows nothing of JetStream.

The coordinator calls ``Pipeline.process(job)`` for each delivered job; a Temporal worker could call the same
method as an activity. Every step is idempotent, so a redelivered job never makes a second vector or record:
the record is keyed by image id, the vector by (model, image id).

States, in order: pending (gateway) → processing → embedded → indexed → done, or error with a reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Protocol

import numpy as np
import structlog
from prometheus_client import Counter, Histogram

from actors import preprocess
from actors.adapters.events import Events
from actors.adapters.workflow_store import ImageRecord, WorkflowStore
from actors.contract import ErrorInfo, ImageEvent, MeshConfig, ProcessJob, Status
from actors.errors import PermanentError

log = structlog.get_logger("workflow")

STAGE_SECONDS = Histogram(
    "mesh_stage_seconds",
    "Time spent in each pipeline stage",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
OUTCOMES = Counter("mesh_jobs_total", "Jobs finished, by outcome", ["outcome"])
ERRORS = Counter("mesh_errors_total", "Pipeline errors, by code", ["code"])


class ObjectReader(Protocol):
    async def get(self, key: str) -> bytes: ...


class ImageEmbedder(Protocol):
    async def preprocess_spec(self, model: str) -> preprocess.PreprocessSpec: ...
    async def embed_image(self, model: str, pixels: np.ndarray) -> np.ndarray: ...


class VectorIndex(Protocol):
    async def upsert(
        self,
        model: str,
        image_id: str,
        vector: np.ndarray,
        tags: dict[str, str] | None = None,
        trace_id: str = "",
    ) -> Any: ...


class ConfigSource(Protocol):
    async def get(self) -> MeshConfig: ...


class UndecodableImage(PermanentError):
    code = "undecodable"


class ContentMismatch(PermanentError):
    code = "sha256_mismatch"


def metadata_tags(metadata: dict[str, Any]) -> dict[str, str]:
    """The record's metadata as index tags (filterable with ``filter=key:value``)."""
    return {str(k): str(v) for k, v in metadata.items()}


class Pipeline:
    """One image's workflow, from the stored object to the index."""

    def __init__(
        self,
        *,
        store: WorkflowStore,
        events: Events,
        objects: ObjectReader,
        embedder: ImageEmbedder,
        index: VectorIndex,
        config: ConfigSource,
        cpu_workers: int | None = None,
    ) -> None:
        self.store = store
        self.events = events
        self.objects = objects
        self.embedder = embedder
        self.index = index
        self.config = config
        # decode and resize run off the event loop, on at most one thread per core
        self._pool = ThreadPoolExecutor(
            max_workers=cpu_workers or os.cpu_count() or 2, thread_name_prefix="pre"
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def process(self, job: ProcessJob, heartbeat: Callable[[], Awaitable[None]] | None = None) -> str:
        """Run every step for one job; returns the outcome (``done`` or ``skipped``).

        Raises ``RetryableError`` when a dependency is down (the caller retries later) and ``PermanentError``
        when the image can never be processed (the caller records the error and dead-letters the job).
        """
        beat = heartbeat or _noop
        log_ = log.bind(image_id=job.image_id, trace_id=job.trace_id)
        rec = await self.store.get(job.image_id)
        if rec is None:
            log_.info("job.skipped", reason="no record (deleted)")
            return "skipped"
        if rec.status == Status.DONE and rec.attempt >= job.attempt and not job.models:
            log_.info("job.skipped", reason="already done")
            return "skipped"
        cfg = await self.config.get()
        models = job.models or [cfg.active_model]
        started = time.perf_counter()

        await self._set(job, Status.PROCESSING)
        async with _stage("fetch"):
            data = await self.objects.get(job.object_key)
        if hashlib.sha256(data).hexdigest() != job.sha256:
            raise ContentMismatch(f"object {job.object_key} does not hold the uploaded bytes")
        await beat()

        last_model, dim = models[0], 0
        for model in models:
            spec = await self.embedder.preprocess_spec(model)
            async with _stage("preprocess"):
                pixels = await asyncio.get_running_loop().run_in_executor(self._pool, _pixels, data, spec)
            await beat()
            async with _stage("embed"):
                vector = await self.embedder.embed_image(model, pixels)
            await self.store.set_embedding(model, job.image_id, vector)
            last_model, dim = model, int(vector.shape[-1])
            await beat()
            if model == models[0]:
                await self._set(job, Status.EMBEDDED, model=model, embedding_dim=dim)
            async with _stage("index"):
                await self.index.upsert(
                    model, job.image_id, vector, metadata_tags(rec.metadata), trace_id=job.trace_id
                )
        await self._set(job, Status.INDEXED, model=last_model if len(models) == 1 else models[0])
        await self._set(job, Status.DONE, error=None)
        STAGE_SECONDS.labels("total").observe(time.perf_counter() - started)
        OUTCOMES.labels("done").inc()
        log_.info("image.done", models=models, dim=dim, ms=round((time.perf_counter() - started) * 1000, 1))
        return "done"

    async def fail(self, job: ProcessJob, code: str, reason: str) -> None:
        """Record that an image can not be processed (after its last delivery, or a permanent error)."""
        ERRORS.labels(code).inc()
        OUTCOMES.labels("error").inc()
        await self._set(job, Status.ERROR, error=ErrorInfo(code=code, message=reason))
        log.warning("image.error", image_id=job.image_id, code=code, reason=reason)

    async def _set(self, job: ProcessJob, status: Status, **fields: Any) -> None:
        at = await self.store.transition(job.image_id, status, **fields)
        err = fields.get("error")
        await self.events.publish(
            ImageEvent(
                image_id=job.image_id,
                status=status,
                at=at,
                trace_id=job.trace_id,
                model=fields.get("model"),
                error=err if isinstance(err, ErrorInfo) else None,
            )
        )


def _pixels(data: bytes, spec: preprocess.PreprocessSpec) -> np.ndarray:
    try:
        img = preprocess.decode_image(data)
    except Exception as e:  # Pillow raises many types for bad bytes
        raise UndecodableImage(f"cannot decode image: {type(e).__name__}: {e}") from e
    return preprocess.to_pixels(img, spec)


@asynccontextmanager
async def _stage(name: str):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - start)


async def _noop() -> None:
    return None


__all__ = ["ImageRecord", "Pipeline", "metadata_tags"]
