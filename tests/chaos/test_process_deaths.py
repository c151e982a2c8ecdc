"""The other processes die too: kill -9 of the gateway, kill -9 of the config actor, a restart of the S3 server.

Clients behave like `upload_with_retry` (retry 503s and connection errors with the same bytes). What must hold:
every accepted upload reaches done, nothing is half-stored (an object without a record, or a record without its
object), the same bytes always resolve to one image id, no image is processed twice (these faults hold no job;
the S3 outage may make the jobs it meets start again), and ``mesh reconcile`` and ``mesh check`` find nothing
left behind. Each gateway kill lands while the gateway holds uploads (their intents, counted just before).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import redis

from actors.adapters.config_client import ConfigClient
from actors.adapters.object_store import object_key
from actors.runtime import connect_nats
from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.chaos.audit import assert_nothing_left, jobs_in_flight, wait_recovered
from tests.chaos.conftest import assert_ingest_invariants, pid_of, size, wait_healthy, wait_restarted
from tests.helpers import s3_client as s3
from tests.helpers import upload_with_retry, wait_terminal, wait_until
from tests.images import distinct_jpegs

SEED = 5_300_000


# --- helpers ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    """What a batch of clients saw: ids in image order, and every status of every attempt (0 = no answer)."""

    ids: list[str] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    accepted: int = 0

    def figures(self) -> dict[str, int]:
        return {
            "posts": len(self.statuses),
            "accepted": self.accepted,
            "503s": self.statuses.count(503),
            "no_answer": self.statuses.count(0),
        }


async def upload_all(
    client: httpx.AsyncClient, images: list[bytes], run: Run, concurrency: int = 6
) -> list[str]:
    """``ingest`` that counts acceptances as they happen, so a fault can be injected mid-ingest."""
    sem = asyncio.Semaphore(concurrency)

    async def one(data: bytes) -> str:
        async with sem:
            image_id, statuses = await upload_with_retry(client, data)
        run.statuses += statuses
        run.accepted += 1
        return image_id

    ids = list(await asyncio.gather(*(one(d) for d in images)))
    run.ids += ids
    return ids


def objects_since(settings: Settings, since: datetime) -> dict[str, tuple[str, datetime]]:
    """image id -> (object key, last modified), for every original written at or after ``since`` (to the second);
    the objects derived from them (thumbnails, copy features) are the pipeline's, not an upload's."""
    out: dict[str, tuple[str, datetime]] = {}
    pages = (
        s3(settings).get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket, Prefix="images/")
    )
    for page in pages:
        for obj in page.get("Contents", []):
            if obj["LastModified"] >= since.replace(microsecond=0):
                out[obj["Key"].rsplit("/", 1)[-1]] = (obj["Key"], obj["LastModified"])
    return out


def records_since(settings: Settings, since: datetime) -> dict[str, dict[str, str]]:
    """image id -> record fields, for every record created at or after ``since``."""
    p = f"{settings.redis_prefix}:image:"
    out: dict[str, dict[str, str]] = {}
    with redis.Redis.from_url(settings.redis_server_url, decode_responses=True) as r:
        for key in r.scan_iter(match=p + "*", count=1000):
            if key.endswith(":history"):
                continue
            rec = r.hgetall(key)
            if float(rec.get("created_at") or 0) >= since.timestamp():
                out[key[len(p) :]] = rec
    return out


def has_record(settings: Settings, image_id: str) -> bool:
    with redis.Redis.from_url(settings.redis_server_url) as r:
        return bool(r.exists(f"{settings.redis_prefix}:image:{image_id}"))


def orphans(settings: Settings, since: datetime) -> list[str]:
    return [key for i, (key, _) in objects_since(settings, since).items() if not has_record(settings, i)]


def assert_nothing_half_stored(settings: Settings, since: datetime, images: list[bytes]) -> dict[str, int]:
    """Every object written since ``since`` has its record, every record its object, one record per bytes."""
    objects = objects_since(settings, since)
    records = records_since(settings, since)
    orphans = sorted(
        f"{key} (written {at:%H:%M:%S})" for i, (key, at) in objects.items() if not has_record(settings, i)
    )
    client = s3(settings)
    missing: list[str] = []
    for image_id, rec in records.items():
        if image_id not in objects:  # written just before ``since``'s second, or really missing: ask
            try:
                client.head_object(Bucket=settings.s3_bucket, Key=rec["object_key"])
            except client.exceptions.ClientError:
                missing.append(image_id)
    shas = [rec["sha256"] for rec in records.values()]
    mine = {hashlib.sha256(d).hexdigest() for d in images}
    figures = {
        "objects": len(objects),
        "records": len(records),
        "objects_without_record": len(orphans),
        "records_without_object": len(missing),
        "records_sharing_bytes": len(shas) - len(set(shas)),
        "records_not_mine": sum(1 for sha in shas if sha not in mine),
    }
    print(f"storage figures: {figures}")
    assert not orphans, f"objects without a record (half-stored uploads): {orphans[:10]}"
    assert not missing, f"records without their object: {missing[:10]}"
    assert figures["records_sharing_bytes"] == 0, "the same bytes were stored as two images"
    assert figures["records"] == len(images), "a record exists that no client was given (or one is missing)"
    return figures


async def assert_duplicates_resolve(client: httpx.AsyncClient, images: list[bytes], ids: list[str]) -> int:
    """Bytes that were accepted answer ``200 duplicate`` with the id they were given: returns how many."""
    for data, image_id in zip(images, ids, strict=True):
        again, statuses = await upload_with_retry(client, data, name="retry.jpg")
        assert statuses[-1] == 200 and again == image_id, (statuses, again, image_id)
    return len(images)


def service_down(settings: Settings, port: int) -> bool:
    try:
        httpx.get(f"http://{settings.host}:{port}/health", timeout=1)
    except httpx.HTTPError:
        return True
    return False


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- (a) the gateway ------------------------------------------------------------------------------------
def upload_intents(settings: Settings) -> set[str]:
    """The object keys of the uploads in flight: a gateway notes each before its put (gateway/intents.py)."""
    with redis.Redis.from_url(settings.redis_server_url, decode_responses=True) as r:
        return set(r.hkeys(f"{settings.redis_prefix}:upload_intents"))


def stored_keys(settings: Settings) -> set[str]:
    pages = s3(settings).get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket)
    return {obj["Key"] for page in pages for obj in page.get("Contents", [])}


async def kill_gateway_mid_put(
    stack: Stack, gateway_pid: int, start_wave: Any, wave_size: int
) -> tuple[Any, int]:
    """Start a wave of uploads and kill -9 the gateway at the worst moment, made certain (a random kill hits
    it only now and then); returns the wave's task and how many uploads the gateway held (their intents).

    S3 stalls before the wave starts, so its uploads queue up inside their put; Redis stalls; S3 resumes and
    stores their objects, and each of those uploads now waits on its record; the gateway dies there (a crash
    during a Redis latency spike).
    """
    s = stack.settings
    s3_pid, redis_pid = pid_of(stack, "s3"), pid_of(stack, "redis")
    earlier = await asyncio.to_thread(upload_intents, s)
    os.kill(s3_pid, signal.SIGSTOP)
    try:
        task = start_wave()
        in_put: set[str] = set()

        async def all_in_put() -> bool:
            nonlocal in_put
            in_put = await asyncio.to_thread(upload_intents, s) - earlier
            return len(in_put) >= wave_size

        await wait_until("every upload of the wave inside its S3 put", all_in_put, 60, every_s=0.05)
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            os.kill(s3_pid, signal.SIGCONT)

            async def all_stored() -> bool:  # S3 works off what queued up while it was stopped
                return in_put <= await asyncio.to_thread(stored_keys, s)

            await wait_until("the wave's objects stored", all_stored, 60, every_s=0.1)
            os.kill(gateway_pid, signal.SIGKILL)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
    finally:
        os.kill(s3_pid, signal.SIGCONT)
    return task, len(in_put)


async def kill_gateway_holding_uploads(settings: Settings, gateway_pid: int, earlier: set[str]) -> int:
    """kill -9 the gateway once it holds an upload of the wave between its intent and its record (intents not
    in ``earlier``); returns how many it held, read just before."""
    held: set[str] = set()

    async def holding() -> bool:
        nonlocal held
        held = await asyncio.to_thread(upload_intents, settings) - earlier
        return bool(held)

    await wait_until("an upload inside the gateway (intent noted, not yet recorded)", holding, 120, 0.01)
    os.kill(gateway_pid, signal.SIGKILL)
    return len(held)


async def test_gateway_kill_9_during_uploads(
    chaos_mesh: Stack, chaos_settings: Settings, gw: httpx.AsyncClient
) -> None:
    s = chaos_settings
    await wait_healthy(chaos_mesh, "gateway")
    since = utcnow()
    kills = size(3, 2)
    phase = 16  # one wave of clients per kill, so every kill lands with uploads in flight
    before = distinct_jpegs(size(20, 6), seed=SEED)
    during = distinct_jpegs(phase * (kills + 1) * size(2, 1), size=(512, 384), seed=SEED + 1)
    waves = [during[i :: kills + 1] for i in range(kills + 1)]

    early = Run()
    await upload_all(gw, before, early)
    run = Run()
    pids = [pid_of(chaos_mesh, "gateway")]
    ids_by_wave: list[list[str]] = []
    held: list[int] = []
    for k, wave in enumerate(waves):
        wave_run = Run()
        earlier = await asyncio.to_thread(upload_intents, s)

        def start_wave(wave: list[bytes] = wave, wave_run: Run = wave_run) -> asyncio.Task[list[str]]:
            # one client per upload of the wave: all of them can be inside the gateway at once (the mid-put
            # kill waits for every one of them in its S3 put)
            return asyncio.create_task(upload_all(gw, wave, wave_run, concurrency=len(wave)))

        worst = k == kills - 1
        if k < kills and worst:
            task, n = await kill_gateway_mid_put(chaos_mesh, pids[-1], start_wave, len(wave))
            held.append(n)
        elif k < kills:
            task = start_wave()
            # mid-wave: the others in flight at every stage of accept_upload (the gateway interleaves a wave)
            held.append(await kill_gateway_holding_uploads(s, pids[-1], earlier))
        else:
            task = start_wave()
        if k < kills:
            killed_at = wave_run.accepted
            pids.append(await wait_restarted(chaos_mesh, "gateway", pids[-1], timeout_s=90))
            print(
                f"\ngateway kill -9 #{k + 1}{' (mid-put, Redis stalled)' if worst else ''} at {killed_at}/"
                f"{len(wave)} of its wave accepted, {held[-1]} uploads inside it: pid {pids[-2]} -> {pids[-1]}"
            )
        ids_by_wave.append(await asyncio.wait_for(task, timeout=300))
        run.statuses += wave_run.statuses
        run.accepted += wave_run.accepted
    ids = [""] * len(during)
    for k, wave_ids in enumerate(ids_by_wave):
        ids[k :: kills + 1] = wave_ids

    images, all_ids = before + during, early.ids + ids
    resent = await assert_duplicates_resolve(gw, images, all_ids)
    records = await wait_terminal(gw, all_ids, timeout_s=size(600, 180))
    print(
        f"gateway kill figures: restarts={len(pids) - 1} {run.figures()} duplicates_resent={resent} "
        f"uploads_held_at_kills={held}"
    )
    assert len(set(pids)) == kills + 1, f"supervisord did not restart the gateway: {pids}"
    assert all(n >= 1 for n in held), f"a gateway died holding no upload: {held}"
    assert run.statuses.count(0) > 0, "no upload was interrupted: the kill did not land mid-ingest"
    assert_ingest_invariants(s, all_ids, images, records)
    # an object stored by a gateway that died before recording it is removed by the survivors' sweep
    # (gateway/intents.py) within a few seconds of the dead one's last heartbeat
    await wait_until("orphaned objects swept", lambda: not orphans(s, since), 30, every_s=0.05)
    assert_nothing_half_stored(s, since, images)
    await assert_nothing_left(s)


# --- (b) the config actor ---------------------------------------------------------------------------------
async def test_config_actor_kill_9_mesh_runs_on_cached_config(
    chaos_mesh: Stack, chaos_settings: Settings, gw: httpx.AsyncClient
) -> None:
    s = chaos_settings
    while_down = distinct_jpegs(size(40, 10), seed=SEED + 2)
    after = distinct_jpegs(size(10, 3), seed=SEED + 3)
    down_for_s = size(20, 10)

    os.kill(pid_of(chaos_mesh, "config"), signal.SIGKILL)
    await asyncio.to_thread(chaos_mesh.stop_service, "config")  # keep supervisord from bringing it back yet
    down_at = time.monotonic()
    run = Run()
    try:
        assert service_down(s, s.config_http_port), "the config actor is still up"
        ids = await upload_all(gw, while_down, run)
        records = await wait_terminal(gw, ids, timeout_s=size(300, 120))
        processed_s = time.monotonic() - down_at
        assert service_down(s, s.config_http_port), "the config actor came back before the images were done"
        await asyncio.sleep(max(0.0, down_for_s - processed_s))
    finally:
        up_at = time.monotonic()
        await asyncio.to_thread(chaos_mesh.start_service, "config")
    print(
        f"\nconfig actor down {up_at - down_at:.1f}s: {run.figures()}, done while down "
        f"{sum(r['status'] == 'done' for r in records.values())}/{len(while_down)} in {processed_s:.1f}s, "
        f"back in {time.monotonic() - up_at:.1f}s"
    )
    assert run.statuses.count(503) == 0, "an upload was refused while only the config actor was down"
    assert_ingest_invariants(s, ids, while_down, records)

    # back: the Config DB outlived the actor (the fast retry policy the chaos stack set is still there)
    nc = await connect_nats(s, "ops")
    try:
        cfg = await ConfigClient(nc).get()
    finally:
        await nc.close()
    assert cfg.backoff_s == [0.5, 1.0, 2.0, 4.0] and cfg.max_deliver == 8, cfg
    late = Run()
    late_ids = await upload_all(gw, after, late)
    late_records = await wait_terminal(gw, late_ids, timeout_s=120)
    assert all(r["status"] == "done" for r in late_records.values()), late_records
    await assert_nothing_left(s)


# --- (c) the S3 server ------------------------------------------------------------------------------------
async def test_s3_restart_during_ingest(
    chaos_mesh: Stack, chaos_settings: Settings, gw: httpx.AsyncClient
) -> None:
    s = chaos_settings
    first = distinct_jpegs(size(60, 16), seed=SEED + 4)
    second = distinct_jpegs(size(60, 12), seed=SEED + 5)
    down_s = size(8, 4)

    runs = Run(), Run()
    part1 = asyncio.create_task(upload_all(gw, first, runs[0], concurrency=4))
    await wait_until("uploads accepted", lambda: runs[0].accepted >= len(first) // 4, 120, every_s=0.05)
    in_flight = [await asyncio.to_thread(jobs_in_flight, s)]
    stopped_at, window_start = time.monotonic(), time.time()
    await asyncio.to_thread(chaos_mesh.stop_service, "s3")
    try:
        # the rest of the ingest starts while S3 is down: each of its uploads meets the outage
        part2 = asyncio.create_task(upload_all(gw, second, runs[1], concurrency=4))
        await asyncio.sleep(down_s)
        assert runs[1].accepted == 0, "an upload was accepted while S3 was down"
    finally:
        in_flight.append(await asyncio.to_thread(jobs_in_flight, s))
        restart_at = time.monotonic()
        await asyncio.to_thread(chaos_mesh.start_service, "s3")
    back_at, window_end = time.monotonic(), await wait_recovered(gw)
    ids1 = await asyncio.wait_for(part1, timeout=300)
    ids2 = await asyncio.wait_for(part2, timeout=300)
    images, ids = first + second, ids1 + ids2
    records = await wait_terminal(gw, ids, timeout_s=size(600, 180))

    statuses = runs[0].statuses + runs[1].statuses
    figures = {
        "uploads": len(images),
        "posts": len(statuses),
        "503s": statuses.count(503),
        "no_answer": statuses.count(0),
        "accepted_before_stop": runs[0].accepted,
        "done": sum(r["status"] == "done" for r in records.values()),
        "s3_down_s": round(back_at - stopped_at, 1),
        "s3_restart_s": round(back_at - restart_at, 1),
        "jobs_in_flight_at_stop_and_restart": in_flight,
    }
    print(f"\ns3 restart figures: {figures}")
    assert figures["503s"] > 0, "no upload met the outage"
    assert set(statuses) <= {0, 200, 202, 503}, sorted(set(statuses))
    # an accepted upload's object holds its bytes (2xx never answered for an object that was not stored)
    client = s3(s)
    for data, image_id in zip(images, ids, strict=True):
        body = client.get_object(Bucket=s.s3_bucket, Key=object_key(image_id))["Body"].read()
        assert body == data, f"object of {image_id} does not hold the accepted bytes"
    assert_ingest_invariants(
        s, ids, images, records, fault_windows=[(window_start, window_end)], jobs_at_fault=sum(in_flight)
    )
    await assert_nothing_left(s)
