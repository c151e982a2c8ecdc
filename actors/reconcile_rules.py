"""The reconciler's decisions, pure (no I/O): which record, object, vector or upload intent is an anomaly, how
long the delivery policy lets a job run, and the invariants ``mesh check`` adds (two ``done`` entries from one
delivery, a vector indexed twice).

| kind | anomaly | repair (``actors/reconcile_repairs.py``) |
| --- | --- | --- |
| ``pending_without_job`` | ``pending`` past the grace, its job not in the stream (or consumed already) | publish it again |
| ``stuck`` | ``processing``/``embedded``/``indexed`` (or ``pending`` with its job delivered) past what the delivery policy allows | ``error`` ``stuck`` + dead letter |
| ``orphan_object`` | an object past the grace without a record or an upload intent | delete it |
| ``done_without_vector`` | ``done`` past the grace without a vector in the active model's index | re-index it |
| ``done_without_labels`` | ``done`` past the grace, indexed, never labelled, while the active model has a classifier | re-embed it (labels backfill) |
| ``done_without_derived`` | ``done`` past the grace, indexed, without a thumbnail or copy features (indexed before they existed) | re-embed it (both come from its decode) |
| ``done_without_copy_check`` | ``done`` past the grace with copy features, its look-alikes not verified by this version's copy checker | queue it for the checker |
| ``vector_without_record`` | a vector whose image has no record | delete it |
| ``stale_intent`` | an upload intent whose gateway is dead, or whose image is recorded | settle it |

Everything younger than the grace (``reconcile_grace_s``) is work in flight and left alone.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actors.contract import ImageRecord, MeshConfig, Status
from actors.copies import COPY_CHECK_VERSION
from actors.delivery import backoff_delay
from actors.outage import OUTAGE_POLICY


class Kind(enum.StrEnum):
    PENDING_WITHOUT_JOB = "pending_without_job"
    STUCK = "stuck"
    ORPHAN_OBJECT = "orphan_object"
    DONE_WITHOUT_VECTOR = "done_without_vector"
    DONE_WITHOUT_LABELS = "done_without_labels"
    DONE_WITHOUT_DERIVED = "done_without_derived"
    DONE_WITHOUT_COPY_CHECK = "done_without_copy_check"
    VECTOR_WITHOUT_RECORD = "vector_without_record"
    STALE_INTENT = "stale_intent"
    # found by ``mesh check`` only: nothing safe to repair automatically
    DUPLICATE_DONE = "duplicate_done"
    VECTOR_INDEXED_TWICE = "vector_indexed_twice"


REPAIRABLE = (
    Kind.PENDING_WITHOUT_JOB,
    Kind.STUCK,
    Kind.ORPHAN_OBJECT,
    Kind.DONE_WITHOUT_VECTOR,
    Kind.DONE_WITHOUT_LABELS,
    Kind.DONE_WITHOUT_DERIVED,
    Kind.DONE_WITHOUT_COPY_CHECK,
    Kind.VECTOR_WITHOUT_RECORD,
    Kind.STALE_INTENT,
)
IN_FLIGHT = frozenset({Status.PROCESSING, Status.EMBEDDED, Status.INDEXED})
STUCK_CODE = "stuck"


class JobState(enum.Enum):
    LIVE = "live"  # in the stream, not yet settled by the coordinators' consumer
    MISSING = "missing"  # no sequence known, or the stream holds no such job (any more)
    CONSUMED = "consumed"  # in the stream but settled (acked or terminated) while the record stayed pending


@dataclass(frozen=True)
class ConsumerFacts:
    """What the coordinators' durable consumer says (``consumer_info``)."""

    ack_floor: int = 0  # every stream sequence up to this one is settled
    delivered: int = 0  # the highest stream sequence delivered at least once
    ack_wait_s: float = 30.0
    max_deliver: int = 0  # 0: unknown (the config's is used)


@dataclass(frozen=True)
class Policy:
    """The thresholds of one reconcile step or check."""

    grace_s: float
    stuck_after_s: float
    active_model: str
    labelled: bool = False  # the active model has a classifier: a done image without labels can get them


def stuck_after_s(
    max_deliver: int, backoff_s: Sequence[float], ack_wait_s: float, outage_budget_s: float
) -> float:
    """The longest a job can legitimately run before its record must have moved on: every delivery may wait
    out an outage in place (``outage_budget_s``) and then be redelivered after ``ack_wait_s``, with the
    configured backoff between deliveries."""
    deliveries = max(1, max_deliver)
    naks = sum(backoff_delay(backoff_s, d) for d in range(1, deliveries))
    return deliveries * (ack_wait_s + outage_budget_s) + naks


def policy_for(
    cfg: MeshConfig,
    consumer: ConsumerFacts,
    *,
    grace_s: float | None = None,
    outage_budget_s: float = OUTAGE_POLICY.budget_s,
    labelled: bool = False,
) -> Policy:
    """The thresholds from the config and the consumer (its ``max_deliver`` when smaller, as the coordinator
    does); ``grace_s`` overrides the config's grace (``mesh reconcile --grace``); ``labelled``: the active
    model has a classifier."""
    max_deliver = min(cfg.max_deliver, consumer.max_deliver) if consumer.max_deliver else cfg.max_deliver
    return Policy(
        grace_s=cfg.reconcile_grace_s if grace_s is None else grace_s,
        stuck_after_s=stuck_after_s(max_deliver, cfg.backoff_s, consumer.ack_wait_s, outage_budget_s),
        active_model=cfg.active_model,
        labelled=labelled,
    )


