"""``mesh check``'s look at Temporal's side (``MESH_WORKFLOW_ENGINE=temporal``). Reads only.

Two anomalies the stores alone cannot show:

- ``workflow_stuck``: an image workflow still open longer than its retry policy can take (the same bound the
  reconciler uses for a stuck JetStream job, ``reconcile_rules.stuck_after_s``);
- ``workflow_failed_without_error``: an image whose latest workflow failed while its record is not ``error``
  (a give-up that never reached the record). A failed re-embed (a model switch's job: the image stays
  ``done``, its failure is a history note) is not one, nor an image deleted since.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from temporalio.client import Client, WorkflowExecutionStatus

from actors.adapters.temporal_jobs import WORKFLOW, connect_temporal, workflow_id
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import ImageRecord, Status
from actors.settings import Settings

WORKFLOW_STUCK = "workflow_stuck"
FAILED_WITHOUT_ERROR = "workflow_failed_without_error"
KINDS = (WORKFLOW_STUCK, FAILED_WITHOUT_ERROR)
PREFIX = workflow_id("")


@dataclass(frozen=True)
class Failed:
    """An image's latest workflow run, failed: its image and whether it was a re-embed."""

    image_id: str
    reembed: bool


def failed_without_error(failed: list[Failed], records: dict[str, ImageRecord | None]) -> list[str]:
    """The images whose latest workflow failed but whose record does not say ``error``."""
    out = []
    for f in failed:
        rec = records.get(f.image_id)
        if rec is None or f.reembed:  # deleted since, or a re-embed (its failure is a note, not a state)
            continue
        if rec.status != Status.ERROR:
            out.append(f.image_id)
    return out


async def temporal_anomalies(
    settings: Settings, store: WorkflowStore, stuck_after_s: float, now: datetime | None = None
) -> tuple[dict[str, list[str]], int]:
    """Each anomaly's images, and how many workflows were looked at."""
    client = await connect_temporal(settings)
    base = f"WorkflowType='{WORKFLOW}' AND TaskQueue='{settings.temporal_task_queue}'"
    since = ((now or datetime.now(UTC)) - timedelta(seconds=stuck_after_s)).isoformat()
    stuck: list[str] = []
    scanned = 0
    async for w in client.list_workflows(f"{base} AND ExecutionStatus='Running' AND StartTime < '{since}'"):
        scanned += 1
        stuck.append(w.id.removeprefix(PREFIX))
    failed: list[Failed] = []
    async for w in client.list_workflows(f"{base} AND ExecutionStatus='Failed'"):
        scanned += 1
        if await _is_latest(client, w.id, w.run_id):  # an older run, replayed since, is history
            memo = await w.memo()
            failed.append(Failed(w.id.removeprefix(PREFIX), bool(memo.get("models"))))
    records = {f.image_id: await store.get(f.image_id) for f in failed}
    return {WORKFLOW_STUCK: stuck, FAILED_WITHOUT_ERROR: failed_without_error(failed, records)}, scanned


async def _is_latest(client: Client, wid: str, run_id: str) -> bool:
    latest = await client.get_workflow_handle(wid).describe()
    return latest.run_id == run_id and latest.status == WorkflowExecutionStatus.FAILED
