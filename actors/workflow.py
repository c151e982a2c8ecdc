"""The steps that turn one stored image into an indexed vector. Knows nothing of JetStream.

The coordinator calls ``Pipeline.process(job)`` for each delivered job; a Temporal worker could call the same
method as an activity. Every step is idempotent, so a redelivered job never makes a second vector or record:
the record is keyed by image id, the vector by (model, image id).

States, in order: pending (gateway) → processing → embedded → indexed → done, or error with a reason.
Between fetch/decode and embedding run the config's ``pipeline_steps`` (``actors/steps``): they add metadata
and index tags, write their own history notes (``{"step", "at", ...}``, no ``status``) or reject the image.
During a model switch (``MeshConfig.next_model``) a new image is embedded and indexed under both models; a
switch's re-embed job (explicit ``models``, image already done) adds vectors without touching the record.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import numpy as np
import structlog
from PIL import Image
from prometheus_client import Counter, Histogram

from actors import preprocess
from actors.adapters.events import Events
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import ErrorInfo, ImageEvent, ImageRecord, MeshConfig, PreprocessSpec, ProcessJob, Status
from actors.errors import PermanentError
from actors.steps import StepContext, StepsOutcome, run_steps

log = structlog.get_logger("workflow")
_T = TypeVar("_T")

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
    async def preprocess_spec(self, model: str) -> PreprocessSpec: ...
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
        """Run every step for one job; returns the outcome (``done``, ``reembedded`` or ``skipped``).

        A job with explicit ``models`` for an image that is already done is a background re-embed (a model
        switch builds its index so): the vectors are added without touching the record's state or history.
        Raises ``RetryableError`` when a dependency is down (the caller retries later) and ``PermanentError``
        when the image can never be processed (the caller records the error and dead-letters the job).
        """
        beat = heartbeat or _noop
        log_ = log.bind(image_id=job.image_id, trace_id=job.trace_id)
        rec = await self.store.get(job.image_id)
        if rec is None:
            log_.info("job.skipped", reason="no record (deleted)")
            return "skipped"
        if is_reembed(job, rec):
            return await self._reembed(job, rec, beat)
        if rec.status == Status.DONE and rec.attempt >= job.attempt:
            log_.info("job.skipped", reason="already done")
            return "skipped"
        cfg = await self.config.get()
        # during a model switch a new image lands in both indexes: the one serving and the one being built
        models = job.models or planned_models(cfg)
        started = time.perf_counter()

        await self._set(job, Status.PROCESSING)
        data = await self._fetch(job)
        await beat()
        # JPEG draft decoding (DCT scaling to the models' input size) halves the cost of preprocessing; the
        # gateway's /encode and search decode the same way, so a vector does not depend on the path
        img = await self._run(_decode, data, await self._draft_target(models))
        metadata = dict(rec.metadata)
        extra_tags: dict[str, str] = {}
        if cfg.pipeline_steps:
            async with _stage("steps"):
                full = await self._run(_decode, data)  # steps see the image at its full size
                added = await self._run_steps(job, rec, cfg, data, full, metadata)
            extra_tags = added.tags
            if added.metadata:
                metadata.update(added.metadata)
                await self.store.update(job.image_id, metadata=metadata)
            await beat()
        tags = metadata_tags(metadata) | extra_tags

        dim = 0
        for model in models:
            try:
                vector = await self._embed_and_store(job, model, img, beat)
            except PermanentError as e:
                if model == models[0] or job.models:
                    raise
                # the model being switched to failed on this image: the image still serves under the active
                # one; the switcher sees the missing vector (and a bad next_model is cancelled by it)
                await self.store.note(job.image_id, "embed", model=model, error=e.message)
                log_.warning("image.extra_model_failed", model=model, error=e.message)
                continue
            if model == models[0]:
                dim = int(vector.shape[-1])
                await self._set(job, Status.EMBEDDED, model=model, embedding_dim=dim)
            async with _stage("index"):
                await self.index.upsert(model, job.image_id, vector, tags, trace_id=job.trace_id)
            await beat()
        await self._set(job, Status.INDEXED, model=models[0])
        await self._set(job, Status.DONE, error=None)
        STAGE_SECONDS.labels("total").observe(time.perf_counter() - started)
        OUTCOMES.labels("done").inc()
        log_.info("image.done", models=models, dim=dim, ms=round((time.perf_counter() - started) * 1000, 1))
        return "done"

    async def _draft_target(self, models: list[str]) -> int:
        """The smallest decode size every model's preprocessing can still work from."""
        return max([(await self.embedder.preprocess_spec(m)).resize for m in models])

    async def _reembed(self, job: ProcessJob, rec: ImageRecord, beat: Callable[[], Awaitable[None]]) -> str:
        """Add the vectors of ``job.models`` to a done image: no state change, no history entry."""
        started = time.perf_counter()
        data = await self._fetch(job)
        img = await self._run(_decode, data, await self._draft_target(job.models))
        tags = metadata_tags(rec.metadata)  # the steps' fields are in the record's metadata already
        for model in job.models:
            vector = await self._embed_and_store(job, model, img, beat)
            async with _stage("index"):
                await self.index.upsert(model, job.image_id, vector, tags, trace_id=job.trace_id)
        OUTCOMES.labels("reembedded").inc()
        log.info(
            "image.reembedded",
            image_id=job.image_id,
            models=job.models,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return "reembedded"

    async def _fetch(self, job: ProcessJob) -> bytes:
        async with _stage("fetch"):
            data = await self.objects.get(job.object_key)
        if hashlib.sha256(data).hexdigest() != job.sha256:
            raise ContentMismatch(f"object {job.object_key} does not hold the uploaded bytes")
        return data

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Blocking image work (decode, resize) on the pipeline's threads, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _run_steps(
        self,
        job: ProcessJob,
        rec: ImageRecord,
        cfg: MeshConfig,
        data: bytes,
        img: Image.Image,
        metadata: dict[str, Any],
    ) -> StepsOutcome:
        ctx = StepContext(
            image_id=job.image_id, data=data, image=img, record=rec, config=cfg, metadata=dict(metadata)
        )

        async def note(step: str, detail: dict[str, Any]) -> None:
            await self.store.note(job.image_id, step, **detail)

        return await run_steps(cfg.pipeline_steps, ctx, note)

    async def _embed_and_store(
        self, job: ProcessJob, model: str, img: Image.Image, beat: Callable[[], Awaitable[None]]
    ) -> np.ndarray:
        spec = await self.embedder.preprocess_spec(model)
        async with _stage("preprocess"):
            pixels = await self._run(preprocess.to_pixels, img, spec)
        await beat()
        async with _stage("embed"):
            vector = await self.embedder.embed_image(model, pixels)
        await self.store.set_embedding(model, job.image_id, vector)
        await beat()
        return vector

    async def fail(self, job: ProcessJob, code: str, reason: str) -> None:
        """Record that an image can not be processed (after its last delivery, or a permanent error).

        A failed background re-embed leaves the done image as it is (it still serves under the active model):
        the failure is a history note, and the model switch sees the vector missing.
        """
        ERRORS.labels(code).inc()
        rec = await self.store.get(job.image_id)
        if rec is not None and is_reembed(job, rec):
            OUTCOMES.labels("reembed_error").inc()
            await self.store.note(
                job.image_id, "reembed", models=job.models, error={"code": code, "message": reason}
            )
            log.warning(
                "image.reembed_error", image_id=job.image_id, models=job.models, code=code, reason=reason
            )
            return
        OUTCOMES.labels("error").inc()
        await self._set(job, Status.ERROR, error=ErrorInfo(code=code, message=reason))
        log.warning("image.error", image_id=job.image_id, code=code, reason=reason)

    async def requeued(self, job: ProcessJob) -> None:
        """An errored image was queued again by an operator's replay: back to ``pending``, error cleared."""
        await self._set(job, Status.PENDING, error=None)

    async def set_error(self, job: ProcessJob, error: ErrorInfo | None) -> None:
        """Put an error back (a replay that could not queue its job)."""
        await self._set(job, Status.ERROR, error=error)

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


def planned_models(cfg: MeshConfig) -> list[str]:
    """The models a new image is embedded with: the active one, and the one a switch is building."""
    if cfg.next_model and cfg.next_model != cfg.active_model:
        return [cfg.active_model, cfg.next_model]
    return [cfg.active_model]


def is_reembed(job: ProcessJob, rec: ImageRecord) -> bool:
    """A job that only adds vectors to an image that is already done (not a replay: same attempt)."""
    return bool(job.models) and rec.status == Status.DONE and rec.attempt >= job.attempt


def _decode(data: bytes, target: int | None = None) -> Image.Image:
    try:
        img = preprocess.decode_image(data, target)
        img.load()
    except Exception as e:  # Pillow raises many types for bad bytes
        raise UndecodableImage(f"cannot decode image: {type(e).__name__}: {e}") from e
    return img


@asynccontextmanager
async def _stage(name: str):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(name).observe(time.perf_counter() - start)


async def _noop() -> None:
    return None


__all__ = ["Pipeline", "is_reembed", "metadata_tags", "planned_models"]