def age_s(rec: ImageRecord, now: float) -> float:
    """How long since the record last changed (a state change or a history note)."""
    return now - (rec.updated_at or rec.created_at)


def job_state(image_id: str, job_seq: int, stored_image_id: str | None, consumer: ConsumerFacts) -> JobState:
    """Where a record's job is: ``stored_image_id`` is the image of the job the stream holds at ``job_seq``
    (None: no message there)."""
    if job_seq <= 0 or stored_image_id != image_id:
        return JobState.MISSING
    if job_seq <= consumer.ack_floor:
        return JobState.CONSUMED
    return JobState.LIVE


def needs_job_lookup(rec: ImageRecord, now: float, policy: Policy) -> bool:
    """A pending record old enough that its job must be looked up in the stream."""
    return rec.status == Status.PENDING and age_s(rec, now) >= policy.grace_s


def needs_vector_lookup(rec: ImageRecord, now: float, policy: Policy) -> bool:
    """A done record old enough that its vector must be looked up in the active model's index."""
    return rec.status == Status.DONE and age_s(rec, now) >= policy.grace_s


def record_kind(
    rec: ImageRecord,
    now: float,
    policy: Policy,
    *,
    job: JobState | None = None,
    job_delivered: bool = False,
    has_vector: bool | None = None,
) -> Kind | None:
    """The anomaly this record is, if any. ``job``: where its job is (pending records); ``job_delivered``:
    the consumer delivered it at least once; ``has_vector``: whether the active model's index holds its vector
    (done records). None for a lookup not made: no verdict."""
    age = age_s(rec, now)
    if age < policy.grace_s:
        return None
    if rec.status in IN_FLIGHT:
        return Kind.STUCK if age >= policy.stuck_after_s else None
    if rec.status == Status.PENDING:
        if job in (JobState.MISSING, JobState.CONSUMED):
            return Kind.PENDING_WITHOUT_JOB
        # delivered, yet never moved to processing, for longer than all its deliveries may take
        if job is JobState.LIVE and job_delivered and age >= policy.stuck_after_s:
            return Kind.STUCK
        return None
    if rec.status == Status.DONE and has_vector is False:
        return Kind.DONE_WITHOUT_VECTOR
    if rec.status == Status.DONE and has_vector and rec.labels is None and policy.labelled:
        return Kind.DONE_WITHOUT_LABELS  # indexed before labels existed, or under a model without them
    if rec.status == Status.DONE and has_vector and not (rec.thumbnail_key and rec.copy_features_key):
        return Kind.DONE_WITHOUT_DERIVED  # indexed before they existed (its re-embed labels it too)
    if rec.status == Status.DONE and has_vector and rec.copy_check != COPY_CHECK_VERSION:
        return Kind.DONE_WITHOUT_COPY_CHECK  # lost from the checker's queue, or checked by an older version
    return None


def republish_attempt(rec: ImageRecord, job: JobState) -> int:
    """The attempt of the job that repairs a pending record: the same (same ``Nats-Msg-Id``: JetStream drops
    it if the job is there after all), or the next when the stream settled the first one already."""
    return rec.attempt + 1 if job is JobState.CONSUMED else rec.attempt


def is_orphan_object(
    last_modified: float, now: float, grace_s: float, *, recorded: bool, has_intent: bool
) -> bool:
    """An object no record refers to, older than the grace. One with an upload intent is the intent's
    (settled with it: ``stale_intent``), so it is never counted twice."""
    return not recorded and not has_intent and now - last_modified >= grace_s


def is_stale_intent(*, owner_alive: bool, recorded: bool) -> bool:
    """An intent is stale once its image is recorded (the upload finished, its removal was lost) or its
    gateway stopped beating (dead past the liveness TTL: its upload can never finish)."""
    return recorded or not owner_alive


def duplicate_done(history: Iterable[Mapping[str, Any]]) -> int:
    """How many ``done`` entries repeat another's delivery (same job sequence, attempt and delivery number):
    the same delivery of the same job finished twice. Entries without a delivery (older ones) are not
    counted."""
    keys = Counter(
        (h.get("job_seq"), h.get("attempt"), h["delivery"])
        for h in history
        if h.get("status") == Status.DONE.value and h.get("delivery") is not None
    )
    return sum(n - 1 for n in keys.values() if n > 1)


def indexed_twice(strays: Iterable[tuple[str, str]], with_own_doc: Container[tuple[str, str]]) -> int:
    """How many (model, image) pairs have more than one document in the model's index. A document is keyed by
    (model, image id), so a second one can only be a stray: a document whose key names another image than
    the ``(model, image id)`` it holds. ``with_own_doc``: the strays' pairs whose image has its own document."""
    counts = Counter(pair for pair in strays if pair[1])
    return sum(1 for pair, n in counts.items() if n + (pair in with_own_doc) > 1)


__all__ = [
    "IN_FLIGHT",
    "REPAIRABLE",
    "STUCK_CODE",
    "ConsumerFacts",
    "JobState",
    "Kind",
    "Policy",
    "age_s",
    "duplicate_done",
    "indexed_twice",
    "is_orphan_object",
    "is_stale_intent",
    "job_state",
    "needs_job_lookup",
    "needs_vector_lookup",
    "policy_for",
    "record_kind",
    "republish_attempt",
    "stuck_after_s",
]
