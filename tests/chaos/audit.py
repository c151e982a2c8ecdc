"""What a chaos test measures once its fault is over: the work it made the mesh repeat, what the fault hit, and
what it left behind.

Repeats. An image is processed more than once when the indexer upserted its vector more than once (the second
upsert finds the vector there: ``created`` false, what ``mesh_index_upserts_total{created="false"}`` counts) or
its history holds more than one ``done`` entry. The upserts are read per image from the indexer's
``index.upserted`` log lines, which carry the same ``created`` flag as the counter and, unlike the counter,
outlive a kill -9 of the indexer (supervisord appends every process's lines to one file; a line is flushed
as it is written). ``upsert_counters`` reads the counters themselves, summed over indexer processes, where
no indexer restarts. Work started again without being finished twice (a job redelivered after its coordinator
died before the upsert, or retried in place after an outage: a second ``processing`` entry) is counted apart
as ``restarted``. A fault-free ingest repeats and restarts nothing, except where a request of the job timed
out on a loaded machine (the coordinator logs the timeout it waits out: ``slow_answers``; the figures count
these repeats apart, as ``repeats_after_timeout``). Under a fault (the bounds are asserted by
``assert_ingest_invariants``) an image may be processed more than once only if it was among the jobs the
coordinator held when the fault struck (``mesh_jobs_in_flight`` read at that moment), and restarted only if
it was in flight while the fault lasted (accepted before the mesh said it had recovered, ``wait_recovered``,
and not yet done when the fault began: ``in_flight_during``, from the records' own timestamps).

What a kill hit. ``kill_coordinator_holding_jobs`` waits until the coordinator has jobs in flight (its gauge)
and kills it then. ``kill_indexer_holding_requests`` freezes the indexer (SIGSTOP), waits until NATS has
delivered an ``index.upsert`` request to the frozen process (``/connz``: a request delivered after the freeze
cannot have been answered), and kills it (SIGKILL): its death is a kill -9 at the moment it was frozen, with
requests in its hands.

Leftovers. ``assert_nothing_left`` runs ``mesh reconcile`` (``ops.reconcile``) and then ``mesh check``
(``ops.check``) in process, as an operator would once the mesh is idle, and asserts that the reconcile
repaired nothing and the check counts no anomaly of any kind.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from math import inf
from typing import Any

import httpx
import redis
import redis.asyncio as aioredis

from actors import contract
from actors.adapters.vector_index.names import ID_FIELD
from actors.contract import ReconcileReply
from actors.errors import RetryableError
from actors.settings import Settings
from ops.check import report_for
from ops.reconcile import reconcile
from ops.stack.supervisor import Stack
from tests.helpers import ops_connection, wait_consumer_idle, wait_until

MODEL = "efficientnet_lite0"
# Once every job is settled (the consumer idle) nothing is in flight: a short grace is the product's own
# definition of "not work in flight" (``mesh check --grace``), and anything older than it is left behind.
AUDIT_GRACE_S = 2.0
UPSERTED = "index.upserted"
WAITED = "job.waiting_for_dependency"  # the coordinator's log events (actors/outage.py, coordinator.py)
RETRIED = "job.retry"
FAULT_ECHO_S = 30.0  # after a fault, requests sent during it may still time out (the coordinator's ack_wait)


# --- metrics ------------------------------------------------------------------------------------------------
def samples(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` whose labels include ``labels`` (Prometheus text format)."""
    total = 0.0
    for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


def scrape(url: str) -> str:
    """A process's ``/metrics`` text (``url`` is its HTTP root)."""
    r = httpx.get(f"{url}/metrics", timeout=5)
    r.raise_for_status()
    return r.text


def upsert_counters(urls: Iterable[str], model: str = MODEL) -> Counter[str]:
    """``mesh_index_upserts_total`` summed over the indexer processes at ``urls``: ``created``, ``updated``."""
    out: Counter[str] = Counter()
    for url in urls:
        text = scrape(url)
        out["created"] += int(samples(text, "mesh_index_upserts_total", model=model, created="true"))
        out["updated"] += int(samples(text, "mesh_index_upserts_total", model=model, created="false"))
    return out


def coordinator_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.coordinator_http_port}"


