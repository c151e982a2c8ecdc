"""Nothing stuck, nothing orphaned, against the whole real mesh: each anomaly the reconciler repairs is planted
behind the mesh's back, ``mesh check --json`` counts it and exits 1, ``mesh reconcile`` repairs it (the
repaired images end ``done``, the stuck one ``error``, each with a ``reconcile`` history entry, and
``mesh_reconcile_repairs_total`` moves), then ``mesh check`` exits 0. Then the periodic reconciler does the same
on its own, from the Config DB's period.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client

from actors import contract
from actors.adapters.config_client import ConfigClient
from actors.adapters.index_client import IndexClient
from actors.adapters.object_store import object_key, thumbnail_key
from actors.adapters.workflow_store import WorkflowStore
from actors.contract import DeadLetter, ImageRecord, Status
from actors.settings import Settings
from ops.stack.supervisor import settings_env
from tests.chaos.audit import wait_copy_checks
from tests.helpers import s3_client, upload_id, wait_status, wait_until
from tests.images import distinct_jpegs, jpeg, photo

ROOT = Path(__file__).resolve().parents[2]
MESH = str(Path(sys.executable).parent / "mesh")
GRACE = "1"  # seconds: everything planted is older (or backdated), nothing else is in flight
REPAIRED = (
    "pending_without_job",
    "stuck",
    "orphan_object",
    "done_without_vector",
    "vector_without_record",
    "stale_intent",
)
CHECK_ONLY = ("duplicate_done", "vector_indexed_twice")


async def mesh_cli(settings: Settings, *args: str, limit_s: float = 120) -> tuple[int, Any]:
    """``mesh ARGS --json`` as an operator runs it (a subprocess with the stack's settings): (exit, JSON)."""
    env = {**os.environ, **settings_env(settings)}
    proc = await asyncio.create_subprocess_exec(
        MESH,
        *args,
        "--json",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode is not None
    assert out.strip(), (
        f"mesh {' '.join(args)} printed nothing (exit {proc.returncode}): {err.decode()[-2000:]}"
    )
    return proc.returncode, json.loads(out)


async def check(settings: Settings) -> tuple[int, dict[str, int]]:
    code, report = await mesh_cli(settings, "check", "--grace", GRACE)
    return code, report["anomalies"]


async def repairs_metric(settings: Settings) -> dict[str, float]:
    """``mesh_reconcile_repairs_total`` by kind, from the coordinator's /metrics."""
    async with httpx.AsyncClient(timeout=10) as c:
        text = (await c.get(f"http://{settings.host}:{settings.coordinator_http_port}/metrics")).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('mesh_reconcile_repairs_total{kind="'):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('"')[1]] = float(value)
    return out


def history_by(rec: dict[str, Any], cause: str) -> list[dict[str, Any]]:
    return [h for h in rec["history"] if h.get("cause") == cause]


async def test_mesh_check_counts_each_planted_anomaly_and_mesh_reconcile_repairs_it(
    settings: Settings, client: httpx.AsyncClient, ops_nc: Client
) -> None:
    started = time.monotonic()
    config = ConfigClient(ops_nc)
    before_cfg = await config.read()
    await config.set("reconcile_period_s", 0)  # no periodic step races the anomalies planted here
    p, model = settings.redis_prefix, before_cfg.active_model
    redis = aioredis.Redis.from_url(settings.redis_server_url)
    store = WorkflowStore(settings.redis_server_url, p)
    s3 = s3_client(settings)
    rng = random.Random(uuid.uuid4().int)
    try:
        base_code, base = await check(settings)  # earlier tests' leftovers, if any
        healthy = distinct_jpegs(3, size=(96, 64), seed=rng.randrange(1 << 30))
        done_id, intent_id = [await upload_id(client, data) for data in healthy[:2]]
        await wait_status(client, [done_id, intent_id], {"done"}, timeout_s=60)

        # 1. a pending record whose job never reached the stream (a gateway died between record and publish)
        pending_id = uuid.uuid4().hex
        data = healthy[2]
        s3.put_object(
            Bucket=settings.s3_bucket, Key=object_key(pending_id), Body=data, ContentType="image/jpeg"
        )
        old = time.time() - 3600
        common: dict[str, Any] = dict(
            content_type="image/jpeg", size_bytes=len(data), width=96, height=64, trace_id="t"
        )
        pending = ImageRecord(
            image_id=pending_id,
            status=Status.PENDING,
            sha256=hashlib.sha256(data).hexdigest(),
            object_key=object_key(pending_id),
            created_at=old,
            updated_at=old,
            **common,
        )
        assert await store.create(pending) is None
        # 2. a processing record whose last delivery died with its coordinator, a day ago
        stuck_id = uuid.uuid4().hex
        ancient = time.time() - 86_400
        stuck = ImageRecord(
            image_id=stuck_id,
            status=Status.PROCESSING,
            sha256=uuid.uuid4().hex * 2,
            object_key=object_key(stuck_id),
            created_at=ancient,
            updated_at=ancient,
            **common,
        )
        assert await store.create(stuck) is None
        # 3. an object nothing refers to
        orphan_key = object_key(uuid.uuid4().hex)
        s3.put_object(Bucket=settings.s3_bucket, Key=orphan_key, Body=b"orphan", ContentType="image/jpeg")
        # 4. a done image whose vector was deleted; 5. a vector whose image has no record
        vector = await store.get_embedding(model, done_id)
        assert vector is not None
        ghost_id = uuid.uuid4().hex
        await IndexClient(ops_nc).upsert(model, ghost_id, vector)
        assert await redis.delete(f"{p}:vec:{model}:{done_id}") == 1
        # 6. the intent of an upload that finished, left by a gateway that is still alive (its removal lost)
        await redis.set(f"{p}:gateway:leaky", b"1", ex=300)
        await redis.hset(f"{p}:upload_intents", object_key(intent_id), "leaky")
        # and one check-only anomaly: the same delivery of the same job recorded `done` twice
        done_rec = await store.get(done_id)
        assert done_rec is not None
        last_done = next(h for h in reversed(done_rec.history) if h.get("status") == "done")
        assert {"cause", "attempt", "delivery", "job_seq"} <= set(last_done), last_done
        await redis.rpush(f"{p}:image:{done_id}:history", json.dumps(last_done))

        planted = {kind: base[kind] + 1 for kind in (*REPAIRED, "duplicate_done")}
        found: dict[str, int] = {}

        async def counted() -> bool:
            nonlocal found
            code, found = await check(settings)
            return code == 1 and {k: found[k] for k in planted} == planted

        await wait_until("mesh check counts every planted anomaly", counted, timeout_s=30, every_s=0.5)
        assert found["vector_indexed_twice"] == base["vector_indexed_twice"]

        metric_before = await repairs_metric(settings)
        code, reply = await mesh_cli(settings, "reconcile", "--grace", GRACE)
        assert code == 0, reply
        for kind in REPAIRED:
            assert reply["repairs"][kind] >= 1, (kind, reply)
        assert reply["scanned"]["records"] >= 4 and reply["scanned"]["objects"] >= 3, reply

        # the repaired images end done, the stuck one in error, each with its reconcile entry
        records = await wait_status(client, [pending_id, done_id, intent_id], {"done"}, timeout_s=60)
        republished = records[pending_id]
        assert [h["repair"] for h in history_by(republished, "reconcile") if "step" in h] == [
            "pending_without_job"
        ]
        assert "done" in [h.get("status") for h in history_by(republished, "reconcile")]  # its job's cause
        note = history_by(records[done_id], "reconcile")[-1]
        assert (note["repair"], note["how"], note["model"]) == ("done_without_vector", "upsert", model)
        assert await redis.exists(f"{p}:vec:{model}:{done_id}") == 1
        assert history_by(records[intent_id], "reconcile")[-1]["repair"] == "stale_intent"
        [stuck_rec] = (await wait_status(client, [stuck_id], {"error"}, timeout_s=10)).values()
        assert stuck_rec["error"]["code"] == "stuck"
        assert stuck_rec["history"][-1]["cause"] == "reconcile"
        dead = await ops_nc.jetstream().get_last_msg(settings.stream, contract.DEAD_SUBJECT)
        letter = contract.decode(dead.data or b"", DeadLetter)
        assert (letter.job.image_id, letter.code) == (stuck_id, "stuck")
        # nothing recorded is left behind: the ghost vector, the orphan, the intent are gone
        assert await redis.exists(f"{p}:vec:{model}:{ghost_id}") == 0
        assert s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=orphan_key).get("KeyCount") == 0
        assert await redis.hget(f"{p}:upload_intents", object_key(intent_id)) is None
        metric_after = await repairs_metric(settings)
        for kind in REPAIRED:
            assert metric_after.get(kind, 0) >= metric_before.get(kind, 0) + 1, (kind, metric_after)

        # what the reconciler cannot repair stays reported; once it is gone, mesh check exits 0 (after the
        # background copy checks of the images done by the repairs, which the check would count too)
        await wait_copy_checks(settings, timeout_s=300)
        code, found = await check(settings)
        assert code == 1 and found["duplicate_done"] == planted["duplicate_done"], found
        assert await redis.lrem(f"{p}:image:{done_id}:history", -1, json.dumps(last_done)) == 1  # the copy
        code, found = await check(settings)
        expected = {k: (base[k] if k in CHECK_ONLY else 0) for k in found}
        assert found == expected, found
        assert code == (1 if any(expected.values()) else 0)
        if base_code == 0:
            assert code == 0
        print(f"check -> reconcile -> check in {time.monotonic() - started:.1f} s")
    finally:
        await config.set("reconcile_period_s", before_cfg.reconcile_period_s)
        await redis.delete(f"{p}:gateway:leaky")
        await store.close()
        await redis.aclose()


