"""Switching the active model without downtime, against the whole real mesh.

``POST /models/switch`` while a stream of queries runs: every query answers 200, the new index ends complete,
results after the swap come from the new model, and an upload during the build lands in both indexes. The test
switches back in ``finally`` and removes the vectors it added to the CLIP index, so the session's other tests
(which switch ``active_model`` directly) find the index as they left it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any

import httpx
import numpy as np
import redis
from nats.aio.client import Client

from actors.adapters.config_client import ConfigClient
from actors.adapters.index_client import IndexClient
from actors.settings import Settings
from tests.e2e.conftest import wait_status
from tests.images import distinct_jpegs, jpeg, photo

OLD, NEW = "efficientnet_lite0", "clip_image"
QUERY_EVERY_S = 0.05
SWITCH_TIMEOUT_S = 300.0
CONFIG_TTL_S = 2.0


async def upload(client: httpx.AsyncClient, data: bytes, metadata: dict[str, Any]) -> str:
    r = await client.post(
        "/images/upload",
        files={"file": ("x.jpg", data, "image/jpeg")},
        data={"metadata": json.dumps(metadata)},
    )
    assert r.status_code in (200, 202), r.text
    return str(r.json()["image_id"])


def redis_ids(settings: Settings, pattern: str, head: str) -> set[str]:
    with redis.Redis.from_url(settings.redis_server_url) as r:
        return {k.decode()[len(head) :] for k in r.scan_iter(match=pattern, count=1000)}


def vector_ids(settings: Settings, model: str) -> set[str]:
    head = f"{settings.redis_prefix}:vec:{model}:"
    return redis_ids(settings, head + "*", head)


def done_ids(settings: Settings) -> set[str]:
    p = settings.redis_prefix
    with redis.Redis.from_url(settings.redis_server_url) as r:
        keys = [k for k in r.scan_iter(match=f"{p}:image:*", count=1000) if not k.endswith(b":history")]
        statuses = [r.hget(k, "status") for k in keys]
    return {k.decode().rsplit(":", 1)[1] for k, s in zip(keys, statuses, strict=True) if s == b"done"}


def stored_embedding(settings: Settings, model: str, image_id: str) -> np.ndarray:
    with redis.Redis.from_url(settings.redis_server_url) as r:
        raw = r.get(f"{settings.redis_prefix}:emb:{model}:{image_id}")
    assert raw is not None, f"{image_id} has no embedding under {model}"
    return np.frombuffer(raw, dtype=np.float32).astype(np.float64)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


class QueryStream:
    """GET /images/{id}/similar and GET /images/{id} every ~50 ms on a few ids; counts every answer."""

    def __init__(self, client: httpx.AsyncClient, ids: list[str]) -> None:
        self.client, self.ids = client, ids
        self.answers: dict[int, int] = {}
        self.failures: list[str] = []
        self.models: list[str] = []  # the "model" of each /similar answer, in order
        self.stop = asyncio.Event()

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            image_id = self.ids[n % len(self.ids)]
            path = f"/images/{image_id}/similar" if n % 2 == 0 else f"/images/{image_id}"
            try:
                r = await self.client.get(path, params={"k": 5} if n % 2 == 0 else None)
                self.answers[r.status_code] = self.answers.get(r.status_code, 0) + 1
                if r.status_code != 200:
                    self.failures.append(f"{path}: {r.status_code} {r.text[:200]}")
                elif n % 2 == 0:
                    self.models.append(r.json()["model"])
            except httpx.HTTPError as e:
                self.answers[0] = self.answers.get(0, 0) + 1
                self.failures.append(f"{path}: {type(e).__name__}: {e}")
            n += 1
            await asyncio.sleep(QUERY_EVERY_S)


async def switch_and_wait(client: httpx.AsyncClient, model: str, on_building: Any = None) -> dict[str, Any]:
    """POST /models/switch, then poll GET /models until ``model`` is active and no switch runs."""
    r = await client.post("/models/switch", json={"model": model})
    assert r.status_code in (200, 202), r.text
    deadline = time.monotonic() + SWITCH_TIMEOUT_S
    seen: set[str] = set()
    while True:
        body = (await client.get("/models")).json()
        state = (body.get("switch") or {}).get("state")
        if body["next"] == model and state == "building" and "building" not in seen:
            seen.add("building")
            if on_building is not None:
                await on_building(body)
        if body["active"] == model and body["next"] is None and body["requested"] is None:
            return body
        assert time.monotonic() < deadline, f"switch to {model} not done after {SWITCH_TIMEOUT_S}s: {body}"
        await asyncio.sleep(0.5)


async def test_models_lists_what_triton_serves_and_refuses_unknown_switches(
    client: httpx.AsyncClient,
) -> None:
    body = (await client.get("/models")).json()
    by_name = {m["name"]: m for m in body["models"]}
    assert body["active"] == OLD and by_name[OLD]["active"] and by_name[OLD]["kind"] == "image"
    print(f"\nGET /models: {body}")
    assert by_name[OLD]["dim"] == 1280 and by_name[NEW]["dim"] > 0  # the test CLIP is a tiny random one
    assert by_name["clip_text"]["kind"] == "text"
    assert all(m["ready"] for m in body["models"])
    for model, code in (
        ("no_such_model", "unknown_model"),
        ("clip_text", "not_image_model"),
        ("../x", "unknown_model"),
    ):
        r = await client.post("/models/switch", json={"model": model})
        assert r.status_code == 400 and r.json()["error"]["code"] == code, r.text
    r = await client.post("/models/switch", json={"model": OLD})  # already active, nothing running
    assert r.status_code == 200 and r.json()["requested"] is None


async def test_switching_the_active_model_without_downtime(
    client: httpx.AsyncClient, settings: Settings, ops_nc: Client
) -> None:
    run = uuid.uuid4().hex[:12]
    clip_before = vector_ids(settings, NEW)
    mine = await asyncio.gather(
        *(upload(client, d, {"run": run}) for d in distinct_jpegs(10, seed=4242, size=(224, 200)))
    )
    cat_copy = photo("chelsea").resize((400, 300))
    cat = await upload(client, jpeg(cat_copy, quality=77), {"run": run, "photo": "cat"})
    await wait_status(client, [*mine, cat], {"done"}, timeout_s=180)
    cat_label = (await client.get(f"/images/{cat}")).json()["labels"][0]["name"]  # from efficientnet
    stream = QueryStream(client, list(mine[:4]))
    during: dict[str, str] = {}

    async def upload_during_build(body: dict[str, Any]) -> None:
        during["id"] = await upload(client, distinct_jpegs(1, seed=4343)[0], {"run": run, "during": "switch"})
        during["progress"] = json.dumps(body["switch"])

    queries = asyncio.create_task(stream.run())
    started = time.monotonic()
    try:
        await asyncio.sleep(1.0)  # queries before the switch
        final = await switch_and_wait(client, NEW, upload_during_build)
        switch_s = time.monotonic() - started - 1.0
        await asyncio.sleep(CONFIG_TTL_S + 1.0)  # queries after the swap, once every reader follows
        stream.stop.set()
        await queries

        total = sum(stream.answers.values())
        print(
            f"\nswitch {OLD} -> {NEW}: {switch_s:.1f} s; progress {final['switch']}; "
            f"queries answered during the switch: {stream.answers} of {total}; "
            f"similar models seen: {sorted(set(stream.models))}; upload during the build at {during.get('progress')}"
        )
        assert not stream.failures, stream.failures[:5]
        assert total > 20 and stream.answers == {200: total}
        assert stream.models[0] == OLD and stream.models[-1] == NEW
        assert final["switch"]["state"] == "done" and final["switch"]["done"] == final["switch"]["total"]

        # the new index is complete: every done image has a vector under the new model
        done = done_ids(settings)
        stats = await IndexClient(ops_nc).stats(NEW)
        assert stats.num_docs >= len(done), (stats, len(done))
        assert done <= vector_ids(settings, NEW)

        # the upload during the build landed in both indexes, its record untouched by the switch
        assert "id" in during, "the switch never showed the building state"
        await wait_status(client, [during["id"]], {"done"})
        assert during["id"] in vector_ids(settings, OLD) and during["id"] in vector_ids(settings, NEW)

        # the re-embedded images kept their record: states in order, ingest model, no extra history
        rec = (await client.get(f"/images/{mine[0]}")).json()
        assert rec["model"] == OLD and rec["status"] == "done"
        assert [h.get("status") for h in rec["history"]] == [
            "pending",
            "processing",
            "embedded",
            "indexed",
            "done",
        ]

        # results come from the new model: scores are the cosine of the stored clip_image embeddings
        for image_id in mine[:3]:
            r = await client.get(f"/images/{image_id}/similar", params={"k": 5})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == NEW and len(body["results"]) == 5
            query = stored_embedding(settings, NEW, image_id)
            for hit in body["results"]:
                want = cosine(query, stored_embedding(settings, NEW, hit["image_id"]))
                assert abs(hit["score"] - want) < 1e-4, (hit, want)
            dup = await client.get(
                f"/images/{image_id}/duplicates", params={"threshold": 0.01, "mode": "similar"}
            )
            assert dup.status_code == 200 and dup.json()["model"] == NEW

        # the labels came along into the new index: a text search there (its text tower) filters by them
        r = await client.get(
            "/search", params=[("q", "a cat"), ("filter", f"run:{run}"), ("filter", f"label:{cat_label}")]
        )
        assert r.status_code == 200 and r.json()["mode"] == "embedding", r.text
        assert [h["image_id"] for h in r.json()["results"]] == [cat]
    finally:
        stream.stop.set()
        with contextlib.suppress(Exception):
            await queries
        await restore(client, ops_nc, settings, clip_before)


async def restore(
    client: httpx.AsyncClient, ops_nc: Client, settings: Settings, clip_before: set[str]
) -> None:
    """Back to efficientnet_lite0 the same way (or directly, if that fails), then remove the CLIP vectors this
    test added: test_search reads the CLIP index expecting only the images uploaded while CLIP was active."""
    started = time.monotonic()
    try:
        await switch_and_wait(client, OLD)
        print(f"switch back to {OLD}: {time.monotonic() - started:.1f} s")
    except Exception as e:  # leave the session usable whatever went wrong
        print(f"switch back failed ({e}); setting active_model directly")
        config = ConfigClient(ops_nc)
        await config.set("next_model", "")
        await config.set("active_model", OLD)
    await asyncio.sleep(CONFIG_TTL_S + 1.0)
    added = vector_ids(settings, NEW) - clip_before
    index = IndexClient(ops_nc)
    for image_id in added:
        await index.delete(image_id, model=NEW)
    with redis.Redis.from_url(settings.redis_server_url) as r:
        for image_id in added:
            r.delete(f"{settings.redis_prefix}:emb:{NEW}:{image_id}")