def indexer_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.indexer_http_port}"


def jobs_in_flight(settings: Settings) -> int:
    """The stack's coordinator's ``mesh_jobs_in_flight``."""
    return int(samples(scrape(coordinator_url(settings)), "mesh_jobs_in_flight"))


async def wait_in_flight(settings: Settings, timeout_s: float = 120) -> int:
    """Until the coordinator works on at least one job; returns how many it holds (its gauge, just read)."""
    held = 0

    def some() -> bool:
        nonlocal held
        try:
            held = jobs_in_flight(settings)
        except httpx.HTTPError:  # restarting: not listening yet
            return False
        return held > 0

    await wait_until("the coordinator with jobs in flight", some, timeout_s, every_s=0.02)
    return held


async def wait_recovered(gw: httpx.AsyncClient, timeout_s: float = 180) -> float:
    """Until the mesh says a fault is over (the gateway's ``/status``: every server ok, every actor service
    answering, Triton's model and the active index ready); returns the wall-clock time, a fault window's end."""

    async def recovered() -> bool:
        try:
            status = (await gw.get("/status")).json()
        except (httpx.HTTPError, ValueError):  # the gateway itself may be the one restarting
            return False
        return (
            all(v == "ok" for v in status["servers"].values())
            and all(n >= 1 for n in status["services"].values())
            and status["index"]["state"] == "ready"
        )

    await wait_until("the mesh recovered (/status all ok, index ready)", recovered, timeout_s, every_s=0.1)
    return time.time()


# --- what a kill hit ----------------------------------------------------------------------------------------
async def kill_coordinator_holding_jobs(stack: Stack) -> dict[str, int]:
    """kill -9 the coordinator while its gauge says it holds jobs; ``held``: that gauge, read just before."""
    held = await wait_in_flight(stack.settings)
    os.kill(_pid(stack, "coordinator"), signal.SIGKILL)
    return {"held": held, "in_flight": held}


def upsert_deliveries(settings: Settings) -> dict[int, int]:
    """NATS connection id -> ``index.upsert`` requests the server delivered to that indexer connection."""
    url = f"http://{settings.host}:{settings.nats_monitor_port}/connz"
    conns = httpx.get(url, params={"subs": "detail", "limit": 4096}, timeout=5).json()["connections"]
    return {
        int(c["cid"]): sum(int(s.get("msgs", 0)) for s in subs)
        for c in conns
        if (
            subs := [
                s for s in c.get("subscriptions_list_detail") or [] if s["subject"] == contract.INDEX_UPSERT
            ]
        )
    }


async def kill_indexer_holding_requests(stack: Stack, timeout_s: float = 60) -> dict[str, int]:
    """Freeze the indexer, wait until NATS has handed it an upsert request, then kill -9 it.

    ``held``: requests delivered to the frozen process (none of them answered); ``in_flight``: the
    coordinator's jobs in flight at the kill (every image that the death can make the mesh repeat is one).
    """
    s = stack.settings
    await wait_in_flight(s)  # jobs on their way to the index
    pid = _pid(stack, "indexer")
    os.kill(pid, signal.SIGSTOP)
    try:
        at_freeze = await asyncio.to_thread(upsert_deliveries, s)
        assert len(at_freeze) == 1, f"expected one indexer connection on NATS, got {at_freeze}"
        [(cid, before)] = at_freeze.items()
        delivered = before

        def handed_one() -> bool:
            nonlocal delivered
            delivered = upsert_deliveries(s).get(cid, before)
            return delivered > before

        await wait_until("an index.upsert request handed to the frozen indexer", handed_one, timeout_s, 0.02)
        in_flight = await asyncio.to_thread(jobs_in_flight, s)
    finally:
        os.kill(pid, signal.SIGKILL)  # also when the wait failed: a frozen indexer would hang the session
    return {"held": delivered - before, "in_flight": in_flight}


def _pid(stack: Stack, name: str) -> int:
    pid = stack.pids()[name]
    assert pid is not None, f"no pid for {name}"
    return pid


