"""In-memory fakes of what the workflow and the coordinator talk to, for unit tests that start no server.

The Workflow DB, the object store, the embedder (Triton), the events, the config, a NATS connection whose
``index.upsert`` answers like the indexer service (including its error replies), and a JetStream message and
context. Each records what the tests assert on and can be told to fail the way the real one does.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np

from actors import contract
from actors.adapters.embedder import ImageEmbedding
from actors.adapters.index_client import IndexClient
from actors.adapters.object_store import ObjectMissing
from actors.contract import (
    ErrorInfo,
    ImageEvent,
    ImageRecord,
    MeshConfig,
    PreprocessSpec,
    ProcessJob,
    Status,
    UpsertReply,
    UpsertRequest,
)
from actors.errors import RetryableError
from actors.labels import vocabulary
from actors.rpc import ERROR_CODE_HEADER, ERROR_HEADER
from actors.workflow import Pipeline
from tests.images import distinct_jpegs

DIM = 8


@dataclass
class FakeStore:
    """``WorkflowStore``: records by id, history entries like the real one, embeddings by (model, id)."""

    records: dict[str, ImageRecord] = field(default_factory=dict)
    embeddings: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    down: int = 0  # the next ``down`` calls of ``get`` fail as if Redis were down

    async def get(self, image_id: str) -> ImageRecord | None:
        if self.down:
            self.down -= 1
            raise RetryableError("workflow store unavailable: fake outage")
        rec = self.records.get(image_id)
        return None if rec is None else msgspec.structs.replace(rec, history=list(rec.history))

    async def transition(
        self, image_id: str, status: Status, *, provenance: dict[str, Any] | None = None, **fields: Any
    ) -> float:
        at = time.time()
        entry: dict[str, Any] = {"status": status.value, "at": at}
        if fields.get("error") is not None:
            entry["error"] = msgspec.to_builtins(fields["error"])
        entry.update(provenance or {})
        self._write(image_id, {"status": status, "updated_at": at, **fields}, entry)
        return at

    async def note(self, image_id: str, step: str, **detail: Any) -> float:
        at = time.time()
        self._write(image_id, {"updated_at": at}, {"step": step, "at": at, **detail})
        return at

    async def update(self, image_id: str, **fields: Any) -> None:
        self._write(image_id, fields, None)

    async def set_embedding(self, model: str, image_id: str, vector: np.ndarray) -> None:
        self.embeddings[(model, image_id)] = vector

    async def get_embedding(self, model: str, image_id: str) -> np.ndarray | None:
        return self.embeddings.get((model, image_id))

    async def ids_in_status(self, status: Status, limit: int = 10_000) -> list[str]:
        return [i for i, r in self.records.items() if r.status == status][:limit]

    def _write(self, image_id: str, fields: dict[str, Any], entry: dict[str, Any] | None) -> None:
        rec = self.records[image_id]
        history = [*rec.history, entry] if entry is not None else rec.history
        self.records[image_id] = msgspec.structs.replace(rec, **fields, history=history)

    def states(self, image_id: str) -> list[str]:
        return [h["status"] for h in self.records[image_id].history if "status" in h]


@dataclass
class FakeObjects:
    """The object store: bytes by key; a missing key raises ``ObjectMissing`` like the real one."""

    objects: dict[str, bytes] = field(default_factory=dict)

    async def get(self, key: str) -> bytes:
        if key not in self.objects:
            raise ObjectMissing(f"no object {key}")
        return self.objects[key]

    async def put(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data


@dataclass
class FakeEmbedder:
    """Triton: a fixed vector per model; ``fail`` maps a model to the error its next calls raise;
    ``probs`` gives a model a classifier (ImageNet-1k class probabilities, the same for every image)."""

    fail: dict[str, Exception] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    probs: dict[str, np.ndarray] = field(default_factory=dict)

    async def preprocess_spec(self, model: str) -> PreprocessSpec:
        return PreprocessSpec(resize=32, crop=32)

    async def embed_image(self, model: str, pixels: np.ndarray) -> np.ndarray:
        return (await self.embed_image_full(model, pixels)).vector

    async def embed_image_full(self, model: str, pixels: np.ndarray) -> ImageEmbedding:
        self.calls.append(model)
        if model in self.fail:
            raise self.fail[model]
        assert pixels.shape == (32, 32, 3)
        vector = np.full(DIM, 1.0 + len(model), dtype=np.float32)
        probs = self.probs.get(model)
        return ImageEmbedding(vector / np.linalg.norm(vector), probs, None if probs is None else "imagenet1k")


def imagenet_probs(**scores: float) -> np.ndarray:
    """ImageNet-1k probabilities with these classes (names, spaces as ``_``) at these values."""
    vocab = vocabulary("imagenet1k")
    index = {c.name: c.index for c in vocab.classes}
    probs = np.zeros(len(vocab), dtype=np.float32)
    for name, score in scores.items():
        probs[index[name.replace("_", " ")]] = score
    return probs


@dataclass
class FakeEvents:
    published: list[ImageEvent] = field(default_factory=list)

    async def publish(self, event: ImageEvent) -> None:
        self.published.append(event)

    def statuses(self, image_id: str) -> list[str]:
        return [e.status.value for e in self.published if e.image_id == image_id]


@dataclass
class FakeConfig:
    cfg: MeshConfig = field(default_factory=lambda: MeshConfig(active_model="m1", backoff_s=[1.0, 2.0, 5.0]))

    async def get(self) -> MeshConfig:
        return self.cfg


@dataclass
class FakeIndexerNats:
    """A NATS connection on which ``index.upsert`` answers like the indexer service.

    ``errors`` are the codes of the next replies (e.g. ``["503", "503"]``: Redis refused twice), sent the way
    ``nats.micro`` sends a service error (headers, empty body); after them every upsert succeeds.
    """

    errors: list[str] = field(default_factory=list)
    upserts: list[UpsertRequest] = field(default_factory=list)
    refused: int = 0

    async def request(
        self,
        subject: str,
        data: bytes,
        timeout: float = 5.0,  # noqa: ASYNC109 - nats-py's signature
        headers: dict[str, str] | None = None,
    ) -> Any:
        assert subject == contract.INDEX_UPSERT, subject
        if self.errors:
            code = self.errors.pop(0)
            self.refused += 1
            return SimpleNamespace(
                headers={ERROR_CODE_HEADER: code, ERROR_HEADER: f"fake indexer says {code}"}, data=b""
            )
        req = contract.decode(data, UpsertRequest)
        self.upserts.append(req)
        reply = UpsertReply(model=req.model, image_id=req.image_id, created=True)
        return SimpleNamespace(headers=None, data=contract.encode(reply))

    def vectors(self) -> dict[tuple[str, str], np.ndarray]:
        return {(u.model, u.image_id): np.frombuffer(u.vector_f32 or b"", "<f4") for u in self.upserts}


@dataclass
class FakeMsg:
    """A delivered JetStream message: records how it was settled."""

    data: bytes
    delivered: int = 1
    settled: list[tuple[str, float | None]] = field(default_factory=list)
    beats: int = 0
    seq: int = 1  # the message's stream sequence

    @property
    def metadata(self) -> Any:
        sequence = SimpleNamespace(stream=self.seq, consumer=self.seq)
        return SimpleNamespace(num_delivered=self.delivered, sequence=sequence)

    async def ack(self) -> None:
        self.settled.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(("nak", delay))

    async def term(self) -> None:
        self.settled.append(("term", None))

    async def in_progress(self) -> None:
        self.beats += 1


@dataclass
class FakeJetStream:
    """The publishing side of JetStream: every publish stored with its headers (dead letters, replays)."""

    published: list[tuple[str, bytes, dict[str, str]]] = field(default_factory=list)
    fail: Callable[[], Exception] | None = None

    async def publish(
        self,
        subject: str,
        payload: bytes,
        timeout: float | None = None,  # noqa: ASYNC109 - nats-py's signature
        headers: dict[str, str] | None = None,
    ) -> Any:
        if self.fail is not None:
            raise self.fail()
        self.published.append((subject, payload, dict(headers or {})))
        return SimpleNamespace(seq=len(self.published), duplicate=False)

    def on(self, subject: str) -> list[tuple[bytes, dict[str, str]]]:
        return [(p, h) for s, p, h in self.published if s == subject]


@dataclass
class World:
    """A pipeline over fakes, and one stored image to run it on."""

    store: FakeStore = field(default_factory=FakeStore)
    objects: FakeObjects = field(default_factory=FakeObjects)
    embedder: FakeEmbedder = field(default_factory=FakeEmbedder)
    events: FakeEvents = field(default_factory=FakeEvents)
    config: FakeConfig = field(default_factory=FakeConfig)
    nats: FakeIndexerNats = field(default_factory=FakeIndexerNats)
    pipeline: Pipeline = field(init=False)

    def __post_init__(self) -> None:
        self.pipeline = Pipeline(
            store=self.store,
            events=self.events,
            objects=self.objects,
            embedder=self.embedder,
            index=IndexClient(self.nats),  # type: ignore[arg-type]  # the fake answers like nats-py's Client
            config=self.config,
            cpu_workers=1,
        )

    def add_image(
        self, image_id: str = "img1", *, status: Status = Status.PENDING, seed: int = 1, **fields: Any
    ) -> ProcessJob:
        data = distinct_jpegs(1, size=(64, 48), seed=seed)[0]
        sha = hashlib.sha256(data).hexdigest()
        key = f"images/{image_id[:2]}/{image_id}"
        self.objects.objects[key] = data
        self.store.records[image_id] = ImageRecord(
            image_id=image_id,
            status=status,
            sha256=sha,
            object_key=key,
            content_type="image/jpeg",
            size_bytes=len(data),
            width=64,
            height=48,
            trace_id=f"trace-{image_id}",
            history=[{"status": status.value, "at": 0.0}],
            **fields,
        )
        return ProcessJob(image_id=image_id, object_key=key, sha256=sha, trace_id=f"trace-{image_id}")

    def close(self) -> None:
        self.pipeline.close()


def error_of(rec: ImageRecord) -> ErrorInfo:
    assert rec.error is not None, rec
    return rec.error
