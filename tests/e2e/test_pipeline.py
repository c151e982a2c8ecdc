"""An uploaded image becomes searchable: the REST contract against the whole real mesh."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import httpx
import numpy as np
import redis

from actors import contract
from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.helpers import jobs_of, jobs_service, upload, wait_status
from tests.images import distinct_jpegs, sibling_set

RECORD_FIELDS = {
    "image_id",
    "status",
    "sha256",
    "content_type",
    "size_bytes",
    "width",
    "height",
    "metadata",
    "created_at",
    "updated_at",
    "history",
    "model",
    "embedding_dim",
    "error",
}


async def test_forty_altered_copies_find_their_siblings(client: httpx.AsyncClient) -> None:
    images = sibling_set()
    assert len(images) == 40
    run = uuid.uuid4().hex[:10]  # other tests store copies of the same photos (mesh demo): count only ours
    responses = await asyncio.gather(
        *(upload(client, data, f"{g}-{v}.jpg", metadata={"run": run}) for g, v, data in images)
    )
    assert [r.status_code for r in responses] == [202] * 40, [
        r.text for r in responses if r.status_code != 202
    ]
    ids = [r.json()["image_id"] for r in responses]
    group_of = {image_id: g for image_id, (g, _, _) in zip(ids, images, strict=True)}

    await wait_status(client, ids, {"done"}, timeout_s=120)

    found = existing = 0
    for image_id in ids:
        r = await client.get(f"/images/{image_id}/similar", params={"k": 4, "filter": f"run:{run}"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "efficientnet_lite0"
        result_ids = [hit["image_id"] for hit in body["results"]]
        assert image_id not in result_ids, "the query image is in its own results"
        scores = [hit["score"] for hit in body["results"]]
        assert scores == sorted(scores, reverse=True)
        siblings = {i for i, g in group_of.items() if g == group_of[image_id] and i != image_id}
        found += len(siblings & set(result_ids))
        existing += len(siblings)
    recall = found / existing
    print(f"sibling recall@4 over 40 images: {recall:.3f}")
    assert recall >= 0.9


async def test_record_has_every_contract_field(client: httpx.AsyncClient) -> None:
    data = distinct_jpegs(1, seed=101)[0]
    r = await upload(client, data, metadata=json.dumps({"album": "tests", "n": 3}))
    assert r.status_code == 202
    body = r.json()
    assert body["status"] == "pending" and body["sha256"] == hashlib.sha256(data).hexdigest()
    rec = (await wait_status(client, [body["image_id"]], {"done"}))[body["image_id"]]
    assert RECORD_FIELDS <= set(rec)
    assert rec["content_type"] == "image/jpeg" and rec["size_bytes"] == len(data)
    assert (rec["width"], rec["height"]) == (256, 192)
    assert rec["metadata"] == {"album": "tests", "n": 3}
    assert rec["error"] is None and rec["model"] == "efficientnet_lite0"
    assert [h["status"] for h in rec["history"] if "status" in h] == [
        "pending",
        "processing",
        "embedded",
        "indexed",
        "done",
    ]
    assert "embedding" not in rec

    r = await client.get(f"/images/{body['image_id']}", params={"include": "embedding"})
    emb = np.asarray(r.json()["embedding"])
    assert emb.shape == (rec["embedding_dim"],) == (1280,)
    assert abs(np.linalg.norm(emb) - 1) < 1e-4


async def test_identical_bytes_are_not_processed_twice(
    client: httpx.AsyncClient, settings: Settings, ops_nc
) -> None:
    data = distinct_jpegs(1, seed=202)[0]
    first = await upload(client, data, "a.jpg")
    assert first.status_code == 202
    image_id = first.json()["image_id"]
    await wait_status(client, [image_id], {"done"})
    again = await upload(client, data, "renamed.png")
    assert again.status_code == 200
    assert again.json() == {
        "image_id": image_id,
        "status": "done",
        "sha256": first.json()["sha256"],
        "duplicate": True,
    }

    # the engine took one job for it (the stream holds one, or Temporal ran one workflow) and the index holds
    # one vector
    assert await jobs_of(ops_nc, settings, image_id) == 1
    with redis.Redis.from_url(settings.redis_server_url) as r:
        vectors = list(r.scan_iter(match=f"{settings.redis_prefix}:vec:efficientnet_lite0:*{image_id}*"))
    assert len(vectors) == 1


async def test_events_follow_the_seed_states_in_order(client: httpx.AsyncClient, ops_nc) -> None:
    events: list[contract.ImageEvent] = []

    async def on_event(msg) -> None:  # type: ignore[no-untyped-def]
        events.append(contract.decode(msg.data, contract.ImageEvent))

    # subscribed before the upload, and every event kept: the id is known only once the upload answers
    sub = await ops_nc.subscribe(contract.EVENTS_SUBJECTS, cb=on_event)
    try:
        r = await upload(client, distinct_jpegs(1, seed=303)[0])
        image_id = r.json()["image_id"]
        deadline = asyncio.get_running_loop().time() + 60
        while not any(e.image_id == image_id and e.status in contract.TERMINAL for e in events):
            assert asyncio.get_running_loop().time() < deadline, "no terminal event within 60 s"
            await asyncio.sleep(0.1)
    finally:
        await sub.unsubscribe()
    seen = [e.status.value for e in events if e.image_id == image_id]
    assert seen == ["pending", "processing", "embedded", "indexed", "done"]


async def test_unknown_is_404_and_similar_before_indexing_is_409(
    client: httpx.AsyncClient, mesh: Stack
) -> None:
    r = await client.get("/images/does-not-exist")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert (await client.get("/images/does-not-exist/similar")).status_code == 404

    mesh.stop_service(jobs_service(mesh.settings))  # work queues up while no coordinator runs
    try:
        r = await upload(client, distinct_jpegs(1, seed=404)[0])
        assert r.status_code == 202
        image_id = r.json()["image_id"]
        r = await client.get(f"/images/{image_id}/similar")
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_indexed"
    finally:
        mesh.start_service(jobs_service(mesh.settings))
    await wait_status(client, [image_id], {"done"})
    assert (await client.get(f"/images/{image_id}/similar")).status_code == 200


async def test_encode_matches_stored_vector_and_content_round_trips(client: httpx.AsyncClient) -> None:
    data = distinct_jpegs(1, seed=505)[0]
    image_id = (await upload(client, data)).json()["image_id"]
    await wait_status(client, [image_id], {"done"})
    stored = np.asarray(
        (await client.get(f"/images/{image_id}", params={"include": "embedding"})).json()["embedding"]
    )

    r = await client.post("/encode", files={"file": ("q.jpg", data, "image/jpeg")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "efficientnet_lite0" and body["embedding_dim"] == 1280
    assert float(np.dot(stored, np.asarray(body["embedding"]))) >= 0.9999

    streamed = await client.get(f"/images/{image_id}/content")
    assert streamed.status_code == 200 and streamed.headers["content-type"] == "image/jpeg"
    assert hashlib.sha256(streamed.content).hexdigest() == hashlib.sha256(data).hexdigest()

    redirect = await client.get(f"/images/{image_id}/content", params={"presigned": "true"})
    assert redirect.status_code == 307
    async with httpx.AsyncClient() as direct:
        fetched = await direct.get(redirect.headers["location"])
    assert fetched.status_code == 200
    assert hashlib.sha256(fetched.content).hexdigest() == hashlib.sha256(data).hexdigest()
