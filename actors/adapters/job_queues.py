"""The job queue of the configured workflow engine (``MESH_WORKFLOW_ENGINE``).

Temporal's SDK is imported only when Temporal is the engine: a JetStream mesh does not load it (it weighs
tens of MB in every gateway).
"""

from __future__ import annotations

from nats.js import JetStreamContext

from actors.adapters.job_queue import JobQueue
from actors.settings import Settings


def job_queue_for(settings: Settings, js: JetStreamContext) -> JobQueue:
    """JetStream's queue, or Temporal's (it connects on its first publish)."""
    if settings.workflow_engine == "temporal":
        from functools import partial

        from actors.adapters.temporal_jobs import TemporalJobQueue, connect_temporal

        return TemporalJobQueue(js, partial(connect_temporal, settings), settings.temporal_task_queue)
    return JobQueue(js)