# --- repeats ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Repeats:
    """How often the indexer and the pipeline did each image's work."""

    images: int
    created: int  # upserts that made the image's vector
    updated: int  # upserts that found it there already: work done again
    upserted_twice: tuple[str, ...]  # images upserted more than once
    done_twice: tuple[str, ...]  # images with more than one ``done`` history entry
    restarted: tuple[str, ...]  # images whose processing started again (more than one ``processing`` entry)
    never_upserted: tuple[str, ...]  # images without an upsert line (a line lost with a killed process)

    @property
    def repeated(self) -> tuple[str, ...]:
        """The images processed more than once, by either count."""
        return tuple(sorted(set(self.upserted_twice) | set(self.done_twice)))

    @property
    def share(self) -> float:
        return len(self.repeated) / self.images if self.images else 0.0

    def figures(self) -> dict[str, object]:
        return {
            "upserts_created": self.created,
            "upserts_updated": self.updated,
            "processed_more_than_once": len(self.repeated),
            "repeated_share": f"{self.share:.1%}",
            "done_twice": len(self.done_twice),
            "restarted": len(self.restarted),
        }


def repeats_of(
    upserts: Mapping[str, Sequence[bool]], histories: Mapping[str, Sequence[Mapping[str, Any]]]
) -> Repeats:
    """The repeat figures of images ``histories`` (image id -> history entries), given each image's upserts
    (image id -> the ``created`` flag of each, in order)."""
    flags = [f for i in histories for f in upserts.get(i, ())]
    return Repeats(
        images=len(histories),
        created=sum(flags),
        updated=len(flags) - sum(flags),
        upserted_twice=tuple(sorted(i for i in histories if len(upserts.get(i, ())) > 1)),
        done_twice=tuple(sorted(i for i, h in histories.items() if done_entries(h) > 1)),
        restarted=tuple(sorted(i for i, h in histories.items() if entries(h, "processing") > 1)),
        never_upserted=tuple(sorted(i for i in histories if not upserts.get(i))),
    )


def in_flight_during(records: Mapping[str, Mapping[str, Any]], windows: Iterable[tuple[float, float]]) -> int:
    """How many of these images were in flight during any of the ``windows`` (wall-clock ``(start, end)``):
    accepted before the end and first done after the start."""
    spans = list(windows)
    count = 0
    for rec in records.values():
        accepted = float(rec.get("created_at") or 0)
        done_at = min(
            (float(h["at"]) for h in rec.get("history") or [] if h.get("status") == "done"), default=inf
        )
        count += any(accepted < end and done_at > start for start, end in spans)
    return count


def entries(history: Iterable[Mapping[str, Any]], status: str) -> int:
    """How many of the history's entries moved the image to ``status``."""
    return sum(1 for h in history if h.get("status") == status)


def done_entries(history: Iterable[Mapping[str, Any]]) -> int:
    return entries(history, "done")


def logged_events(
    settings: Settings, pattern: str, event: str, ids: Collection[str]
) -> Iterator[dict[str, Any]]:
    """Each JSON line of ``event`` about one of ``ids`` in the logs matching ``pattern`` (the log of every
    process supervisord ran under that name, its rotated copies, replicas' logs)."""
    wanted = set(ids)
    for path in sorted(settings.log_dir.glob(pattern)):
        for line in path.read_text(errors="replace").splitlines():
            if event not in line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:  # a line cut by a kill -9 mid-write: what it logged is lost from the count
                continue
            if entry.get("event") == event and entry.get("image_id") in wanted:
                yield entry


def logged_upserts(settings: Settings, ids: Collection[str], model: str = MODEL) -> dict[str, list[bool]]:
    """Image id -> the ``created`` flag of each upsert of its vector that any indexer process logged."""
    out: dict[str, list[bool]] = {}
    for entry in logged_events(settings, "indexer*.log*", UPSERTED, ids):
        if entry.get("model") == model:
            out.setdefault(entry["image_id"], []).append(bool(entry.get("created")))
    return out


