"""The JetStream layout of the mesh: the work stream, the events stream and the coordinator's durable consumer.

Created idempotently by the stack's bootstrap (``ops`` user) and by tests; the coordinator re-asserts its
consumer at start. Each config carries the storage layout in its metadata (``contract.layout``). Retention is ``limits`` (not work-queue) so that operators can replay past jobs.
"""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError

from actors import contract
from actors.settings import Settings

JOBS_MAX_AGE_S = 30 * 24 * 3600  # a month of replayable jobs
EVENTS_MAX_AGE_S = 7 * 24 * 3600
DUPLICATE_WINDOW_S = 24 * 3600  # a job published twice within a day is dropped by Nats-Msg-Id


def jobs_stream(s: Settings) -> StreamConfig:
    return StreamConfig(
        name=s.stream,
        subjects=[contract.JOBS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=JOBS_MAX_AGE_S,
        duplicate_window=DUPLICATE_WINDOW_S,
        discard=DiscardPolicy.OLD,
        metadata=contract.layout_metadata(),
    )


def events_stream(s: Settings) -> StreamConfig:
    return StreamConfig(
        name=s.events_stream,
        subjects=[contract.EVENTS_SUBJECTS],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_age=EVENTS_MAX_AGE_S,
        discard=DiscardPolicy.OLD,
        metadata=contract.layout_metadata(),
    )


def coordinator_consumer(s: Settings, max_deliver: int, ack_wait_s: float) -> ConsumerConfig:
    """The coordinators' shared durable consumer.

    No JetStream ``backoff``: it would also replace ``ack_wait`` for jobs still running, so a job that takes
    longer than the first backoff step (0.5 s) would be delivered again while it runs, spending its deliveries
    until JetStream gives up on it mid-flight. Crashes are redelivered after ``ack_wait`` (running jobs send
    in-progress acks), and retries are explicit naks with the configured delay (actors/coordinator.py).
    """
    return ConsumerConfig(
        durable_name=s.consumer,
        filter_subject=contract.JOBS_SUBJECT,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait_s,
        max_deliver=max_deliver,
        max_ack_pending=1000,
        metadata=contract.layout_metadata(),
    )


async def ensure_stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    try:
        await js.add_stream(cfg)
    except BadRequestError:
        # exists with other settings: bring it to ours
        await js.update_stream(cfg)


async def ensure_streams(js: JetStreamContext, s: Settings) -> None:
    await ensure_stream(js, jobs_stream(s))
    await ensure_stream(js, events_stream(s))
