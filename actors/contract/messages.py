"""The messages: jobs, dead letters, events, the Config DB's keys, and the services' requests and replies."""

from __future__ import annotations

from typing import Any

import msgspec

from actors.contract.layout import FIRST_LAYOUT
from actors.contract.names import Cause, Status, now


class Struct(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=False):
    """Base of every message: unknown fields are ignored so that fields can be added without breaking readers."""


# --- jobs -------------------------------------------------------------------------------------------------
class ProcessJob(Struct, kw_only=True):
    """Durable work: turn one stored image into an indexed vector (published on ``images.jobs.process``)."""

    image_id: str
    object_key: str
    sha256: str
    trace_id: str = ""
    attempt: int = 0  # bumped by a replay; part of the de-duplication id
    models: list[str] = []  # models to embed with; empty means the active model
    cause: str = Cause.UPLOAD.value  # who published it (a ``Cause``); history entries carry it
    layout: int = FIRST_LAYOUT  # the storage layout of its writer (``contract.layout``; none: release 0.2.0)


class DeadLetter(Struct, kw_only=True):
    """A job the coordinator gave up on (published on ``images.jobs.dead``); replayable by ``ops replay``."""

    job: ProcessJob
    code: str
    reason: str
    deliveries: int
    at: float = msgspec.field(default_factory=now)


class ErrorInfo(Struct, kw_only=True):
    """Why an image ended in ``error``."""

    code: str
    message: str


class ImageEvent(Struct, kw_only=True):
    """An image's state change, published on ``images.events.<status>`` (stream ``IMAGE_EVENTS``)."""

    image_id: str
    status: Status
    at: float
    trace_id: str = ""
    model: str | None = None
    error: ErrorInfo | None = None
    detail: dict[str, Any] = {}


# --- config service ---------------------------------------------------------------------------------------
class MeshConfig(Struct, kw_only=True):
    """The runtime configuration (the Config DB). One NATS KV key per field, seeded from settings."""

    active_model: str = "efficientnet_lite0"
    max_upload_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 50_000_000
    default_k: int = 10
    max_k: int = 100
    coordinator_concurrency: int = 32  # jobs in flight per coordinator: enough to fill Triton's batches
    max_deliver: int = 5
    backoff_s: list[float] = msgspec.field(default_factory=lambda: [1.0, 2.0, 5.0, 10.0])
    ef_runtime: int = 200
    near_duplicate_threshold: float = 0.675  # tuned on the altered-copy set (README, "Search")
    # extension steps (actors/steps) run in this order after the image is fetched and decoded, before embedding
    pipeline_steps: list[str] = []
    # a model switch in progress: its index is built in the background, then it becomes active_model ("": none)
    next_model: str = ""
    exif_keep_gps: bool = False  # the exif step keeps GPS coordinates in the record (off: privacy)
    # rules of the moderation step, e.g. "min_side:32", "max_aspect_ratio:4", "flag:reject_metadata:k=v"
    moderation_rules: list[str] = []
    # an image's labels (actors/labels): its classifier's classes at least this probable, at most this many
    label_min_score: float = 0.1
    label_max_count: int = 5
    reconcile_period_s: float = 60.0  # the reconciler's period (a bounded batch each); 0: off
    reconcile_grace_s: float = 600.0  # what is younger than this is never repaired (work in flight)
    # jobs waiting for the coordinators at which uploads are refused with 503 (gateway/admission.py); 0: none
    max_backlog: int = 50_000


class ConfigGet(Struct, kw_only=True):
    """Request on ``config.get``; the reply is a ``MeshConfig``."""


class ConfigSet(Struct, kw_only=True):
    """Request on ``config.set``: set one field; the reply is the new ``MeshConfig`` or a service error."""

    key: str
    value: Any


# --- indexer service --------------------------------------------------------------------------------------
class UpsertRequest(Struct, kw_only=True):
    """Request on ``index.upsert``: store (or replace) one image's vector in the model's index."""

    model: str
    image_id: str
    vector: list[float] = []  # or vector_f32: its float32 bytes (see QueryRequest)
    vector_f32: bytes | None = None
    tags: dict[str, str] = {}
    labels: dict[str, float] = {}  # the image's labels and their scores: ``label=<name>`` tags (filterable)


