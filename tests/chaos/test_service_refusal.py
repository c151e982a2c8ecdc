"""Issue 12, point 1 (integration): the indexer's Redis login refused while work is in flight.

The operators switch the indexer's own ACL user off (``ACL SETUSER indexer off``, then ``CLIENT KILL USER
indexer`` so that its open connections drop and it must log in again), while the coordinator's and the
gateway's users keep working. What the test shows, against the real chaos stack:

(a) the indexer answers ``index.upsert`` with a 5xx (its refused login is an outage, ``redis_errors``), which a
    caller gets as ``ServiceUnavailable`` (a ``RetryableError``), and the indexer process does not crash;
(b) the jobs wait in place: with every job delivered and in flight, each is refused at least twice (the
    coordinator's ``job.waiting_for_dependency`` log lines, each the indexer's 503 for the vector write) while
    its record stays non-terminal, the durable consumer has delivered each job exactly once (its
    ``delivered.consumer_seq`` grows by N, ``num_redelivered`` stays 0) and no dead letter appears on
    ``images.jobs.dead``;
(c) once the user is on again every image reaches ``done`` with its vector in the index, its history holds no
    error and every entry was written by delivery 1.

One image goes through before the fault, so that the indexer knows the index and the fault hits the vector
write itself (on a fresh stack it would hit the index's creation). The user is switched on again in a
``finally`` block whatever happens. The figures printed also show what else an operator sees meanwhile (the
gateway's ``/status``, the indexer's ``/ready``) and what each wait in place costs (the history entries).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo
from prometheus_client.parser import text_string_to_metric_families

from actors import contract
from actors.adapters.index_client import IndexClient
from actors.errors import RetryableError, ServiceUnavailable
from actors.settings import Settings
from ops.stack.privileges import SERVICE_USERS
from ops.stack.supervisor import Stack
from tests.chaos.audit import assert_nothing_left
from tests.chaos.conftest import MODEL, index_ids
from tests.helpers import TERMINAL, ops_connection, upload_id, wait_consumer_idle, wait_status
from tests.images import distinct_jpegs

N = 4
INDEXER = "indexer"  # the indexer's Redis ACL user (ops/stack/privileges.py: one user per service, by name)
FAULT_TIMEOUT_S = 45.0
# how ServiceUnavailable reads for the indexer's 503 to a vector write it could not log in for
REFUSED_UPSERT = f"{contract.INDEX_UPSERT}: redis unavailable during upsert"


def indexer_5xx(s: Settings) -> float:
    """How many ``index.upsert`` requests the indexer answered with a 5xx (``mesh_service_requests_total``)."""
    text = httpx.get(f"http://{s.host}:{s.indexer_http_port}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mesh_service_requests_total"
        and sample.labels.get("endpoint") == contract.INDEX_UPSERT
        and sample.labels.get("outcome", "").startswith("5")
    )


def log_of(s: Settings, name: str) -> Path:
    return s.log_dir.resolve() / f"{name}.log"


def log_events(log: Path, since: int, event: str, ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Per image: the ``event`` lines of a service's log written after byte ``since``."""
    found: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    with log.open("rb") as f:
        f.seek(since if log.stat().st_size >= since else 0)  # 0: supervisord rotated it meanwhile
        lines = f.read().decode(errors="replace").splitlines()
    for line in lines:
        if event not in line:
            continue
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event and entry.get("image_id") in ids:
                found[entry["image_id"]].append(entry)
    return found


def coordinator_waits(log: Path, since: int, ids: set[str]) -> dict[str, list[str]]:
    """Per image: the errors of the coordinator's ``job.waiting_for_dependency`` lines (a wait in place)."""
    return {
        i: [str(e.get("error", "")) for e in entries]
        for i, entries in log_events(log, since, "job.waiting_for_dependency", ids).items()
    }


def delivered(info: ConsumerInfo) -> int:
    """How many deliveries the consumer has made: its sequence grows by one for every delivery, a
    redelivery included."""
    return (info.delivered.consumer_seq or 0) if info.delivered else 0


def probe_vector(dim: int) -> np.ndarray:
    v = np.ones(dim, dtype=np.float32)
    return v / np.linalg.norm(v)


