"""Search beyond the seed, against the whole real mesh: text to image, query by an image that is not stored,
near-duplicate groups, metadata filters, pages, delete.

Other tests of the session share the index, so each test tags its uploads (``metadata.run``) and measures
over its own ids; tests that switch the active model restore ``efficientnet_lite0`` in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import redis
from nats.aio.client import Client
from PIL import Image

from actors import contract
from actors.adapters.config_client import ConfigClient
from actors.adapters.object_store import object_key
from actors.contract import MeshConfig
from actors.duplicates import pair_set, state_field
from actors.settings import Settings
from ops.stack.supervisor import Stack
from tests.helpers import jobs_service, s3_client, upload, wait_jobs_idle, wait_status, wait_until
from tests.images import colour_shift, distinct_jpegs, flip, jpeg, photo, sibling_set

DEFAULT_MODEL, CLIP_IMAGE, CLIP_TEXT = "efficientnet_lite0", "clip_image", "clip_text"
TIE = 1e-5  # brute force and Redis may order images this close either way
TEXTS = ["a photo of a cat", "two red bicycles near the sea", "astronaut"]


# --- helpers ------------------------------------------------------------------------------------------------
def run_id() -> str:
    return uuid.uuid4().hex[:12]


async def upload_all(
    client: httpx.AsyncClient, images: list[bytes], metadata: list[dict[str, Any]] | dict[str, Any]
) -> list[str]:
    metas = metadata if isinstance(metadata, list) else [metadata] * len(images)
    responses = await asyncio.gather(
        *(upload(client, d, metadata=m) for d, m in zip(images, metas, strict=True))
    )
    # 200: identical bytes another test already uploaded (same image, same id)
    assert all(r.status_code in (200, 202) for r in responses), [r.text for r in responses]
    ids = [r.json()["image_id"] for r in responses]
    await wait_status(client, ids, {"done"}, timeout_s=180)
    return ids


async def set_active_model(nc: Client, client: httpx.AsyncClient, model: str) -> None:
    """Write ``active_model`` and wait until the gateway serves it. Every reader follows the Config DB with a
    KV watch, so the coordinator has the change by the time the gateway shows it."""
    cfg = await ConfigClient(nc).set("active_model", model)
    assert cfg.active_model == model

    async def gateway_follows() -> bool:
        return bool((await client.get("/models")).json()["active"] == model)

    await wait_until(f"the gateway serving {model}", gateway_follows, timeout_s=30, every_s=0.05)


@contextlib.asynccontextmanager
async def active_model(nc: Client, client: httpx.AsyncClient, model: str) -> AsyncIterator[None]:
    """Switch the active model for a test; always switch back (the session's other tests need the default)."""
    await set_active_model(nc, client, model)
    try:
        yield
    finally:
        await set_active_model(nc, client, DEFAULT_MODEL)


async def embedding(client: httpx.AsyncClient, image_id: str) -> tuple[str, np.ndarray]:
    r = await client.get(f"/images/{image_id}", params={"include": "embedding"})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["model"], np.asarray(body["embedding"], dtype=np.float64)


def indexed_ids(settings: Settings, model: str) -> list[str]:
    head = f"{settings.redis_prefix}:vec:{model}:"
    with redis.Redis.from_url(settings.redis_server_url) as r:
        return [k.decode()[len(head) :] for k in r.scan_iter(match=head + "*", count=1000)]


def redis_keys(settings: Settings, pattern: str) -> list[str]:
    with redis.Redis.from_url(settings.redis_server_url) as r:
        return [k.decode() for k in r.scan_iter(match=pattern, count=1000)]


def footprint(settings: Settings) -> dict[str, int]:
    """What a stored image leaves behind: Redis keys, records, vectors and S3 objects. The copy checker's keys
    (its queue and verdicts) are left out: it works in the background on the images earlier tests stored."""
    p = settings.redis_prefix
    s3 = s3_client(settings)
    objects = sum(
        page.get("KeyCount", 0)
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket)
    )
    checker = (f"{p}:copies:", f"{p}:copyq")
    with redis.Redis.from_url(settings.redis_server_url) as r:
        # one scan, the checker's keys dropped by name: counting them apart from a dbsize() raced its writes
        keys = [k.decode() for k in r.scan_iter(count=1000)]
    mine = [k for k in keys if not k.startswith(checker)]
    return {
        "redis_keys": len(mine),
        "records": sum(1 for k in mine if k.startswith(f"{p}:image:") and not k.endswith(":history")),
        "vectors": sum(1 for k in mine if k.startswith(f"{p}:vec:")),
        "objects": objects,
    }


