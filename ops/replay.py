"""Replay work: run dead-lettered or errored images through the pipeline again.

    python -m ops.replay ID [ID ...]          these images (errored, dead-lettered, or any known id)
    python -m ops.replay --errored            every image in state ``error``
    python -m ops.replay --dead-since 2h      every job dead-lettered in the last two hours
    python -m ops.replay --since 2024-05-01T12:00:00Z   every job published since then (uploads and replays)

(``mesh replay`` takes the same arguments.) The work itself is the coordinator's ``coordinator.reprocess``
service: it publishes a fresh job per image with a bumped attempt, so JetStream's de-duplication does not drop
it. The ``--dead-since`` / ``--since`` forms first read the ``IMAGES`` stream from that time with an ordered
consumer (``images.jobs.dead`` or ``images.jobs.process``) to find the image ids. An image that is ``done``
already is skipped by the workflow, so a replay never indexes twice. Connects as the ``ops`` NATS user with
settings from ``MESH_*``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy

from actors import contract
from actors.contract import DeadLetter, ProcessJob, ReprocessReply, ReprocessRequest
from actors.errors import MeshError, RetryableError
from actors.rpc import call
from actors.settings import Settings

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 4
BATCH = 200  # image ids per coordinator.reprocess request
REPROCESS_TIMEOUT_S = 60.0
IDLE_S = 2.0  # an ordered consumer that delivers nothing for this long has nothing (more) to deliver

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """A start time: a duration back from now (``90s``, ``15m``, ``2h``, ``1d``), an ISO 8601 time or date
    (naive means UTC), or Unix seconds. Raises ``ValueError`` with what is accepted."""
    now = now or dt.datetime.now(dt.UTC)
    value = text.strip()
    m = _DURATION.match(value.lower())
    if m:
        return now - dt.timedelta(seconds=float(m.group(1)) * _UNIT_S[m.group(2)])
    if re.fullmatch(r"\d{9,}(\.\d+)?", value):
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    try:
        when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use a duration like 15m, 2h, 1d; an ISO time like "
            "2024-05-01T12:00:00Z; or Unix seconds)"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class Found:
    """A job read back from the stream."""

    image_id: str
    seq: int
    code: str = ""  # dead letters: why the coordinator gave up
    reason: str = ""


async def jobs_since(
    nc: Client, stream: str, subject: str, since: dt.datetime, idle_s: float = IDLE_S
) -> list[Found]:
    """Every job on ``subject`` stored since ``since``, oldest first, read with an ordered consumer
    (``DeliverPolicy.BY_START_TIME``): nothing is created that needs cleaning up, nothing is acked."""
    js = nc.jetstream()
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=since)
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
    found: list[Found] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=idle_s)
            except (NatsTimeoutError, TimeoutError):
                break
            found.append(_found(msg.data, msg.metadata.sequence.stream, subject))
            if msg.metadata.num_pending == 0:  # caught up with the stream as it was when we started
                break
    finally:
        await sub.unsubscribe()
    return found


def _found(data: bytes, seq: int, subject: str) -> Found:
    if subject == contract.DEAD_SUBJECT:
        dead = contract.decode(data, DeadLetter)
        return Found(dead.job.image_id, seq, dead.code, dead.reason)
    return Found(contract.decode(data, ProcessJob).image_id, seq)


async def reprocess(
    nc: Client, image_ids: list[str], all_errored: bool = False, batch: int = BATCH
) -> list[str]:
    """Ask the coordinator to publish fresh jobs; returns the ids it requeued (unknown ids are left out)."""
    requeued: list[str] = []
    ids = list(dict.fromkeys(image_ids))
    batches = [ids[i : i + batch] for i in range(0, len(ids), batch)] or [[]]
    for i, chunk in enumerate(batches):
        req = ReprocessRequest(image_ids=chunk, all_errored=all_errored and i == 0)
        if not req.image_ids and not req.all_errored:
            continue
        reply = await call(nc, contract.COORDINATOR_REPROCESS, req, ReprocessReply, REPROCESS_TIMEOUT_S)
        requeued += reply.requeued
    return requeued


# --- command line -----------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image_ids", nargs="*", metavar="ID", help="images to run again")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--errored", action="store_true", help="every image in state error")
    which.add_argument("--dead-since", metavar="TIME", help="every job dead-lettered since TIME")
    which.add_argument("--since", metavar="TIME", help="every job published since TIME (uploads, replays)")
    p.add_argument("--dry-run", action="store_true", help="list what would be replayed; change nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


async def run(args: argparse.Namespace, settings: Settings, nc: Client) -> int:
    """``mesh replay`` / ``python -m ops.replay`` on an open ``ops`` connection; returns the exit code."""
    ids: list[str] = list(args.image_ids)
    found: list[Found] = []
    if args.dead_since or args.since:
        since = parse_since(args.dead_since or args.since)
        subject = contract.DEAD_SUBJECT if args.dead_since else contract.JOBS_SUBJECT
        found = await jobs_since(nc, settings.stream, subject, since)
        ids += [f.image_id for f in found]
    ids = list(dict.fromkeys(ids))
    out = sys.stdout
    if args.dry_run:
        if args.errored:
            print(
                "--dry-run does not list errored images (the coordinator finds them when replaying)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        listing = [
            {"image_id": f.image_id, "seq": f.seq, "code": f.code, "reason": f.reason} for f in found
        ] or [{"image_id": i} for i in ids]
        if args.json:
            print(json.dumps({"would_replay": listing}), file=out)
        else:
            for row in listing:
                print(" ".join(f"{k}={v}" for k, v in row.items() if v != ""), file=out)
            print(f"{len(ids)} image(s) would be replayed", file=out)
        return EXIT_OK
    if not ids and not args.errored:
        print("nothing to replay", file=out)
        return EXIT_OK
    try:
        requeued = await reprocess(nc, ids, all_errored=args.errored)
    except RetryableError as e:
        print(f"the coordinator does not answer: {e.message}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except MeshError as e:
        print(f"replay failed: {e.message}", file=sys.stderr)
        return EXIT_PARTIAL
    unknown = [i for i in ids if i not in set(requeued)]
    if args.json:
        print(json.dumps({"requeued": requeued, "unknown": unknown}), file=out)
    else:
        print(f"requeued {len(requeued)} image(s)", file=out)
        for i in requeued:
            print(f"  {i}", file=out)
        for i in unknown:
            print(f"  unknown: {i}", file=out)
    return EXIT_PARTIAL if unknown else EXIT_OK


async def connect_ops(settings: Settings, name: str) -> Client:
    """Connect as the ``ops`` user (nats.conf); fails fast, and reports problems on stderr, not stdout."""

    async def on_error(e: Exception) -> None:
        print(f"nats: {type(e).__name__}: {e}", file=sys.stderr)

    nc: Client = await nats.connect(
        settings.nats_server_url,
        user="ops",
        password=settings.nats_password("ops"),
        name=name,
        connect_timeout=3,
        max_reconnect_attempts=5,
        reconnect_time_wait=1,
        error_cb=on_error,
    )
    return nc


async def run_connected(
    settings: Settings, name: str, command: Callable[[Client], Awaitable[int]], *, timeout_s: float = 15
) -> int:
    """Run an operator command on a NATS connection as the ops user; its exit code, or ``EXIT_UNAVAILABLE``
    (with one line on stderr) when NATS cannot be reached. Shared by every operator tool in ``ops/``."""
    try:
        nc = await asyncio.wait_for(connect_ops(settings, name), timeout=timeout_s)
    except Exception as e:  # broad on purpose: whatever stops the connection, the user gets one line
        print(f"cannot connect to NATS at {settings.nats_server_url}: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        return await command(nc)
    finally:
        await nc.close()


async def _main(args: argparse.Namespace) -> int:
    settings = Settings()
    return await run_connected(settings, "mesh-replay", lambda nc: run(args, settings, nc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.replay", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_main(args))
    except ValueError as e:  # a bad --since / --dead-since
        parser.error(str(e))


if __name__ == "__main__":
    sys.exit(main())
