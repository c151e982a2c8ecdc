"""The steps that turn one stored image into an indexed vector. Knows nothing of JetStream.

The coordinator calls ``Pipeline.process(job)`` for each delivered job; a Temporal worker could call the same
method as an activity. Every step is idempotent, so a redelivered job never makes a second vector or record:
the record is keyed by image id, the vector by (model, image id).

States, in order: pending (gateway) → processing → embedded → indexed → done, or error with a reason; every
change goes through the ``Recorder`` (record, history, event, log; each entry's cause, attempt and delivery
are what the caller set with ``recorder.recording``: the coordinator, per delivery). Between fetch/decode and embedding run
the config's ``pipeline_steps`` (``actors/steps``): they add metadata and index tags, write their own history
notes (``{"step", "at", ...}``, no ``status``) or reject the image. During a model switch
(``MeshConfig.next_model``) a new image is embedded and indexed under both models; a switch's re-embed job
(explicit ``models``, image already done) adds vectors without touching the record.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np
import structlog
from prometheus_client import Counter

from actors.contract import ErrorInfo, ImageRecord, MeshConfig, PreprocessSpec, ProcessJob, Status
from actors.decode_budget import DecodeBudget
from actors.errors import PermanentError
from actors.imaging import STAGE_SECONDS, ImageWork, UndecodableImage, stage
from actors.recorder import EventSink, Recorder, RecordStore
from actors.steps import StepContext, run_steps

log = structlog.get_logger("workflow")

OUTCOMES = Counter("mesh_jobs_total", "Jobs finished, by outcome", ["outcome"])
ERRORS = Counter("mesh_errors_total", "Pipeline errors, by code", ["code"])

Heartbeat = Callable[[], Awaitable[None]]


class WorkflowRecords(RecordStore, Protocol):
    async def set_embedding(self, model: str, image_id: str, vector: np.ndarray) -> None: ...


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
        store: WorkflowRecords,
        events: EventSink,
        objects: ObjectReader,
        embedder: ImageEmbedder,
        index: VectorIndex,
        config: ConfigSource,
        cpu_workers: int | None = None,
        decode_budget: DecodeBudget | None = None,
    ) -> None:
        self.store = store
        self.recorder = Recorder(store, events)
        self.objects = objects
        self.embedder = embedder
        self.index = index
        self.config = config
        self.images = ImageWork(cpu_workers, decode_budget)

    def close(self) -> None:
        self.images.close()

    async def process(self, job: ProcessJob, heartbeat: Heartbeat | None = None) -> str:
        """Run every step for one job; returns the outcome (``done``, ``reembedded`` or ``skipped``).

        A job with explicit ``models`` for an image that is already done is a background re-embed (a model
        switch builds its index so): the vectors are added without touching the record's state or history.
        Raises ``RetryableError`` when a dependency is down (the caller retries later) and ``PermanentError``
        when the image can never be processed (the caller records the error and dead-letters the job).
        """
        beat = heartbeat or _noop
        rec = await self.store.get(job.image_id)
        if rec is None:
            return _skipped(job, "no record (deleted)")
        if is_reembed(job, rec):
            return await self._reembed(job, rec, beat)
        if rec.status == Status.DONE and rec.attempt >= job.attempt:
            return _skipped(job, "already done")
        cfg = await self.config.get()
        # during a model switch a new image lands in both indexes: the one serving and the one being built
        models = job.models or planned_models(cfg)
        started = time.perf_counter()

        await self._transition(job, Status.PROCESSING)
        data = await self._fetch(job)
        await beat()
        pixels = await self._pixels(data, models, cfg.max_pixels)
        tags = await self._run_steps(job, rec, cfg, data, beat)
        dim = await self._index_new_image(job, models, pixels, tags, beat)
        await self._transition(job, Status.INDEXED, model=models[0])
        await self._transition(job, Status.DONE, error=None)

        elapsed = time.perf_counter() - started
        STAGE_SECONDS.labels("total").observe(elapsed)
        OUTCOMES.labels("done").inc()
        log.info(
            "image.done",
            image_id=job.image_id,
            trace_id=job.trace_id,
            models=models,
            dim=dim,
            ms=round(elapsed * 1000, 1),
        )
        return "done"

    async def _run_steps(
        self, job: ProcessJob, rec: ImageRecord, cfg: MeshConfig, data: bytes, beat: Heartbeat
    ) -> dict[str, str]:
        """Run the config's pipeline steps; returns the image's index tags (its metadata and the steps')."""
        metadata = dict(rec.metadata)
        if not cfg.pipeline_steps:
            return metadata_tags(metadata)

        async def note(step: str, detail: dict[str, Any]) -> None:
            await self.recorder.note(job.image_id, step, **detail)

        # steps see the image at its full size; its decode cost is held until they are done
        async with stage("steps"), self.images.decoded(data, max_pixels=cfg.max_pixels) as full:
            ctx = StepContext(
                image_id=job.image_id, data=data, image=full, record=rec, config=cfg, metadata=dict(metadata)
            )
            added = await run_steps(cfg.pipeline_steps, ctx, note)
        if added.metadata:
            metadata.update(added.metadata)
            await self.recorder.update(job.image_id, metadata=metadata)
        await beat()
        return metadata_tags(metadata) | added.tags

    async def _index_new_image(
        self,
        job: ProcessJob,
        models: list[str],
        pixels: dict[str, np.ndarray],
        tags: dict[str, str],
        beat: Heartbeat,
    ) -> int:
        """Embed and index under the first model (the image's own), then under the others; returns the dim."""
        primary, *others = models
        vector = await self._embed(job, primary, pixels[primary], beat)
        dim = int(vector.shape[-1])
        await self._transition(job, Status.EMBEDDED, model=primary, embedding_dim=dim)
        await self._upsert(job, primary, vector, tags, beat)
        for model in others:
            await self._index_switch_model(job, model, pixels[model], tags, beat)
        return dim

    async def _index_switch_model(
        self, job: ProcessJob, model: str, pixels: np.ndarray, tags: dict[str, str], beat: Heartbeat
    ) -> None:
        """The dual-model case: also index under the model a switch is building.

        If that model fails on this image, the image still serves under the active one: a history note, and
        the switcher sees the missing vector (and a bad ``next_model`` is cancelled by it). A job that names
        its models explicitly needs every one of them, so there the error stands.
        """
        try:
            vector = await self._embed(job, model, pixels, beat)
        except PermanentError as e:
            if job.models:
                raise
            await self.recorder.note(job.image_id, "embed", model=model, error=e.message)
            log.warning("image.extra_model_failed", image_id=job.image_id, model=model, error=e.message)
            return
        await self._upsert(job, model, vector, tags, beat)

    async def _reembed(self, job: ProcessJob, rec: ImageRecord, beat: Heartbeat) -> str:
        """Add the vectors of ``job.models`` to a done image: no state change, no history entry."""
        started = time.perf_counter()
        data = await self._fetch(job)
        pixels = await self._pixels(data, job.models, (await self.config.get()).max_pixels)
        tags = metadata_tags(rec.metadata)  # the steps' fields are in the record's metadata already
        for model in job.models:
            vector = await self._embed(job, model, pixels[model], beat)
            await self._upsert(job, model, vector, tags, beat)
        OUTCOMES.labels("reembedded").inc()
        ms = round((time.perf_counter() - started) * 1000, 1)
        log.info("image.reembedded", image_id=job.image_id, models=job.models, ms=ms)
        return "reembedded"

    async def _pixels(self, data: bytes, models: list[str], max_pixels: int) -> dict[str, np.ndarray]:
        """Each model's pixels from one decode within the decode budget, the frame dropped before embedding.

        JPEGs decode at the smallest size every model's preprocessing can still work from (DCT scaling halves
        the cost); the gateway's /encode and search decode the same way, so a vector does not depend on the path.
        """
        specs = [await self.embedder.preprocess_spec(m) for m in models]
        target = max(spec.resize for spec in specs)
        arrays = await self.images.pixels_for(data, specs, target=target, max_pixels=max_pixels)
        return dict(zip(models, arrays, strict=True))

    async def _fetch(self, job: ProcessJob) -> bytes:
        async with stage("fetch"):
            data = await self.objects.get(job.object_key)
        if hashlib.sha256(data).hexdigest() != job.sha256:
            raise ContentMismatch(f"object {job.object_key} does not hold the uploaded bytes")
        return data

    async def _embed(self, job: ProcessJob, model: str, pixels: np.ndarray, beat: Heartbeat) -> np.ndarray:
        """The image's vector under ``model``, kept in the Workflow DB (``?include=embedding``, search)."""
        async with stage("embed"):
            vector = await self.embedder.embed_image(model, pixels)
        await self.store.set_embedding(model, job.image_id, vector)
        await beat()
        return vector

    async def _upsert(
        self, job: ProcessJob, model: str, vector: np.ndarray, tags: dict[str, str], beat: Heartbeat
    ) -> None:
        async with stage("index"):
            await self.index.upsert(model, job.image_id, vector, tags, trace_id=job.trace_id)
        await beat()

    async def fail(self, job: ProcessJob, code: str, reason: str) -> None:
        """Record that an image can not be processed (after its last delivery, or a permanent error).

        A failed background re-embed leaves the done image as it is (it still serves under the active model):
        the failure is a history note, and the model switch sees the vector missing.
        """
        ERRORS.labels(code).inc()
        rec = await self.store.get(job.image_id)
        if rec is not None and is_reembed(job, rec):
            OUTCOMES.labels("reembed_error").inc()
            error = {"code": code, "message": reason}
            await self.recorder.note(job.image_id, "reembed", models=job.models, error=error)
            log.warning(
                "image.reembed_error", image_id=job.image_id, models=job.models, code=code, reason=reason
            )
            return
        OUTCOMES.labels("error").inc()
        await self._transition(job, Status.ERROR, error=ErrorInfo(code=code, message=reason))
        log.warning("image.error", image_id=job.image_id, trace_id=job.trace_id, code=code, reason=reason)

    async def _transition(self, job: ProcessJob, status: Status, **fields: Any) -> None:
        await self.recorder.transition(job.image_id, status, trace_id=job.trace_id, **fields)


def planned_models(cfg: MeshConfig) -> list[str]:
    """The models a new image is embedded with: the active one, and the one a switch is building."""
    if cfg.next_model and cfg.next_model != cfg.active_model:
        return [cfg.active_model, cfg.next_model]
    return [cfg.active_model]


def is_reembed(job: ProcessJob, rec: ImageRecord) -> bool:
    """A job that only adds vectors to an image that is already done (not a replay: same attempt)."""
    return bool(job.models) and rec.status == Status.DONE and rec.attempt >= job.attempt


def _skipped(job: ProcessJob, reason: str) -> str:
    log.info("job.skipped", image_id=job.image_id, trace_id=job.trace_id, reason=reason)
    return "skipped"


async def _noop() -> None:
    return None


__all__ = [
    "ContentMismatch",
    "Pipeline",
    "UndecodableImage",
    "is_reembed",
    "metadata_tags",
    "planned_models",
]
