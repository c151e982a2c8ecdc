"""The JSON bodies the routes answer, as typed dicts: the OpenAPI document's response schemas, and what each
route's body is checked against (``mypy`` where a route builds it, pydantic on the way out).

Typed dicts rather than pydantic models, on purpose: a route keeps returning the plain dict it always built, and
the JSON on the wire stays exactly as it was. ``NotRequired`` keys are the ones a route adds only sometimes
(absent, not ``null``, when it does not); ``X | None`` keys are always there and may be ``null``. FastAPI
checks a returned dict against its typed dict with pydantic-core and writes the JSON in the same pass: about
1.6 µs more than the untyped ``dict[str, Any]`` for a 10-result ``/similar`` reply (``tests/unit/test_openapi.py``
measures it), against a request of about 4.6 ms (docs/BENCHMARKS.md). A key a route sends but its typed dict
lacks would be dropped silently: ``tests/unit/test_openapi.py`` round-trips each route's body through its type.
Keys go out in the order a typed dict declares them (pydantic writes them so), which is the order the routes
have always built them in.

The routes that answer a ``Response`` themselves (``POST /images/upload``: 202 or 200; ``GET /ready``: 200 or
503) bypass that check and only declare their type in ``responses=``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import Field
from typing_extensions import TypedDict  # pydantic refuses typing.TypedDict before Python 3.12

from actors.adapters.switch_progress import SwitchState
from actors.contract import Status

Tier = Literal["copy", "similar"]
DuplicatesMode = Literal["copies", "similar"]
Cursor = Annotated[str | None, Field(description="the `cursor` of the next page; null on the last page")]


# --- images -----------------------------------------------------------------------------------------------
class UploadAccepted(TypedDict):
    """`POST /images/upload`: the image's id and state (`duplicate: true` only for bytes already uploaded)."""

    image_id: str
    status: Status
    sha256: str
    duplicate: NotRequired[bool]


class ImageError(TypedDict):
    """Why an image ended in `error`."""

    code: str
    message: str


class LabelScore(TypedDict):
    """A classifier label of the image and its probability."""

    name: str
    score: float


class ImageRecordView(TypedDict):
    """`GET /images/{image_id}`: the image's record (`embedding` only with `include=embedding`)."""

    image_id: str
    status: Status
    sha256: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    metadata: Annotated[dict[str, str | int | float], Field(description="the upload's metadata")]
    created_at: float
    updated_at: float
    model: Annotated[str | None, Field(description="the model that embedded it; null before")]
    embedding_dim: int | None
    error: ImageError | None
    labels: Annotated[
        list[LabelScore] | None,
        Field(description="most probable first; null: never labelled; []: none reached the cut"),
    ]
    filename: str
    trace_id: str
    history: Annotated[
        list[dict[str, Any]], Field(description='oldest first: `{"status", "at", ...}` per state change')
    ]
    thumbnail_url: Annotated[str | None, Field(description="relative to the API root; null until made")]
    embedding: NotRequired[
        Annotated[list[float] | None, Field(description="with `include=embedding`: the vector, or null")]
    ]


class ScoredImage(TypedDict):
    """A result: an image and its cosine similarity to the query."""

    image_id: str
    score: float


class SimilarReply(TypedDict):
    """`GET /images/{image_id}/similar`: the most similar stored images, best first."""

    image_id: str
    model: str
    results: list[ScoredImage]


class EncodeReply(TypedDict):
    """`POST /encode`: the image's vector under the active model."""

    model: str
    embedding_dim: int
    embedding: list[float]


# --- library ----------------------------------------------------------------------------------------------
class ListedImage(TypedDict):
    """One image of `GET /images`."""

    image_id: str
    status: Status
    filename: str
    content_type: str
    size_bytes: int
    width: int
    height: int
    created_at: float
    thumbnail_url: Annotated[str | None, Field(description="relative to the API root; null until made")]


class ImageList(TypedDict):
    """`GET /images`: a page of images, newest first."""

    images: list[ListedImage]
    next_cursor: Cursor


