"""An internal consumer of image events: a durable JetStream pull consumer on the ``IMAGE_EVENTS`` stream.

    python -m ops.consumer_example thumbnails                  # every event, from now on
    python -m ops.consumer_example search-sync --status done   # only images.events.done
    python -m ops.consumer_example audit --deliver all         # a new consumer starts at the oldest event

The durable consumer lives in the server, named by the first argument: stop this process (SIGTERM, Ctrl-C)
and start it again, and it resumes right after the last event it acknowledged, with nothing missed and
nothing repeated (an event is acked only after it was handled; a crash between the two repeats that one event,
so handlers must be idempotent: at-least-once). Several processes with the same name share the work.
Each handled event is printed as one JSON line. Copy this file to build a real consumer: replace ``handle``.
Connects as the ``ops`` NATS user with settings from ``MESH_*`` (give a real consumer its own NATS user).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time

import msgspec
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from actors import contract
from actors.contract import ImageEvent
from actors.settings import Settings

ACK_WAIT_S = 30.0
MAX_DELIVER = 10  # a poison event is given up after this many tries instead of blocking its consumer forever


def consumer_config(name: str, subject: str, deliver_all: bool) -> ConsumerConfig:
    """The durable consumer: explicit acks, so the server knows exactly what this consumer has handled."""
    return ConsumerConfig(
        durable_name=name,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.ALL if deliver_all else DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=MAX_DELIVER,
        max_ack_pending=1000,
    )


async def handle(event: ImageEvent) -> None:
    """What this consumer does with an event: here, print it as a JSON line."""
    print(json.dumps(msgspec.to_builtins(event)), flush=True)


async def consume(
    nc: Client,
    stream: str,
    name: str,
    subject: str = contract.EVENTS_SUBJECTS,
    *,
    deliver_all: bool = False,
    stop: asyncio.Event,
    count: int | None = None,
    idle_exit_s: float | None = None,
    batch: int = 50,
) -> int:
    """Fetch, handle and ack events until ``stop`` is set (or ``count`` events, or ``idle_exit_s`` of
    silence); returns how many were handled. A batch in hand is finished before stopping (drain)."""
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        subject, durable=name, stream=stream, config=consumer_config(name, subject, deliver_all)
    )
    print(json.dumps({"consumer": name, "subject": subject, "ready": True}), file=sys.stderr, flush=True)
    handled = 0
    last = time.monotonic()
    try:
        while not stop.is_set() and (count is None or handled < count):
            want = batch if count is None else min(batch, count - handled)
            try:
                msgs = await sub.fetch(want, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                if idle_exit_s is not None and time.monotonic() - last >= idle_exit_s:
                    break
                continue
            last = time.monotonic()
            for msg in msgs:
                try:
                    event = contract.decode(msg.data, ImageEvent)
                except (msgspec.ValidationError, msgspec.DecodeError):
                    await msg.term()  # not an event this consumer understands: never redeliver it
                    continue
                await handle(event)
                await msg.ack()
                handled += 1
    finally:
        await sub.unsubscribe()  # the durable consumer stays in the server, with its position
    return handled


async def _main(args: argparse.Namespace) -> int:
    from ops.replay import connect_ops

    settings = Settings()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        nc = await asyncio.wait_for(connect_ops(settings, f"consumer-{args.name}"), timeout=15)
    except Exception as e:  # broad on purpose: whatever stops the connection, the user gets one line
        print(f"cannot connect to NATS at {settings.nats_server_url}: {e}", file=sys.stderr)
        return 4
    subject = contract.event_subject(args.status) if args.status else contract.EVENTS_SUBJECTS
    try:
        await consume(
            nc,
            settings.events_stream,
            args.name,
            subject,
            deliver_all=args.deliver == "all",
            stop=stop,
            count=args.count,
            idle_exit_s=args.idle_exit,
        )
    finally:
        with contextlib.suppress(
            Exception
        ):  # broad on purpose: exiting anyway, a failed drain changes nothing
            await nc.drain()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ops.consumer_example", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help="the durable consumer's name (its position is kept under this name)")
    p.add_argument("--status", choices=[s.value for s in contract.Status], help="only this state's events")
    p.add_argument(
        "--deliver", choices=["new", "all"], default="new", help="where a NEW consumer starts (default: new)"
    )
    p.add_argument("--count", type=int, help="exit after handling this many events")
    p.add_argument("--idle-exit", type=float, metavar="S", help="exit after S seconds without events")
    return asyncio.run(_main(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