async def test_the_periodic_reconciler_repairs_on_its_own(settings: Settings, ops_nc: Client) -> None:
    """A period and a grace of one second (Config DB): an orphaned object and a ghost vector are removed
    within a few periods, by whichever coordinator holds the lease, without anyone asking."""
    config = ConfigClient(ops_nc)
    before = await config.read()
    redis = aioredis.Redis.from_url(settings.redis_server_url)
    s3 = s3_client(settings)
    p, model = settings.redis_prefix, before.active_model
    orphan_key, ghost_id = object_key(uuid.uuid4().hex), uuid.uuid4().hex
    try:
        s3.put_object(Bucket=settings.s3_bucket, Key=orphan_key, Body=b"orphan", ContentType="image/jpeg")
        stats = await IndexClient(ops_nc).stats(model)
        await IndexClient(ops_nc).upsert(model, ghost_id, np.eye(1, stats.dim, dtype=np.float32)[0])
        await config.set("reconcile_grace_s", 1)
        await config.set("reconcile_period_s", 1)

        async def repaired() -> bool:
            listed = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=orphan_key).get("KeyCount")
            return listed == 0 and await redis.exists(f"{p}:vec:{model}:{ghost_id}") == 0

        await wait_until("the periodic reconciler removed both", repaired, timeout_s=30, every_s=0.5)
        cursors = await redis.hgetall(f"{p}:reconcile:cursors")
        assert {k.decode() if isinstance(k, bytes) else k for k in cursors} == {
            "intents",
            "records",
            "vectors",
            "objects",
        }
    finally:
        await config.set("reconcile_period_s", before.reconcile_period_s)
        await config.set("reconcile_grace_s", before.reconcile_grace_s)
        await redis.aclose()


