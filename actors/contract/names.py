"""Names: subjects, stream, consumer and service names, headers, workflow states and failure causes."""

from __future__ import annotations

import enum
import time

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