class UpsertReply(Struct, kw_only=True):
    model: str
    image_id: str
    created: bool  # false when the image already had a vector (a redelivered job)


class QueryRequest(Struct, kw_only=True):
    """Request on ``index.query``: the k nearest images to a vector, best first."""

    model: str
    # the query vector: a JSON list (handy from the NATS CLI), or ``vector_f32``, its little-endian float32
    # bytes (base64 in JSON: what the mesh's own clients send, no float text to print and parse)
    vector: list[float] = []
    vector_f32: bytes | None = None
    k: int = 10
    offset: int = 0
    exclude_id: str | None = None
    filters: dict[str, str] = {}
    ef_runtime: int | None = None  # HNSW search breadth; None: the indexer's default (200, see DESIGN.md)
    # only images at least this similar (a VECTOR_RANGE query, still best first); None: plain KNN
    min_score: float | None = None


class Hit(Struct, kw_only=True):
    image_id: str
    score: float  # cosine similarity


class QueryReply(Struct, kw_only=True):
    model: str
    results: list[Hit]


class DeleteRequest(Struct, kw_only=True):
    """Request on ``index.delete``: remove an image from one model's index (or every index when model is None)."""

    image_id: str
    model: str | None = None


class DeleteReply(Struct, kw_only=True):
    deleted: int


class GroupsRequest(Struct, kw_only=True):
    """Request on ``index.groups``: near-duplicate groups (connected components at ``threshold``), paged.

    Groups are ordered by their smallest image id; ``cursor`` is the smallest id of the last group of the
    previous page ("" for the first). At the threshold the indexer keeps groups at (the config's
    ``near_duplicate_threshold``) a page is read from the stored groups, whatever the index's size; at any
    other, the whole index is scanned on every call: refused above ``max_images``.
    """

    model: str
    threshold: float
    limit: int = 50
    cursor: str = ""
    max_images: int = 20_000
    max_neighbors: int = 1_000  # per image: the range query's LIMIT (components still join through others)


class GroupsReply(Struct, kw_only=True):
    model: str
    threshold: float
    groups: list[list[str]]  # each sorted, of two images or more
    next_cursor: str | None  # None on the last page
    images: int  # how many images the index holds (and were scanned, unless ``kept``)
    total_groups: int
    kept: bool = False  # read from the groups kept at index time (else computed on demand)


class StatsRequest(Struct, kw_only=True):
    """Request on ``index.stats``."""

    model: str


class IndexStats(Struct, kw_only=True):
    model: str
    index: str
    exists: bool
    num_docs: int = 0
    percent_indexed: float = 0.0
    dim: int = 0


# --- coordinator service ----------------------------------------------------------------------------------
class CoordinatorStatusRequest(Struct, kw_only=True):
    """Request on ``coordinator.status``."""


class CoordinatorStatus(Struct, kw_only=True):
    in_flight: int
    processed: int
    failed: int
    pending: int  # JetStream consumer's pending messages


class ReprocessRequest(Struct, kw_only=True):
    """Request on ``coordinator.reprocess``: publish the jobs of these images again (or every errored one)."""

    image_ids: list[str] = []
    all_errored: bool = False


class ReprocessReply(Struct, kw_only=True):
    requeued: list[str]


class ReconcileRequest(Struct, kw_only=True):
    """Request on ``coordinator.reconcile``: one full pass now; ``grace_s`` overrides the config's grace."""

    grace_s: float | None = None


class ReconcileReply(Struct, kw_only=True):
    repairs: dict[str, int]  # by kind (``mesh_reconcile_repairs_total``'s label)
    scanned: dict[str, int]  # records, vectors, objects, intents looked at
    seconds: float


class ModelSwitchRequest(Struct, kw_only=True):
    """Request on ``models.switch``: make ``model`` the next model (``next_model``); the active model cancels
    a running switch. Whether Triton serves it is the caller's check (and the switcher's again)."""

    model: str


class ModelSwitchReply(Struct, kw_only=True):
    active_model: str
    next_model: str  # after the request; "" when no switch runs
    cancelled: str = ""  # the switch this request ended (its target), "" when none
