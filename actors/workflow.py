"""The steps that turn one stored image into an indexed vector. Knows nothing of JetStream.

The coordinator calls ``Pipeline.process(job)`` for each delivered job; a Temporal worker could call the same
method as an activity. Every step is idempotent, so a redelivered job never makes a second vector or record:
the record is keyed by image id, the vector by (model, image id).

States, in order: pending (gateway) → processing → embedded → indexed → done, or error with a reason; every
change goes through the ``Recorder`` (record, history, event, log; each entry's cause, attempt and delivery
are what the caller set with ``recorder.recording``: the coordinator, per delivery). Between fetch/decode and
embedding run the config's ``pipeline_steps`` (``actors/steps``): they add metadata and index tags, write their
own history notes (``{"step", "at", ...}``, no ``status``) or reject the image. A model with a classifier
gives the image its labels in the same inference (``actors/labels``): recorded with ``embedded``, and tags of
every model's index; a done image without labels gets them from a re-embed job (the reconciler's backfill).
During a model switch (``MeshConfig.next_model``) a new image is embedded and indexed under both models; a
switch's re-embed job (explicit ``models``, image already done) adds vectors without touching the record.
What each step reads and writes (object, pixels, embedding, index entry, record) is ``pipeline_io``'s.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
import numpy as np
import structlog
from prometheus_client import Counter

from actors.contract import ErrorInfo, ImageRecord, MeshConfig, ProcessJob, Status
from actors.copies import COPY_CHECK_VERSION
from actors.errors import PermanentError
from actors.imaging import STAGE_SECONDS, UndecodableImage, stage
from actors.pipeline_io import (
    ConfigSource,
    ContentMismatch,
    Heartbeat,
    ImageEmbedder,
    ObjectReader,
    PipelineIO,
    VectorIndex,
    WorkflowRecords,
    label_scores,
    labels_of,
    metadata_tags,
)
from actors.steps import StepContext, run_steps

log = structlog.get_logger("workflow")

OUTCOMES = Counter("mesh_jobs_total", "Jobs finished, by outcome", ["outcome"])
ERRORS = Counter("mesh_errors_total", "Pipeline errors, by code", ["code"])


class Embedded(msgspec.Struct, frozen=True):
    """What a new image's embed stage hands to its index and finish stages (the vectors themselves are in
    the Workflow DB, ``WorkflowStore.set_embedding``)."""

    models: list[str]  # the models it has a vector under, its own first
    tags: dict[str, str]  # its index tags (metadata and the pipeline steps')
    scores: dict[str, float]  # its label scores for the index
    keys: dict[str, str]  # the record's fields naming its thumbnail and copy features
    dim: int
    started_at: float  # when its processing began (epoch seconds)


class Pipeline(PipelineIO):
    """One image's workflow, from the stored object to the index."""

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
            if rec.copy_check != COPY_CHECK_VERSION:  # a crash between done and the queue: queued now
                await self._queue_copy_check(job.image_id)
            return _skipped(job, "already done")
        embedded, vectors = await self.embed_new(job, rec, beat)
        await self.index_new(job, embedded, beat, vectors)
        return await self.finish_new(job, embedded)

    # --- a new image's stages: one run of ``process`` here, three activities under Temporal -----------------
    async def plan(self, job: ProcessJob) -> str:
        """``stages`` when the job is a new image's (embed, index, finish), else ``process`` (a re-embed, or
        nothing left to do: ``process`` says which)."""
        rec = await self.store.get(job.image_id)
        if rec is None or is_reembed(job, rec) or (rec.status == Status.DONE and rec.attempt >= job.attempt):
            return "process"
        return "stages"

    async def embed_new(
        self, job: ProcessJob, rec: ImageRecord, beat: Heartbeat
    ) -> tuple[Embedded, dict[str, np.ndarray]]:
        """Fetch, decode, the pipeline steps and the embedding under every planned model (state
        ``processing``, then ``embedded``); the vectors are kept in the Workflow DB too."""
        started = time.time()
        cfg = await self.config.get()
        # during a model switch a new image lands in both indexes: the one serving and the one being built
        models = job.models or planned_models(cfg)
        await self._transition(job, Status.PROCESSING)
        data = await self._fetch(job)
        await beat()
        pixels, derived = await self._pixels(data, models, cfg.max_pixels)
        keys = await self._store_derived(job, derived)
        tags = await self._run_steps(job, rec, cfg, data, beat)
        primary, *others = models
        emb = await self._embed(job, primary, pixels[primary], beat)
        dim = int(emb.vector.shape[-1])
        async with stage("labels"):
            labels = labels_of(emb, cfg)
        extra = {} if labels is None else {"labels": labels}
        await self._transition(job, Status.EMBEDDED, model=primary, embedding_dim=dim, **extra)
        vectors = {primary: emb.vector}
        for model in others:
            vector = await self._embed_switch_model(job, model, pixels[model], beat)
            if vector is not None:
                vectors[model] = vector
        scores = label_scores(rec.labels if labels is None else labels)
        embedded = Embedded(
            models=list(vectors), tags=tags, scores=scores, keys=keys, dim=dim, started_at=started
        )
        return embedded, vectors

    async def index_new(
        self,
        job: ProcessJob,
        embedded: Embedded,
        beat: Heartbeat,
        vectors: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Upsert the image's vectors (``vectors``, else the Workflow DB's copies); state ``indexed``."""
        for model in embedded.models:
            vector = vectors[model] if vectors else await self.store.get_embedding(model, job.image_id)
            if vector is None:  # the Workflow DB lost it between the stages (a Redis failover)
                raise PermanentError(f"the {model} vector of {job.image_id} is gone; replay the image")
            await self._upsert(job, model, vector, embedded.tags, embedded.scores, beat)
        await self._transition(job, Status.INDEXED, model=embedded.models[0], **embedded.keys)

    async def finish_new(self, job: ProcessJob, embedded: Embedded) -> str:
        """State ``done``; the image is queued for the copy checker (its look-alikes, in the background)."""
        await self._transition(job, Status.DONE, error=None)
        await self._queue_copy_check(job.image_id)
        elapsed = time.time() - embedded.started_at
        STAGE_SECONDS.labels("total").observe(elapsed)
        OUTCOMES.labels("done").inc()
        log.info(
            "image.done",
            image_id=job.image_id,
            trace_id=job.trace_id,
            models=embedded.models,
            dim=embedded.dim,
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

    async def _embed_switch_model(
        self, job: ProcessJob, model: str, pixels: np.ndarray, beat: Heartbeat
    ) -> np.ndarray | None:
        """The dual-model case: the vector under the model a switch is building too.

        If that model fails on this image, the image still serves under the active one (None): a history
        note, and the switcher sees the missing vector (and a bad ``next_model`` is cancelled by it). A job
        that names its models explicitly needs every one of them, so there the error stands.
        """
        try:
            return (await self._embed(job, model, pixels, beat)).vector
        except PermanentError as e:
            if job.models:
                raise
            await self.recorder.note(job.image_id, "embed", model=model, error=e.message)
            log.warning("image.extra_model_failed", image_id=job.image_id, model=model, error=e.message)
            return None

    async def _reembed(self, job: ProcessJob, rec: ImageRecord, beat: Heartbeat) -> str:
        """Add the vectors of ``job.models`` to a done image: no state change, no history entry.

        An image without a thumbnail, copy features or labels gets them here (the reconciler's backfill
        publishes such jobs): the thumbnail and copy features from the same decode, the labels from a model with a classifier, written into the record
        (labels with a ``labels`` note) before any vector is upserted."""
        started = time.perf_counter()
        cfg = await self.config.get()
        data = await self._fetch(job)
        pixels, derived = await self._pixels(data, job.models, cfg.max_pixels)
        if not (rec.thumbnail_key and rec.copy_features_key):  # made before they existed (the backfill)
            await self.recorder.update(job.image_id, **await self._store_derived(job, derived))
        tags = metadata_tags(rec.metadata)  # the steps' fields are in the record's metadata already
        embs = {model: await self._embed(job, model, pixels[model], beat) for model in job.models}
        labels = rec.labels
        if labels is None:
            found = [found for e in embs.values() if (found := labels_of(e, cfg)) is not None]
            if found:
                labels = found[0]
                await self.recorder.update(job.image_id, labels=labels)
                await self.recorder.note(job.image_id, "labels", labels=[label.name for label in labels])
        for model, emb in embs.items():
            await self._upsert(job, model, emb.vector, tags, label_scores(labels), beat)
        OUTCOMES.labels("reembedded").inc()
        ms = round((time.perf_counter() - started) * 1000, 1)
        log.info("image.reembedded", image_id=job.image_id, models=job.models, ms=ms)
        return "reembedded"

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
    "ConfigSource",
    "ContentMismatch",
    "ImageEmbedder",
    "ObjectReader",
    "Pipeline",
    "UndecodableImage",
    "VectorIndex",
    "WorkflowRecords",
    "is_reembed",
    "label_scores",
    "labels_of",
    "metadata_tags",
    "planned_models",
]