def slow_answers(
    settings: Settings, ids: Collection[str], fault_windows: Iterable[tuple[float, float]] = ()
) -> dict[str, list[str]]:
    """Image id -> each request of its job that timed out outside every fault window, as the coordinator
    logged it when it waited the timeout out in place (or retried the job): a dependency that answered too
    slowly on a loaded machine, which the mesh meets by doing the work again. A window's timeouts count from
    its start until ``FAULT_ECHO_S`` after its end (requests sent during the fault time out later)."""
    spans = [(start, end + FAULT_ECHO_S) for start, end in fault_windows]
    out: dict[str, list[str]] = {}
    for event in (WAITED, RETRIED):
        for entry in logged_events(settings, "coordinator*.log*", event, ids):
            error = str(entry.get("error", ""))
            at = datetime.fromisoformat(str(entry.get("timestamp"))).timestamp()
            if "timed out" in error and not any(start <= at <= end for start, end in spans):
                out.setdefault(entry["image_id"], []).append(error)
    return out


def measure_repeats(settings: Settings, records: Mapping[str, Mapping[str, Any]]) -> Repeats:
    """The repeat figures of these images (image id -> the record ``GET /images/{id}`` answered)."""
    histories = {i: r.get("history") or [] for i, r in records.items()}
    return repeats_of(logged_upserts(settings, records), histories)


# --- the index --------------------------------------------------------------------------------------------
def vector_docs(settings: Settings, ids: Collection[str], model: str = MODEL) -> Counter[str]:
    """Image id -> the documents in the model's index that hold it (its ``image_id`` field, whatever their key
    is): a second document for one image would be a second answer to every similarity query."""
    wanted = set(ids)
    prefix = f"{settings.redis_prefix}:vec:{model}:"
    held: Counter[str] = Counter()
    with redis.Redis.from_url(settings.redis_server_url, decode_responses=True) as r:
        keys = list(r.scan_iter(match=prefix + "*", count=1000, _type="hash"))
        with r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, ID_FIELD)
            values = pipe.execute() if keys else []
    for own in values:
        if own in wanted:
            held[own] += 1
    return held


# --- leftovers ----------------------------------------------------------------------------------------------
async def assert_nothing_left(settings: Settings, grace_s: float = AUDIT_GRACE_S) -> dict[str, object]:
    """Once every job is settled: ``mesh reconcile`` repairs nothing and ``mesh check`` counts no anomaly.

    Returns the figures (repairs and anomalies by kind, what was scanned); the assertion message carries them
    with the check's examples.
    """
    async with ops_connection(settings, "chaos-audit") as nc:
        await wait_consumer_idle(nc, settings.stream, settings.consumer, timeout_s=120)
        await wait_copy_checks(settings)  # the background copy checks of the images done last are work too
        reply = await _reconcile(nc, grace_s)
        report = await report_for(settings, nc, grace_s)
    repaired = {k: n for k, n in reply.repairs.items() if n}
    anomalies = {k: n for k, n in report.anomalies.items() if n}
    figures: dict[str, object] = {
        "reconcile_repairs": sum(reply.repairs.values()),
        "check_anomalies": report.total,
        "scanned": report.scanned,
    }
    print(f"audit: reconcile repaired {reply.repairs}; check {report.anomalies}; scanned {report.scanned}")
    assert not repaired and not anomalies, (
        f"left behind: reconcile repaired {repaired}, check found {anomalies} "
        f"(e.g. {report.examples}; all counts: repairs {reply.repairs}, anomalies {report.anomalies})"
    )
    return figures


async def wait_copy_checks(settings: Settings, timeout_s: float = 120) -> None:
    """Until the copy checker's queue is empty (``actors/copy_check.py``): every done image verified."""
    r = aioredis.Redis.from_url(settings.redis_server_url)
    try:

        async def drained() -> bool:
            return int(await r.zcard(f"{settings.redis_prefix}:copyq")) == 0

        await wait_until("the copy checks of the done images", drained, timeout_s=timeout_s, every_s=0.2)
    finally:
        await r.aclose()


async def _reconcile(nc: Any, grace_s: float, timeout_s: float = 120) -> ReconcileReply:
    """``mesh reconcile --grace``, asked again while a periodic step holds the reconciler's lease or the
    coordinator is restarting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await reconcile(nc, grace_s, timeout_s=60)
        except RetryableError:
            assert time.monotonic() < deadline, f"mesh reconcile not answered within {timeout_s}s"
            await asyncio.sleep(0.5)