def text_embedder(settings: Settings) -> Any:
    """The exported text tower run in-process: the checkpoint's tokenizer + ONNX Runtime on model.onnx."""
    from transformers import CLIPTokenizer

    folder = Path(settings.model_repository) / CLIP_TEXT / "1"
    tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def embed(text: str) -> np.ndarray:
        enc = tok([text], padding="max_length", max_length=77, truncation=True, return_tensors="np")
        feed = dict(
            zip(
                names,
                (enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)),
                strict=True,
            )
        )
        return np.asarray(session.run(None, feed)[0][0], dtype=np.float64)

    return embed


def brute_force(query: np.ndarray, vectors: dict[str, np.ndarray]) -> list[tuple[str, float]]:
    q = query / np.linalg.norm(query)
    scores = {i: float(np.dot(q, v / np.linalg.norm(v))) for i, v in vectors.items()}
    return sorted(scores.items(), key=lambda kv: -kv[1])


def assert_same_ranking(hits: list[dict[str, Any]], want: list[tuple[str, float]], k: int) -> None:
    """Same set and order as the brute-force ranking, except among images whose scores are within ``TIE``."""
    bf = dict(want)
    got = [h["image_id"] for h in hits]
    assert len(got) == min(k, len(want)), (got, want[:k])
    kth = want[min(k, len(want)) - 1][1]
    for missing in {i for i, _ in want[:k]} - set(got):
        assert abs(bf[missing] - kth) <= TIE, f"{missing} ({bf[missing]}) missing from the top {k}"
    for extra in set(got) - {i for i, _ in want[:k]}:
        assert abs(bf[extra] - kth) <= TIE, f"{extra} ({bf[extra]}) should not be in the top {k}"
    for a, b in itertools.pairwise(got):
        assert bf[a] >= bf[b] - TIE, f"{a} ({bf[a]}) ranked before {b} ({bf[b]})"
    for h in hits:  # Redis computes in float32, from Triton's vector: close, not bit-equal
        assert abs(h["score"] - bf[h["image_id"]]) < 1e-4


def altered(name: str) -> bytes:
    """A copy of a photo altered in a way no stored image was: 70 % size, off-centre crop, JPEG quality 60."""
    img = photo(name)
    w, h = img.size
    img = img.crop((int(w * 0.03), int(h * 0.07), int(w * 0.95), int(h * 0.97)))
    img = img.resize((int(img.width * 0.7), int(img.height * 0.7)), Image.Resampling.BICUBIC)
    return jpeg(img, quality=60)


# --- text to image -----------------------------------------------------------------------------------------
def labelled_copy(name: str, quality: int = 83) -> bytes:
    """A photo as a user's copy of it: 80 % size, JPEG (bytes no other test uploads)."""
    img = photo(name)
    return jpeg(img.resize((int(img.width * 0.8), int(img.height * 0.8))), quality=quality)


