"""What a pipeline step is: its input (``StepContext``), its answer (``StepResult``) and the ``Step`` Protocol.

A step runs for each new image after it is fetched and decoded and before it is embedded (``Pipeline.process``).
It may add fields to the record's metadata (shown by ``GET /images/{id}`` and filterable with ``filter=``),
add index tags only, write its own history note, or reject the image with a reason. It never changes the
stored bytes nor the workflow states.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from actors.contract import ImageRecord, MeshConfig
from actors.errors import PermanentError

MetadataValue = str | int | float


@dataclass(frozen=True)
class StepContext:
    """One image as the steps see it. ``metadata`` is the record's, plus what earlier steps added."""

    image_id: str
    data: bytes  # the stored bytes, as uploaded (read-only: steps never change them)
    image: Image.Image  # decoded, upright (EXIF orientation applied), RGB
    record: ImageRecord
    config: MeshConfig
    metadata: dict[str, Any]


@dataclass
class StepResult:
    """What a step found. Empty means "nothing to add"."""

    metadata: dict[str, MetadataValue] = field(default_factory=dict)  # into the record and the index tags
    tags: dict[str, str] = field(default_factory=dict)  # index tags only (filterable, not in the record)
    note: dict[str, Any] = field(default_factory=dict)  # extra fields of the step's history entry
    reject: str | None = None  # a reason: the image ends in ``error`` with the step's name as the code


class Step(Protocol):
    """A pipeline step; register it in ``actors.steps.STEPS`` under the name the config lists."""

    async def run(self, ctx: StepContext) -> StepResult: ...


class StepRejected(PermanentError):
    """A step refused the image: a permanent error whose code is the step's name (e.g. ``moderation``)."""

    def __init__(self, step: str, reason: str) -> None:
        super().__init__(reason, code=step)
        self.step = step