@contextlib.contextmanager
def indexer_login_refused(ops: redis.Redis) -> Iterator[int]:
    """The indexer's ACL user off and its open connections dropped; on again on exit, whatever happened.
    Yields how many connections were killed."""
    ops.execute_command("ACL", "SETUSER", INDEXER, "off")
    try:
        yield int(ops.execute_command("CLIENT", "KILL", "USER", INDEXER))
    finally:
        ops.execute_command("ACL", "SETUSER", INDEXER, "on")


async def jobs_wait_in_place(
    stack: Stack,
    gw: httpx.AsyncClient,
    js: JetStreamContext,
    ids: list[str],
    *,
    seq0: int,
    since: int,
    dead: list[Any],
) -> dict[str, Any]:
    """(b): until every job is in flight and has waited in place for ``index.upsert`` at least twice (after its
    first refusal a nak'd job would have been delivered again ``backoff_s[0]`` = 0.5 s later; a job waiting in
    place runs again after the same 0.5 s, keeping its delivery). Meanwhile, on every
    poll: no job delivered twice, none terminal, none dead-lettered, the indexer still the same process.
    ``seq0``: the consumer's deliveries before the uploads; ``since``: the coordinator log's size then."""
    s, mine = stack.settings, set(ids)
    indexer_pid = stack.pids()[INDEXER]
    log = log_of(s, "coordinator")
    deadline = time.monotonic() + FAULT_TIMEOUT_S
    polls, seen = 0, set[str]()
    while True:
        polls += 1
        info = await js.consumer_info(s.stream, s.consumer)
        assert info.num_redelivered == 0, f"a job was delivered again during the outage: {info}"
        assert delivered(info) - seq0 <= len(ids), f"more deliveries than jobs: {info}"
        for image_id in ids:
            record = (await gw.get(f"/images/{image_id}")).json()
            assert record["status"] not in TERMINAL, record
            seen.add(record["status"])
        assert not [d for d in dead if d.job.image_id in mine], dead
        assert stack.pids()[INDEXER] == indexer_pid, "the indexer restarted (crashed?)"
        waits = coordinator_waits(log, since, mine)
        on_upsert = {i: [e for e in errs if contract.INDEX_UPSERT in e] for i, errs in waits.items()}
        if (info.num_ack_pending or 0) >= len(ids) and min(len(e) for e in on_upsert.values()) >= 2:
            break
        assert time.monotonic() < deadline, (
            f"jobs not all waiting on index.upsert after {FAULT_TIMEOUT_S}s: {info}, {waits}"
        )
        await asyncio.sleep(0.5)
    info = await js.consumer_info(s.stream, s.consumer)
    assert delivered(info) - seq0 == len(ids) and info.num_redelivered == 0, info
    assert info.num_ack_pending == len(ids), info  # held by the coordinator, not handed back
    # each wait was the indexer's 503 for the vector write (``ServiceUnavailable``), not a timeout
    odd = [e for errs in waits.values() for e in errs if not e.startswith(REFUSED_UPSERT)]
    assert not odd, odd
    return {
        "polls": polls,
        "statuses_during_fault": sorted(seen),
        "waits_per_job": sorted(len(e) for e in on_upsert.values()),
        "wait_errors": sorted({e[:140] for errs in on_upsert.values() for e in errs}),
    }