async def test_text_search_on_the_default_model_matches_words_to_its_labels(
    client: httpx.AsyncClient,
) -> None:
    run = run_id()
    names = ("chelsea", "coffee", "camera")
    cat, coffee, camera = await upload_all(client, [labelled_copy(n) for n in names], {"run": run})

    # every image has words: its classifier's probable classes, most probable first, in the record
    records = {i: (await client.get(f"/images/{i}")).json() for i in (cat, coffee, camera)}
    cat_labels = [label["name"] for label in records[cat]["labels"]]
    assert cat_labels and set(cat_labels) <= {"tabby", "tiger cat", "egyptian cat", "lynx"}, records[cat]
    assert records[coffee]["labels"][0]["name"] == "espresso"
    assert all(0.1 <= label["score"] <= 1 for r in records.values() for label in r["labels"])

    mine = f"run:{run}"
    r = await client.get("/search", params={"q": "Cats", "filter": mine})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["mode"] == "labels" and {"tabby", "tiger cat", "persian cat"} <= set(body["labels"])
    assert [h["image_id"] for h in body["results"]] == [cat]  # the coffee and the tripod are not cats
    assert body["results"][0]["score"] == pytest.approx(
        sum(label["score"] for label in records[cat]["labels"]), abs=1e-3
    )
    r = await client.get("/search", params={"q": "an espresso", "filter": mine})
    assert [h["image_id"] for h in r.json()["results"]] == [coffee]

    # a query that names no label: 200, nothing, and why
    r = await client.get("/search", params={"q": "xylophonist"})
    assert r.status_code == 200 and r.json()["results"] == [] and "xylophonist" in r.json()["reason"]
    assert (await client.get("/search")).status_code == 400  # q is still required

    # a label is a filter like any other: the images like the coffee that are labelled tabby
    r = await client.get(
        f"/images/{coffee}/similar", params=[("filter", mine), ("filter", f"label:{cat_labels[0]}")]
    )
    assert r.status_code == 200 and [h["image_id"] for h in r.json()["results"]] == [cat], r.text


async def test_text_search_matches_brute_force_over_the_index(
    client: httpx.AsyncClient, settings: Settings, ops_nc: Client
) -> None:
    embed_text = text_embedder(settings)
    run = run_id()
    images = distinct_jpegs(10, seed=808) + [
        jpeg(photo(n), quality=88) for n in ("astronaut", "coffee", "rocket")
    ]
    async with active_model(ops_nc, client, CLIP_IMAGE):
        ids = await upload_all(client, images, {"run": run})
        vectors: dict[str, np.ndarray] = {}
        for image_id in indexed_ids(settings, CLIP_IMAGE):  # everything the clip index holds, not only ours
            model, vec = await embedding(client, image_id)
            assert model == CLIP_IMAGE
            vectors[image_id] = vec
        assert set(ids) <= set(vectors)
        mine = {i: vectors[i] for i in ids}

        for text in TEXTS:
            query = embed_text(text)
            r = await client.get("/search", params={"q": text, "k": 5})
            assert r.status_code == 200, r.text
            assert r.json()["mode"] == "embedding"  # a text tower: the labels are not used
            body = r.json()
            assert body["model"] == CLIP_IMAGE
            want = brute_force(query, vectors)
            assert_same_ranking(body["results"], want, 5)
            spread = want[0][1] - want[-1][1]
            print(f"text {text!r}: top {[round(s, 4) for _, s in want[:5]]}, spread {spread:.4f}")

            # the same with a filter: only this test's images, ranked the same way
            r = await client.get("/search", params={"q": text, "k": 4, "filter": f"run:{run}"})
            assert_same_ranking(r.json()["results"], brute_force(query, mine), 4)

            # pages: offset 2, k 3 is the slice [2:5] of the full ranking
            r = await client.get("/search", params={"q": text, "k": 3, "offset": 2})
            assert_same_ranking(r.json()["results"], want[2:], 3)
    back = await client.get("/search", params={"q": "a cat"})  # back to the default: its labels answer
    assert back.status_code == 200 and back.json()["mode"] == "labels", back.text


