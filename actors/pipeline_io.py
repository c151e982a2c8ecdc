"""What one step of the workflow reads and writes, for ``workflow.Pipeline``: the stored object (checked against
its sha256), the pixels of each model, the thumbnail and the copy features (one decode), the embedding (kept in the Workflow DB)
and its labels, the index entry (vector, tags, labels) and the record's state changes. The Protocols say what the pipeline needs of
the Workflow DB, the object store, Triton, the indexer and the Config DB; tests pass fakes of them.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import numpy as np
import structlog

from actors.adapters.embedder import ImageEmbedding
from actors.adapters.object_store import copy_features_key, thumbnail_key
from actors.contract import Label, MeshConfig, PreprocessSpec, ProcessJob, Status
from actors.decode_budget import DecodeBudget
from actors.errors import PermanentError
from actors.imaging import ImageWork, stage
from actors.labels import UnknownVocabulary, vocabulary
from actors.preprocess import THUMBNAIL_SIDE, Derived
from actors.recorder import EventSink, Recorder, RecordStore

log = structlog.get_logger("workflow")

Heartbeat = Callable[[], Awaitable[None]]


class WorkflowRecords(RecordStore, Protocol):
    async def set_embedding(self, model: str, image_id: str, vector: np.ndarray) -> None: ...
    async def get_embedding(self, model: str, image_id: str) -> np.ndarray | None: ...


class ObjectReader(Protocol):
    async def get(self, key: str) -> bytes: ...
    async def put(self, key: str, data: bytes, content_type: str) -> None: ...


class ImageEmbedder(Protocol):
    async def preprocess_spec(self, model: str) -> PreprocessSpec: ...
    async def embed_image_full(self, model: str, pixels: np.ndarray) -> ImageEmbedding: ...


class VectorIndex(Protocol):
    async def upsert(
        self,
        model: str,
        image_id: str,
        vector: np.ndarray,
        tags: dict[str, str] | None = None,
        trace_id: str = "",
        labels: dict[str, float] | None = None,
    ) -> Any: ...


class ConfigSource(Protocol):
    async def get(self) -> MeshConfig: ...


class CopyQueue(Protocol):
    """The copy checker's queue (``actors.adapters.copy_pairs.CopyPairs``)."""

    async def enqueue(self, image_ids: Iterable[str], at: float | None = None) -> int: ...


class ContentMismatch(PermanentError):
    code = "sha256_mismatch"


def metadata_tags(metadata: dict[str, Any]) -> dict[str, str]:
    """The record's metadata as index tags (filterable with ``filter=key:value``)."""
    return {str(k): str(v) for k, v in metadata.items()}


def label_scores(labels: list[Label] | None) -> dict[str, float]:
    """An image's labels as the index stores them: name -> score (``label=<name>`` tags)."""
    return {label.name: label.score for label in labels or []}


def labels_of(emb: ImageEmbedding, cfg: MeshConfig) -> list[Label] | None:
    """The labels the config keeps from a model's classifier; None when the model has none (or names a
    vocabulary this version does not ship: the image is indexed without labels, not failed)."""
    if emb.probs is None or emb.labels is None:
        return None
    try:
        vocab = vocabulary(emb.labels)
    except UnknownVocabulary as e:
        log.warning("labels.unknown_vocabulary", vocabulary=emb.labels, error=str(e))
        return None
    return vocab.top(emb.probs, cfg.label_min_score, cfg.label_max_count)


class PipelineIO:
    """The pipeline's reads and writes; ``Pipeline`` (``actors/workflow.py``) composes them into the workflow."""

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
        copy_queue: CopyQueue | None = None,
    ) -> None:
        self.store = store
        self.copy_queue = copy_queue  # None: no copy checker behind this pipeline (tests)
        self.recorder = Recorder(store, events)
        self.objects = objects
        self.embedder = embedder
        self.index = index
        self.config = config
        self.images = ImageWork(cpu_workers, decode_budget)

    def close(self) -> None:
        self.images.close()

    async def _pixels(
        self, data: bytes, models: list[str], max_pixels: int
    ) -> tuple[dict[str, np.ndarray], Derived]:
        """Each model's pixels, the image's thumbnail and its copy features from one decode within the decode
        budget, the frame dropped before embedding.

        JPEGs decode at the smallest size every model's preprocessing (and the thumbnail) can still work from
        (DCT scaling halves the cost); the gateway's /encode and search decode the same way, so a vector does
        not depend on the path.
        """
        specs = [await self.embedder.preprocess_spec(m) for m in models]
        target = max(spec.resize for spec in specs)
        derived = await self.images.pixels_for(data, specs, target=target, max_pixels=max_pixels)
        return dict(zip(models, derived.pixels, strict=True)), derived

    async def _store_derived(self, job: ProcessJob, derived: Derived) -> dict[str, str]:
        """Put the thumbnail and the copy features in the object store (the same bytes for every run of the
        job); returns the record's fields that name them."""
        thumb, feats = thumbnail_key(job.image_id, THUMBNAIL_SIDE), copy_features_key(job.image_id)
        async with stage("derived"):
            await asyncio.gather(
                self.objects.put(thumb, derived.thumbnail, "image/webp"),
                self.objects.put(feats, derived.copy_features, "application/octet-stream"),
            )
        return {"thumbnail_key": thumb, "copy_features_key": feats}

    async def _fetch(self, job: ProcessJob) -> bytes:
        async with stage("fetch"):
            data = await self.objects.get(job.object_key)
        if hashlib.sha256(data).hexdigest() != job.sha256:
            raise ContentMismatch(f"object {job.object_key} does not hold the uploaded bytes")
        return data

    async def _embed(
        self, job: ProcessJob, model: str, pixels: np.ndarray, beat: Heartbeat
    ) -> ImageEmbedding:
        """The image's vector under ``model`` (kept in the Workflow DB: ``?include=embedding``, search) and
        its class probabilities when the model has a classifier."""
        async with stage("embed"):
            emb = await self.embedder.embed_image_full(model, pixels)
        await self.store.set_embedding(model, job.image_id, emb.vector)
        await beat()
        return emb

    async def _upsert(
        self,
        job: ProcessJob,
        model: str,
        vector: np.ndarray,
        tags: dict[str, str],
        labels: dict[str, float],
        beat: Heartbeat,
    ) -> None:
        async with stage("index"):
            await self.index.upsert(model, job.image_id, vector, tags, trace_id=job.trace_id, labels=labels)
        await beat()

    async def _queue_copy_check(self, image_id: str) -> None:
        """Queue a done image for the copy checker (``actors/copy_check.py``); already queued: nothing."""
        if self.copy_queue is not None:
            await self.copy_queue.enqueue([image_id])

    async def _transition(self, job: ProcessJob, status: Status, **fields: Any) -> None:
        await self.recorder.transition(job.image_id, status, trace_id=job.trace_id, **fields)