@pytest.mark.timeout(300)
async def test_indexer_login_refused_jobs_wait_in_place_then_finish(
    chaos_mesh: Stack, gw: httpx.AsyncClient
) -> None:
    s = chaos_mesh.settings
    assert INDEXER in SERVICE_USERS and "coordinator" in SERVICE_USERS
    started = time.monotonic()
    warm_up, *images = distinct_jpegs(N + 1, seed=121_212)
    probe_key = f"{s.redis_prefix}:vec:{MODEL}:{uuid.uuid4().hex}"
    dead: list[contract.DeadLetter] = []

    async def collect(msg: Any) -> None:
        dead.append(contract.decode(msg.data, contract.DeadLetter))

    with redis.Redis.from_url(s.redis_server_url) as ops:
        async with ops_connection(s, name="tests-service-refusal") as nc:
            js = nc.jetstream()
            await nc.subscribe(contract.DEAD_SUBJECT, cb=collect)
            # one image through first: the indexer knows the index (and its dim), so what the fault hits is
            # the vector write itself, not the index's creation (a fresh stack has no index yet)
            warm_id = await upload_id(gw, warm_up, "refusal-warm-up.jpg")
            assert (await wait_status(gw, [warm_id], TERMINAL, timeout_s=60))[warm_id]["status"] == "done"
            dim = (await IndexClient(nc).stats(MODEL)).dim
            assert dim > 0
            # a quiet consumer to start from: whatever it delivers from here on is this test's
            seq0 = delivered(await wait_consumer_idle(nc, s.stream, s.consumer, timeout_s=120))
            refused0, indexer_pid = indexer_5xx(s), chaos_mesh.pids()[INDEXER]
            assert indexer_pid is not None
            since, since_ix = log_of(s, "coordinator").stat().st_size, log_of(s, "indexer").stat().st_size
            fault_started = time.monotonic()
            try:
                with indexer_login_refused(ops) as killed:
                    # the fault is exactly the indexer's login: the coordinator's user still works
                    with pytest.raises(redis.exceptions.AuthenticationError):
                        with redis.Redis.from_url(s.redis_url_for(INDEXER)) as ix:
                            ix.ping()
                    with redis.Redis.from_url(s.redis_url_for("coordinator")) as co:
                        assert co.ping()

                    # (a) the indexer answers index.upsert with a 5xx: an outage, not a bad request
                    with pytest.raises(ServiceUnavailable) as refused:
                        await IndexClient(nc, timeout_s=30).upsert(
                            MODEL, probe_key.rsplit(":", 1)[1], probe_vector(dim)
                        )
                    assert isinstance(refused.value, RetryableError) and refused.value.code.startswith("5")
                    assert indexer_5xx(s) > refused0

                    ids = [await upload_id(gw, data, f"refusal-{n}.jpg") for n, data in enumerate(images)]
                    figures = await jobs_wait_in_place(
                        chaos_mesh, gw, js, ids, seq0=seq0, since=since, dead=dead
                    )
                    status = (await gw.get("/status")).json()
                    ready = await gw.get(f"http://{s.host}:{s.indexer_http_port}/ready")
                    figures |= {
                        "connections_killed": killed,
                        "probe_reply": f"{refused.value.code} {refused.value.description}",
                        "indexer_5xx": indexer_5xx(s) - refused0,
                        "gateway_status_index": status.get("index"),
                        "gateway_status_servers": status.get("servers"),
                        "indexer_ready": f"{ready.status_code} {ready.text[:160]}",
                        "fault_s": round(time.monotonic() - fault_started, 1),
                    }
            finally:
                ops.delete(probe_key)  # there only if the probe was not refused

            # (c) the user on again: every image done, its vector indexed, no error in its history
            assert "on" in ops.acl_getuser(INDEXER)["flags"]
            records = await wait_status(gw, ids, TERMINAL, timeout_s=60)
            figures["recovered_s"] = round(time.monotonic() - fault_started - figures["fault_s"], 1)
            assert {i: r["status"] for i, r in records.items()} == dict.fromkeys(ids, "done"), records
            assert set(ids) <= set(index_ids(s)), "an image is done without its vector"
            for image_id, record in records.items():
                history = record["history"]
                assert record.get("error") is None, record
                assert not [h for h in history if h.get("status") == "error" or "error" in h], history
                assert {h["delivery"] for h in history if "delivery" in h} == {1}, (image_id, history)
            figures["history_entries"] = sorted(len(r["history"]) for r in records.values())
            longest = max(records.values(), key=lambda r: len(r["history"]))["history"]
            figures["longest_history"] = [h.get("status") or h.get("step") for h in longest]
            upserted = log_events(log_of(s, "indexer"), since_ix, "index.upserted", set(ids))
            figures["indexer_upserts_created"] = sorted(
                str([e.get("created") for e in u]) for u in upserted.values()
            )
            after = await wait_consumer_idle(nc, s.stream, s.consumer, timeout_s=60)
            assert delivered(after) - seq0 == N, f"a job was delivered again: {after}"
            await nc.flush()
            assert not [d for d in dead if d.job.image_id in set(ids)], dead
            assert chaos_mesh.pids()[INDEXER] == indexer_pid
    figures["wall_s"] = round(time.monotonic() - started, 1)
    print(f"\nindexer login refused: {figures}")
    await assert_nothing_left(s)