# --- query by an image that is not stored ------------------------------------------------------------------
async def test_query_by_upload_finds_the_original_and_stores_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    run = run_id()
    names = ("astronaut", "chelsea", "coffee", "rocket", "retina")
    # quality 93: bytes no other test uploads, so these records carry this test's metadata
    ids = await upload_all(client, [jpeg(photo(n), quality=93) for n in names], {"run": run})
    original = dict(zip(names, ids, strict=True))

    before = footprint(settings)
    for name in names:
        r = await client.post(
            "/search/image",
            files={"file": ("q.jpg", altered(name), "image/jpeg")},
            params={"k": 3, "filter": f"run:{run}"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == DEFAULT_MODEL
        assert body["results"][0]["image_id"] == original[name], (name, body)

        # without the filter: the original, or an image at least as close (another test's altered copy)
        top = (
            await client.post("/search/image", files={"file": ("q.jpg", altered(name), "image/jpeg")})
        ).json()
        assert top["results"][0]["score"] >= body["results"][0]["score"] - TIE
    bad = await client.post("/search/image", files={"file": ("q.jpg", b"not an image", "image/jpeg")})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "not_an_image"
    assert footprint(settings) == before


# --- near-duplicates ---------------------------------------------------------------------------------------
async def test_similar_groups_precision_and_recall_at_the_default_threshold(
    client: httpx.AsyncClient,
) -> None:
    """The cosine-only tier (``mode=similar``): every group says so."""
    images = sibling_set()
    ids = await upload_all(client, [data for _, _, data in images], {})
    group_of = dict(zip(ids, (g for g, _, _ in images), strict=True))

    groups: list[list[str]] = []
    cursor: str | None = ""
    pages = 0
    while cursor is not None:
        r = await client.get("/duplicates", params={"limit": 3, "cursor": cursor, "mode": "similar"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == DEFAULT_MODEL and {g["tier"] for g in body["groups"]} <= {"similar"}
        assert body["threshold"] == MeshConfig().near_duplicate_threshold
        assert all(g["size"] == len(g["image_ids"]) >= 2 for g in body["groups"])
        groups += [g["image_ids"] for g in body["groups"]]
        cursor, pages = body["next_cursor"], pages + 1
    assert len(groups) == body["total_groups"] and pages >= 2
    flat = [i for g in groups for i in g]
    assert len(flat) == len(set(flat)), "an image in two groups"

    mine = set(ids)
    predicted = {p for p in pair_set(groups) if p <= mine}
    truth = pair_set([[i for i in ids if group_of[i] == g] for g in set(group_of.values())])
    precision = len(predicted & truth) / len(predicted) if predicted else 1.0
    recall = len(predicted & truth) / len(truth)
    print(
        f"near-duplicate groups at threshold {body['threshold']}: pairwise precision {precision:.3f}, "
        f"recall {recall:.3f} ({len(truth)} sibling pairs among {len(ids)} images)"
    )
    assert precision >= 0.9 and recall >= 0.9

    # one image's near-duplicates: a range query, every score over the threshold, itself excluded
    astronaut = next(
        i for i, (g, v, _) in zip(ids, images, strict=True) if (g, v) == ("astronaut", "original")
    )
    r = await client.get(f"/images/{astronaut}/duplicates", params={"mode": "similar"})
    assert r.status_code == 200, r.text
    body = r.json()
    found = [h["image_id"] for h in body["results"]]
    assert {h["tier"] for h in body["results"]} == {"similar"}
    assert astronaut not in found and all(h["score"] >= body["threshold"] - TIE for h in body["results"])
    siblings = {i for i in ids if group_of[i] == "astronaut" and i != astronaut}
    assert len(siblings & set(found)) >= 3, body
    loose = (
        await client.get(
            f"/images/{astronaut}/duplicates", params={"threshold": 0.2, "k": 100, "mode": "similar"}
        )
    ).json()
    assert len(loose["results"]) > len(found)


def halves(name: str, quality: int) -> tuple[bytes, bytes]:
    """The left and right thirds of a photo: they look alike and share no region (never copies)."""
    img = photo(name)
    w, h = img.size
    return jpeg(img.crop((0, 0, w // 3, h)), quality), jpeg(img.crop((2 * w // 3, 0, w, h)), quality)


async def test_copies_are_told_apart_from_look_alikes(client: httpx.AsyncClient) -> None:
    """The default tier (``mode=copies``): the copy checker verifies look-alikes in the background, and only
    edited copies of one photo are grouped; parts of one photo or texture that share no region are not."""
    run = run_id()
    photos = ("astronaut", "coffee", "chelsea")
    images = [(g, v, d) for g, v, d in sibling_set(photos)]
    ids = await upload_all(client, [d for _, _, d in images], {"run": run})
    group_of = dict(zip(ids, (g for g, _, _ in images), strict=True))
    apart = [halves("brick", 81), halves("rocket", 82), halves("immunohistochemistry", 83)]
    apart_ids = [await upload_all(client, list(pair), {"run": run}) for pair in apart]

    async def all_checked() -> bool:
        for i in [*ids, *(x for pair in apart_ids for x in pair)]:
            r = await client.get(f"/images/{i}/duplicates")
            if r.status_code != 200 or not r.json()["checked"]:
                return False
        return True

    # the checker works through every image the session stored before these (its queue is oldest first)
    await wait_until("the copy checker verified every image", all_checked, timeout_s=300, every_s=1.0)
    groups: list[list[str]] = []
    cursor: str | None = ""
    while cursor is not None:
        r = await client.get("/duplicates", params={"limit": 50, "cursor": cursor})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["mode"] == "copies" and {g["tier"] for g in body["groups"]} <= {"copy"}
        groups += [g["image_ids"] for g in body["groups"]]
        cursor = body["next_cursor"]
    mine = set(ids)
    predicted = {p for p in pair_set(groups) if p <= mine}
    truth = pair_set([[i for i in ids if group_of[i] == g] for g in photos])
    precision = len(predicted & truth) / len(predicted) if predicted else 1.0
    recall = len(predicted & truth) / len(truth)
    similar = {
        p for p in pair_set(await similar_groups(client)) for pair in apart_ids if p == frozenset(pair)
    }
    print(
        f"copy groups: pairwise precision {precision:.3f}, recall {recall:.3f} ({len(truth)} copy pairs); "
        f"look-alike parts grouped as similar: {len(similar)} of {len(apart_ids)}, as copies: "
        f"{sum(frozenset(p) in pair_set(groups) for p in apart_ids)}"
    )
    assert precision == 1.0 and recall >= 0.9
    for left, right in apart_ids:  # parts that share no region are never copies
        assert frozenset((left, right)) not in pair_set(groups)
    # one image's copies, most similar first, each with its tier
    original = next(i for i, (g, v, _) in zip(ids, images, strict=True) if (g, v) == ("coffee", "original"))
    body = (await client.get(f"/images/{original}/duplicates")).json()
    assert body["checked"] and {h["tier"] for h in body["results"]} == {"copy"}
    found = set(h["image_id"] for h in body["results"]) & set(ids)  # earlier tests stored coffee copies too
    assert found <= {i for i in ids if group_of[i] == "coffee"} and len(found) >= 3
    assert [h["score"] for h in body["results"]] == sorted(
        (h["score"] for h in body["results"]), reverse=True
    )


async def test_a_verdict_that_outlived_its_image_groups_nothing(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """The copy checker can write a verdict as one of its images is deleted (the race a delete cannot close):
    the groups name stored images only, so the web page never asks for an image that answers 404."""
    (stored,) = await upload_all(client, distinct_jpegs(1, seed=int(run_id()[:6], 16)), {})
    ghost = uuid.uuid4().hex  # never stored, or deleted a moment ago
    p = settings.redis_prefix
    with redis.Redis.from_url(settings.redis_server_url) as r:
        r.hset(f"{p}:copies:{stored}", ghost, "1")
        r.hset(f"{p}:copies:{ghost}", stored, "1")
        try:
            groups, cursor = [], ""
            while cursor is not None:
                body = (await client.get("/duplicates", params={"limit": 200, "cursor": cursor})).json()
                groups += body["groups"]
                cursor = body["next_cursor"]
            assert all(ghost not in g["image_ids"] for g in groups)
            assert all(stored not in g["image_ids"] for g in groups)  # its only "copy" is gone
            assert (await client.get(f"/images/{stored}/duplicates")).json()["results"] == []
        finally:
            r.delete(f"{p}:copies:{ghost}")
            r.hdel(f"{p}:copies:{stored}", ghost)


async def similar_groups(client: httpx.AsyncClient) -> list[list[str]]:
    body = (await client.get("/duplicates", params={"limit": 1000, "mode": "similar"})).json()
    return [g["image_ids"] for g in body["groups"]]


async def every_similar_group(client: httpx.AsyncClient, threshold: float | None = None) -> list[list[str]]:
    """Every group of ``/duplicates?mode=similar``, page after page (at ``threshold``, else the kept one)."""
    groups: list[list[str]] = []
    cursor: str | None = ""
    while cursor is not None:
        params: dict[str, Any] = {"limit": 7, "cursor": cursor, "mode": "similar"}
        if threshold is not None:
            params["threshold"] = threshold
        r = await client.get("/duplicates", params=params)
        assert r.status_code == 200, r.text
        groups += [g["image_ids"] for g in r.json()["groups"]]
        cursor = r.json()["next_cursor"]
    return groups


def kept_status(settings: Settings, threshold: float) -> str:
    """The status of the groups the indexers keep for the default model at ``threshold`` (read in Redis)."""
    p = settings.redis_prefix
    with redis.Redis.from_url(settings.redis_server_url, decode_responses=True) as r:
        gen = r.hget(f"{p}:dup:kept", state_field(DEFAULT_MODEL, threshold))
        status = r.hget(f"{p}:dup:{gen}:meta", "status") if gen else None
    return str(status or "none")


async def test_similar_groups_are_kept_as_images_are_indexed_and_deleted(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """At the kept threshold, ``/duplicates?mode=similar`` pages the groups the indexers keep at index time
    (``actors/group_keeper.py``). They equal the groups computed afresh over the whole library (a hair above
    the threshold: another threshold is computed on demand), after uploads and after deletes."""
    cut = MeshConfig().near_duplicate_threshold
    await wait_until("the kept groups built", lambda: kept_status(settings, cut) == "ready", timeout_s=60)
    moon = photo("moon")
    ids = await upload_all(
        client,
        [jpeg(moon, quality=71), jpeg(flip(moon), quality=72), jpeg(colour_shift(moon), quality=73)],
        {},
    )
    kept = await every_similar_group(client)
    assert any(set(ids) <= set(g) for g in kept), kept
    assert kept == await every_similar_group(client, cut + 1e-9)

    for image_id in ids[1:]:  # the original's copies: it is left without its group
        assert (await client.delete(f"/images/{image_id}")).status_code == 204
    kept = await every_similar_group(client)
    assert not {i for g in kept for i in g} & set(ids[1:])
    assert kept == await every_similar_group(client, cut + 1e-9)
    assert kept_status(settings, cut) == "ready"  # the answers above came from the kept groups


# --- filters and pages -------------------------------------------------------------------------------------
async def test_filters_are_applied_by_the_index_and_pages_are_slices(client: httpx.AsyncClient) -> None:
    run = run_id()
    metas = [{"run": run, "color": "red" if i % 2 == 0 else "blue", "n": i} for i in range(8)]
    ids = await upload_all(client, distinct_jpegs(8, seed=909), metas)
    red = {i for i, m in zip(ids, metas, strict=True) if m["color"] == "red"}
    query = ids[0]  # red
    vectors = {i: (await embedding(client, i))[1] for i in ids}

    r = await client.get(f"/images/{query}/similar", params={"k": 3, "filter": [f"run:{run}", "color:red"]})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    # exactly k matching results: the index ranked only matching images (a post-filter of the global top 3
    # would come back short); and they are the brute-force top 3 among the red ones
    assert len(hits) == 3 and {h["image_id"] for h in hits} <= red - {query}
    assert_same_ranking(hits, brute_force(vectors[query], {i: vectors[i] for i in red - {query}}), 3)

    r = await client.get(f"/images/{query}/similar", params={"filter": [f"run:{run}", "n:5"]})
    assert [h["image_id"] for h in r.json()["results"]] == [ids[5]]  # numbers match their JSON text

    blue = await client.post(
        "/search/image",
        files={"file": ("q.jpg", distinct_jpegs(1, seed=909)[0], "image/jpeg")},
        params={"filter": [f"run:{run}", "color:blue"], "k": 10},
    )
    assert {h["image_id"] for h in blue.json()["results"]} == set(ids) - red

    # pages: [0:2] + [2:4] == [0:4]
    pages: dict[tuple[int, int], list[str]] = {}
    for k, offset in ((4, 0), (2, 0), (2, 2)):
        r = await client.get(
            f"/images/{query}/similar", params={"k": k, "offset": offset, "filter": f"run:{run}"}
        )
        pages[(k, offset)] = [h["image_id"] for h in r.json()["results"]]
    assert pages[(2, 0)] + pages[(2, 2)] == pages[(4, 0)] and len(pages[(4, 0)]) == 4

    # k above max_k is clamped (documented); offsets past the window are 400
    r = await client.get(f"/images/{query}/similar", params={"k": 100_000})
    assert r.status_code == 200 and len(r.json()["results"]) <= MeshConfig().max_k
    for bad in (
        {"offset": 10_001},
        {"offset": 9_995, "k": 10},
        {"filter": "nocolon"},
        {"filter": ["a:1", "a:2"]},
    ):
        r = await client.get(f"/images/{query}/similar", params=bad)
        assert r.status_code == 400, (bad, r.text)


# --- delete ------------------------------------------------------------------------------------------------
async def test_delete_removes_every_trace_and_is_idempotent(
    client: httpx.AsyncClient, settings: Settings, ops_nc: Client
) -> None:
    p = settings.redis_prefix
    data = distinct_jpegs(1, seed=1001)[0]
    first = await upload(client, data)
    assert first.status_code == 202
    image_id, sha = first.json()["image_id"], first.json()["sha256"]
    await wait_status(client, [image_id], {"done"})
    assert redis_keys(settings, f"{p}:vec:*:{image_id}") and redis_keys(settings, f"{p}:sha:{sha}")

    events: list[contract.ImageEvent] = []
    seen = asyncio.Event()

    async def on_event(msg: Any) -> None:
        events.append(contract.decode(msg.data, contract.ImageEvent))
        seen.set()

    sub = await ops_nc.subscribe(contract.event_subject(contract.Status.DELETED), cb=on_event)
    try:
        r = await client.delete(f"/images/{image_id}")
        assert r.status_code == 204, r.text
        await asyncio.wait_for(seen.wait(), timeout=10)
    finally:
        await sub.unsubscribe()
    assert [(e.image_id, e.status) for e in events] == [(image_id, contract.Status.DELETED)]

    for path in ("", "/similar", "/content", "/duplicates"):
        assert (await client.get(f"/images/{image_id}{path}")).status_code == 404, path
    assert redis_keys(settings, f"{p}:*{image_id}*") == []  # record, history, embeddings, vectors
    assert redis_keys(settings, f"{p}:sha:{sha}") == []
    s3 = s3_client(settings)
    assert s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=object_key(image_id)).get("KeyCount") == 0
    similar = await client.post(
        "/search/image", files={"file": ("q.jpg", data, "image/jpeg")}, params={"k": 50}
    )
    assert image_id not in {h["image_id"] for h in similar.json()["results"]}

    again = await client.delete(f"/images/{image_id}")
    assert again.status_code == 404 and again.json()["error"]["code"] == "not_found"

    # the sha claim went with it: the same bytes are a new image now
    reborn = await upload(client, data)
    assert reborn.status_code == 202 and reborn.json()["image_id"] != image_id
    await wait_status(client, [reborn.json()["image_id"]], {"done"})
    assert (await client.delete(f"/images/{reborn.json()['image_id']}")).status_code == 204


async def test_a_queued_job_does_not_resurrect_a_deleted_image(
    client: httpx.AsyncClient, settings: Settings, mesh: Stack, ops_nc: Client
) -> None:
    p = settings.redis_prefix
    mesh.stop_service(jobs_service(settings))
    try:
        r = await upload(client, distinct_jpegs(1, seed=1102)[0])
        assert r.status_code == 202
        image_id = r.json()["image_id"]
        assert (await client.delete(f"/images/{image_id}")).status_code == 204
    finally:
        mesh.start_service(jobs_service(settings))

    # the coordinator has taken and acknowledged every queued job, this one included: it acks a job last
    # (under Temporal: every image workflow has closed)
    await wait_jobs_idle(ops_nc, settings)
    assert (await client.get(f"/images/{image_id}")).status_code == 404
    assert redis_keys(settings, f"{p}:*{image_id}*") == []
    assert image_id not in indexed_ids(settings, DEFAULT_MODEL)
    s3 = s3_client(settings)
    assert s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=object_key(image_id)).get("KeyCount") == 0
