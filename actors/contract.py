"""The mesh's language: subjects, stream and consumer names, the messages that travel on them, workflow states.

Gateway, actors, tests, ops tools and internal consumers import this module; nobody spells a subject twice.
It imports nothing of the project. Every message is a ``msgspec.Struct`` encoded as JSON, so an operator can
read and send them with the NATS CLI (``nats req index.stats '{"model":"efficientnet_lite0"}'``).
"""

from __future__ import annotations

import enum
import time
from typing import Any, Literal, TypeVar

import msgspec

# --- JetStream --------------------------------------------------------------------------------------------
JOBS_SUBJECT = "images.jobs.process"  # one durable job per accepted image
DEAD_SUBJECT = "images.jobs.dead"  # jobs that ran out of deliveries or failed permanently
JOBS_SUBJECTS = "images.jobs.>"  # what the work stream captures
EVENTS_PREFIX = "images.events"  # images.events.<status>
EVENTS_SUBJECTS = "images.events.>"

# --- services (NATS micro; request/reply) ----------------------------------------------------------------
CONFIG_SERVICE = "config"
CONFIG_GET = "config.get"
CONFIG_SET = "config.set"

INDEXER_SERVICE = "indexer"
INDEX_UPSERT = "index.upsert"
INDEX_QUERY = "index.query"
INDEX_DELETE = "index.delete"
INDEX_STATS = "index.stats"
INDEX_GROUPS = "index.groups"  # near-duplicate groups of one model's index

COORDINATOR_SERVICE = "coordinator"
COORDINATOR_STATUS = "coordinator.status"
COORDINATOR_REPROCESS = "coordinator.reprocess"
COORDINATOR_RECONCILE = "coordinator.reconcile"  # one full reconcile pass on demand (``mesh reconcile``)
MODELS_SWITCH = "models.switch"  # on the coordinator's service: its model switcher sets next_model

# --- headers ----------------------------------------------------------------------------------------------
TRACE_HEADER = "Mesh-Trace-Id"
MSG_ID_HEADER = "Nats-Msg-Id"


class Status(enum.StrEnum):
    """The seed's workflow states, in the order an image goes through them."""

    PENDING = "pending"
    PROCESSING = "processing"
    EMBEDDED = "embedded"
    INDEXED = "indexed"
    DONE = "done"
    ERROR = "error"
    DELETED = "deleted"  # not a workflow state: the event published when an image is deleted everywhere


TERMINAL = frozenset({Status.DONE, Status.ERROR})


class Cause(enum.StrEnum):
    """Why a history entry was written (its ``cause`` field, with ``attempt`` and, from a job, ``delivery``)."""

    UPLOAD = "upload"  # the gateway's job for a new image (its first delivery)
    RETRY = "retry"  # a job delivered again (delivery > 1)
    RECONCILE = "reconcile"  # the reconciler's repair, or a job it published again
    REPLAY = "replay"  # an operator's replay (``coordinator.reprocess``)
    MODEL_SWITCH = "model_switch"  # a model switch's re-embed job


def event_subject(status: Status | str) -> str:
    """The subject an image's state change is published on."""
    return f"{EVENTS_PREFIX}.{Status(status).value}"


def job_msg_id(image_id: str, attempt: int = 0) -> str:
    """The JetStream de-duplication id of a job; a replay bumps ``attempt`` so it is not dropped."""
    return f"{image_id}:{attempt}"


def now() -> float:
    return time.time()


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
    previous page ("" for the first). The whole index is scanned on every call: refused above ``max_images``.
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
    images: int  # how many images the index holds (and were scanned)
    total_groups: int


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


T = TypeVar("T")


# --- records and model specs ------------------------------------------------------------------------
class Label(Struct, kw_only=True):
    """One of an image's labels: a class of its model's classifier (``actors/labels``) and its probability."""

    name: str
    score: float


class ImageRecord(Struct, kw_only=True):
    """An image's workflow record, as stored and as ``GET /images/{id}`` shows it (less ``embedding``)."""

    image_id: str
    status: Status
    sha256: str
    object_key: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    metadata: dict[str, Any] = {}
    created_at: float = 0.0
    updated_at: float = 0.0
    model: str | None = None
    embedding_dim: int | None = None
    error: ErrorInfo | None = None
    labels: list[Label] | None = None  # most probable first; None: never labelled; []: none above the cut
    thumbnail_key: str = ""  # the pipeline's WebP thumbnail (``GET /images/{id}/thumbnail``); "": none yet
    copy_features_key: str = ""  # its copy-detection features (``actors/copies.py``); "": none yet
    copy_check: str = ""  # the copy checker's version that verified its candidates; "": not yet
    filename: str = ""  # the uploaded file's name, as the client sent it (shown, never used in keys)
    trace_id: str = ""
    attempt: int = 0
    job_seq: int = 0  # the stream sequence of the record's latest job (0: not known)
    history: list[dict[str, Any]] = []


class PreprocessSpec(msgspec.Struct, frozen=True, kw_only=True):
    """How a model wants its pixels: resize the shortest edge to ``resize``, center-crop ``crop`` x ``crop``.

    ``mean``/``std`` (0..1 scale, per channel in ``channel_order``) are informative for the client: the model
    applies them itself when ``normalize_in_model`` is true, which is how this project exports every model.
    """

    resize: int
    crop: int
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bicubic"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["HWC"] = "HWC"
    dtype: Literal["uint8"] = "uint8"
    normalize_in_model: bool = True

    @classmethod
    def from_json(cls, data: str | bytes) -> PreprocessSpec:
        """Parse the JSON stored in a model's config (raises ``msgspec.ValidationError`` on a bad spec)."""
        return msgspec.json.decode(data, type=cls)

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()

    @property
    def shape(self) -> tuple[int, int, int]:
        """The pixel array shape a request carries for one image: ``[H, W, 3]``."""
        return (self.crop, self.crop, 3)


# --- codec ------------------------------------------------------------------------------------------------
_encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decode(data: bytes, kind: type[T]) -> T:
    """Decode a message of type ``kind``; one decoder per type, built on first use."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    result: T = decoder.decode(data)
    return result
