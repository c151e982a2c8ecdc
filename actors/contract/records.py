"""What is stored: an image's workflow record (with its labels) and a model's preprocessing spec."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from actors.contract.layout import FIRST_LAYOUT
from actors.contract.messages import ErrorInfo, Struct
from actors.contract.names import Status


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
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
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
    history: list[dict[str, Any]] = msgspec.field(default_factory=list)
    layout: int = FIRST_LAYOUT  # the storage layout it was written under (``contract.layout``; none: 1)


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
