"""The JetStream layout of the mesh: the work stream, the events stream and the coordinator's durable consumer.

Created idempotently by the stack's bootstrap (``ops`` user) and by tests; the coordinator re-asserts its
consumer at start. The bootstrap never lowers what an operator raised on a live stream (``kept_raised``:
replicas, the age, size and count limits, the duplicate window); ``MESH_STREAM_REPLICAS`` sets our replicas. Each config carries the storage layout in its metadata (``contract.layout``). Retention is ``limits`` (not work-queue) so that operators can replay past jobs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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
from nats.js.errors import BadRequestError, NotFoundError

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
        num_replicas=s.stream_replicas,
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
        num_replicas=s.stream_replicas,
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


# the limits an operator may raise on a live stream, and the value that means "no limit" for each
_RAISABLE = {"max_age": 0, "max_bytes": -1, "max_msgs": -1, "max_msg_size": -1, "duplicate_window": None}


def _higher(ours: Any, theirs: Any, unlimited: Any) -> Any:
    """The higher of two limits, ``unlimited`` (None: no such value) being the highest; None: not set."""
    if theirs is None:
        return ours
    if ours is None or (unlimited is not None and theirs == unlimited):
        return theirs
    if unlimited is not None and ours == unlimited:
        return ours
    return max(ours, theirs)


def kept_raised(ours: StreamConfig, live: StreamConfig) -> StreamConfig:
    """Our config for a stream that exists, with what is higher on the live one kept: its replicas and its
    limits (no limit counts as the highest). What we set is the floor; what an operator raised stays."""
    raised: dict[str, Any] = {
        name: _higher(getattr(ours, name), getattr(live, name), unlimited)
        for name, unlimited in _RAISABLE.items()
    }
    raised["num_replicas"] = max(ours.num_replicas or 1, live.num_replicas or 1)
    return dataclasses.replace(ours, **raised)


async def ensure_stream(js: JetStreamContext, cfg: StreamConfig) -> None:
    """Create the stream, or bring a live one to ``cfg`` without lowering what was raised on it."""
    name = str(cfg.name)
    try:
        live = await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(cfg)
            return
        except BadRequestError:  # created meanwhile (another bootstrap): update it below
            live = await js.stream_info(name)
    await js.update_stream(kept_raised(cfg, live.config))


async def ensure_streams(js: JetStreamContext, s: Settings) -> None:
    await ensure_stream(js, jobs_stream(s))
    await ensure_stream(js, events_stream(s))