async def test_images_indexed_before_labels_and_thumbnails_get_them_from_the_reconciler(
    settings: Settings, client: httpx.AsyncClient, ops_nc: Client
) -> None:
    """The backfill of what a newer version makes for every image: an image done and indexed without labels
    and thumbnail (as before this version), and one with labels but no thumbnail, are found by ``mesh check``
    and completed by ``mesh reconcile`` (re-embed jobs): records, index and object store get what they lack."""
    config = ConfigClient(ops_nc)
    before_cfg = await config.read()
    await config.set("reconcile_period_s", 0)
    p, model = settings.redis_prefix, before_cfg.active_model
    redis = aioredis.Redis.from_url(settings.redis_server_url)
    store = WorkflowStore(settings.redis_server_url, p)
    run = uuid.uuid4().hex[:12]
    try:
        img = photo("chelsea").resize((320, 240))
        image_id = await upload_id(client, jpeg(img, quality=71), metadata={"run": run})
        other_id = await upload_id(client, jpeg(photo("coffee").resize((300, 200)), quality=72))
        recs = await wait_status(client, [image_id, other_id], {"done"}, timeout_s=60)
        labels = {label["name"]: label["score"] for label in recs[image_id]["labels"]}
        assert labels, recs[image_id]
        # as an older version left them: no thumbnail (record and object), and for one no labels in the record
        # and none in the index document
        s3 = s3_client(settings)
        for i in (image_id, other_id):
            assert await redis.hdel(f"{p}:image:{i}", "thumbnail_key") == 1
            s3.delete_object(Bucket=settings.s3_bucket, Key=thumbnail_key(i, 256))
            assert (await client.get(f"/images/{i}/thumbnail")).status_code == 409
        assert await redis.hdel(f"{p}:image:{image_id}", "labels") == 1
        vector = await store.get_embedding(model, image_id)
        assert vector is not None
        await IndexClient(ops_nc).upsert(model, image_id, vector, {"run": run})
        mine = {"q": next(iter(labels)), "filter": f"run:{run}"}
        assert (await client.get("/search", params=mine)).json()["results"] == []
        assert (await client.get(f"/images/{image_id}")).json()["labels"] is None
        found: dict[str, int] = {}

        async def counted() -> bool:  # once past the grace, which the check and the repair leave alone
            nonlocal found
            code, found = await check(settings)
            return code == 1 and found["done_without_labels"] >= 1 and found["done_without_derived"] >= 1

        await wait_until("mesh check counts the planted images", counted, timeout_s=30, every_s=0.5)
        code, reply = await mesh_cli(settings, "reconcile", "--grace", GRACE)
        assert code == 0 and reply["repairs"]["done_without_labels"] >= 1, reply
        assert reply["repairs"]["done_without_derived"] >= 1, reply

        async def completed() -> bool:
            r = (await client.get(f"/images/{image_id}")).json()
            thumbs = [(await client.get(f"/images/{i}/thumbnail")).status_code for i in (image_id, other_id)]
            found = (await client.get("/search", params=mine)).json()["results"]
            return bool(r["labels"]) and bool(found) and thumbs == [200, 200]

        await wait_until("the re-embed jobs completed the images", completed, timeout_s=60, every_s=0.5)
        rec = (await client.get(f"/images/{image_id}")).json()
        assert {label["name"]: label["score"] for label in rec["labels"]} == pytest.approx(labels, abs=1e-3)
        assert rec["status"] == "done"
        repairs = [h["repair"] for h in history_by(rec, "reconcile") if "repair" in h]
        assert repairs == ["done_without_labels"]
        # the re-embed job's note, under the reconciler's cause
        assert [h["step"] for h in history_by(rec, "reconcile") if h.get("step") == "labels"] == ["labels"]
        await wait_copy_checks(settings, timeout_s=300)
        other = (await client.get(f"/images/{other_id}")).json()
        assert [h["repair"] for h in history_by(other, "reconcile") if "repair" in h] == [
            "done_without_derived"
        ]
        code, found = await check(settings)
        assert found["done_without_labels"] == 0 and found["done_without_derived"] == 0, found
    finally:
        await config.set("reconcile_period_s", before_cfg.reconcile_period_s)
        await store.close()
        await redis.aclose()
