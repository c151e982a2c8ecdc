"""Pipeline steps: the extension point of the workflow (``MeshConfig.pipeline_steps``, in order).

A step is a small module with a class that has ``async def run(ctx: StepContext) -> StepResult`` (the
``Step`` Protocol in ``base.py``); registering it here under a name is all it takes: the config actor then
accepts the name, and ``Pipeline.process`` runs it for every new image after fetch and decode, before
embedding. ``run_steps`` is what the pipeline calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from actors.steps.base import MetadataValue, Step, StepContext, StepRejected, StepResult
from actors.steps.exif import ExifStep
from actors.steps.moderation import ModerationStep

log = structlog.get_logger("steps")

STEPS: dict[str, Step] = {
    "exif": ExifStep(),
    "moderation": ModerationStep(),
}

Note = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass
class StepsOutcome:
    """What the steps added, merged in step order (a later step's value wins)."""

    metadata: dict[str, MetadataValue] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


async def run_steps(names: list[str], ctx: StepContext, note: Note) -> StepsOutcome:
    """Run the named steps in order; each one's history entry goes through ``note(step, detail)``.

    A step sees the metadata the earlier ones added (``ctx.metadata``). Raises ``StepRejected`` when a step
    rejects the image (after its note is written). A name missing from ``STEPS`` (a config written by a newer
    version) is skipped with a warning: the config actor refuses unknown names.
    """
    out = StepsOutcome()
    for name in names:
        step = STEPS.get(name)
        if step is None:
            log.warning("step.unknown", step=name, image_id=ctx.image_id)
            await note(name, {"outcome": "skipped", "reason": "unknown step"})
            continue
        result = await step.run(ctx)
        detail = dict(result.note)
        if result.metadata:
            detail.setdefault("added", sorted(result.metadata))
        detail.setdefault("outcome", "rejected" if result.reject else "ok")
        await note(name, detail)
        if result.reject is not None:
            raise StepRejected(name, result.reject)
        out.metadata.update(result.metadata)
        out.tags.update(result.tags)
        ctx.metadata.update(result.metadata)
    return out


__all__ = ["STEPS", "Step", "StepContext", "StepRejected", "StepResult", "StepsOutcome", "run_steps"]
