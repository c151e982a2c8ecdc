"""Repeated work is measured, not hidden: without a fault the mesh processes every image exactly once, and the
checks that say so can fail.

The fault-free ingest is the baseline the fault scenarios are held against (``test_kills.py`` and the others
allow repeats only for the jobs in flight when their fault struck): every upsert creates its vector, by the
indexer's log lines per image and by its ``mesh_index_upserts_total`` counters alike, every job is done once
(``mesh_jobs_total``), and every image has one ``done`` history entry. Then a duplicate is planted behind the
mesh's back, once as a second index document holding an image's id and once as a second ``done`` history entry
of the same delivery: the chaos invariants and ``mesh check`` each report it, and pass again once it is gone.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis

from actors.adapters.config_client import ConfigClient
from actors.settings import Settings
from ops.check import report_for
from ops.stack.supervisor import Stack
from tests.chaos.audit import (
    AUDIT_GRACE_S,
    MODEL,
    assert_nothing_left,
    coordinator_url,
    indexer_url,
    samples,
    scrape,
    upsert_counters,
)
from tests.chaos.conftest import assert_ingest_invariants, ingest, size
from tests.helpers import ops_connection, wait_terminal
from tests.images import distinct_jpegs

N = size(100, 24)
SEED = 5_400_000


def jobs_done(settings: Settings) -> int:
    return int(samples(scrape(coordinator_url(settings)), "mesh_jobs_total", outcome="done"))


async def test_fault_free_ingest_processes_every_image_once(
    chaos_mesh: Stack, chaos_settings: Settings, gw: httpx.AsyncClient
) -> None:
    s = chaos_settings
    images = await asyncio.to_thread(distinct_jpegs, N, (192, 144), SEED)
    pids = {name: chaos_mesh.pids()[name] for name in ("coordinator", "indexer")}
    counted_before = await asyncio.to_thread(upsert_counters, [indexer_url(s)])
    done_before = await asyncio.to_thread(jobs_done, s)

    ids, _ = await ingest(gw, images)
    records = await wait_terminal(gw, ids, timeout_s=size(600, 180))
    figures = assert_ingest_invariants(s, ids, images, records)  # 0 repeats allowed

    assert {name: chaos_mesh.pids()[name] for name in pids} == pids, "a process restarted: not fault-free"
    counted = await asyncio.to_thread(upsert_counters, [indexer_url(s)])
    counted.subtract(counted_before)
    done = await asyncio.to_thread(jobs_done, s) - done_before
    print(f"fault-free: {figures}; indexer counters {dict(counted)}; jobs done {done}")
    # a request that timed out on a loaded machine is waited out and done again: the only repeat allowed here
    again = figures["upserts_after_timeout"]
    assert (figures["upserts_created"], figures["upserts_updated"]) == (N, again), figures
    assert (counted["created"], counted["updated"]) == (N, again), counted
    assert done == N
    await assert_nothing_left(s)


@pytest.fixture
async def reconciler_paused(chaos_settings: Settings) -> AsyncIterator[None]:
    """The periodic reconciler off while something is planted (it would delete a stray vector), then back."""
    async with ops_connection(chaos_settings) as nc:
        config = ConfigClient(nc)
        period = (await config.get()).reconcile_period_s
        await config.set("reconcile_period_s", 0)
        try:
            yield
        finally:
            await config.set("reconcile_period_s", period)


async def check_counts(settings: Settings) -> dict[str, int]:
    """``mesh check``'s anomaly counts (in process, the audit's grace)."""
    async with ops_connection(settings, "chaos-check") as nc:
        return (await report_for(settings, nc, AUDIT_GRACE_S)).anomalies


@pytest.mark.usefixtures("reconciler_paused")
async def test_a_planted_duplicate_fails_the_checks(chaos_settings: Settings, gw: httpx.AsyncClient) -> None:
    s = chaos_settings
    images = await asyncio.to_thread(distinct_jpegs, 3, (160, 120), SEED + 1)
    ids, _ = await ingest(gw, images)
    records = await wait_terminal(gw, ids, timeout_s=120)
    victim = ids[0]
    assert_ingest_invariants(s, ids, images, records)
    assert not any((await check_counts(s)).values())

    r = redis.Redis.from_url(s.redis_server_url, decode_responses=True)
    own_key = f"{s.redis_prefix}:vec:{MODEL}:{victim}"
    stray_key = f"{s.redis_prefix}:vec:{MODEL}:planted-{uuid.uuid4().hex}"
    history_key = f"{s.redis_prefix}:image:{victim}:history"
    planted: list[str] = []
    try:
        # (a) a second document holding the victim's id: a second answer to every similarity query
        assert r.copy(own_key, stray_key)
        with pytest.raises(AssertionError, match="duplicate vectors"):
            assert_ingest_invariants(s, ids, images, records)
        counts = await check_counts(s)
        assert counts["vector_indexed_twice"] == 1, counts
        r.delete(stray_key)

        # (b) the same delivery's ``done`` entry twice in the history: the image finished twice
        done = [e for e in r.lrange(history_key, 0, -1) if json.loads(e).get("status") == "done"]
        assert len(done) == 1, records[victim]["history"]
        entry = done[0]
        assert isinstance(entry, str)
        planted.append(entry)
        r.rpush(history_key, entry)
        twice = await wait_terminal(gw, ids, timeout_s=30)
        with pytest.raises(AssertionError, match="processed more than once"):
            assert_ingest_invariants(s, ids, images, twice)
        counts = await check_counts(s)
        assert counts["duplicate_done"] == 1, counts
    finally:
        r.delete(stray_key)
        for entry in planted:
            r.lrem(history_key, -1, entry)  # the last copy: the planted one
        r.close()

    # without the plants both pass again
    assert_ingest_invariants(s, ids, images, await wait_terminal(gw, ids, timeout_s=30))
    await assert_nothing_left(s)