# --- search -----------------------------------------------------------------------------------------------
class SearchReply(TypedDict):
    """`GET /search`: the images that best match the text; `mode` says how (the route's description)."""

    model: str
    mode: Literal["embedding", "labels"]
    labels: NotRequired[Annotated[list[str], Field(description="`labels` mode: the labels the query names")]]
    matched: NotRequired[Annotated[int, Field(description="`labels` mode: images with any of those labels")]]
    results: list[ScoredImage]
    reason: NotRequired[Annotated[str, Field(description="`labels` mode: why nothing matched")]]
    truncated: NotRequired[
        Annotated[bool, Field(description="`labels` mode: more images have the labels than one search ranks")]
    ]


class ImageSearchReply(TypedDict):
    """`POST /search/image`: the stored images most like the uploaded one, best first."""

    model: str
    results: list[ScoredImage]


# --- duplicates -------------------------------------------------------------------------------------------
class DuplicateHit(TypedDict):
    """A duplicate of the image, with its cosine similarity and its tier."""

    image_id: str
    score: float
    tier: Tier


class DuplicatesReply(TypedDict):
    """`GET /images/{image_id}/duplicates`: `checked` in `copies` mode, `threshold` in `similar` mode."""

    image_id: str
    model: str
    mode: DuplicatesMode
    checked: NotRequired[Annotated[bool, Field(description="the copy checker has verified this image")]]
    threshold: NotRequired[Annotated[float, Field(description="the cosine cut applied")]]
    results: list[DuplicateHit]


class DuplicateGroup(TypedDict):
    """A group of duplicates, sorted."""

    image_ids: list[str]
    size: int
    tier: Tier


class DuplicateGroupsReply(TypedDict):
    """`GET /duplicates`: `pending` in `copies` mode; `threshold` and `images` in `similar` mode."""

    model: str
    mode: DuplicatesMode
    pending: NotRequired[Annotated[int, Field(description="images still waiting for the copy check")]]
    threshold: NotRequired[Annotated[float, Field(description="the cosine cut applied")]]
    images: NotRequired[Annotated[int, Field(description="images in the index (all scanned)")]]
    total_groups: int
    groups: list[DuplicateGroup]
    next_cursor: Cursor


# --- models -----------------------------------------------------------------------------------------------
class ModelView(TypedDict):
    """A model Triton serves (`kind` and `dim` null while Triton does not answer)."""

    name: str
    kind: Literal["image", "text"] | None
    dim: int | None
    ready: bool
    vectors: NotRequired[Annotated[int | None, Field(description="image models: vectors in its index")]]
    active: bool


class SwitchView(TypedDict):
    """The latest model switch's progress."""

    model: str
    state: SwitchState
    from_model: str
    done: int
    total: int
    round: int
    started_at: float
    updated_at: float
    finished_at: float
    reason: str


class ModelsReply(TypedDict):
    """`GET /models`: the models, the active one, and the latest switch."""

    active: str
    next: str | None
    requested: str | None
    models: list[ModelView]
    switch: SwitchView | None


class SwitchAccepted(TypedDict):
    """`POST /models/switch`: the active model and the one asked for (null: nothing to do)."""

    active: str
    requested: str | None


# --- health -----------------------------------------------------------------------------------------------
class Health(TypedDict):
    """`GET /health`."""

    status: Literal["ok"]


class Readiness(TypedDict):
    """`GET /ready`: `failed` names what did not answer (with 503)."""

    status: Literal["ready", "unavailable"]
    failed: NotRequired[dict[str, str]]


class MeshStatus(TypedDict):
    """`GET /status`: the release, the workflow engine (`jetstream` or `temporal`: then `servers` has
    `temporal` too), each server, each actor service's instances, the active index, Triton's models, and
    each refusable resource (`used`, `limit` where uploads are refused, 0: none, `unit`)."""

    version: str
    workflow_engine: str
    servers: dict[str, str]
    services: dict[str, int]
    active_model: str
    triton: dict[str, str]
    index: dict[str, Any]
    resources: dict[str, Any]
