"""Two adjacent releases on one stack: data the previous release wrote is served by this one, and processes of
both releases work side by side.

The previous release (0.2.0) is the code committed as ``tests/fixtures/release-0.2.0.tar.gz``, extracted once
per session and run by this project's interpreter with only the extracted folder importable
(``tests/old_release.py``: ``python -P``, ``PYTHONPATH`` and ``cwd`` = that folder, this tree's editable install
removed; each old process says which file it runs and the harness checks it lies in the release; an old gateway
reports 0.2.0 as its version). This module has its own stack: servers and Triton from this tree, set up as
0.2.0's start-up did (streams made by the old code, no migration); the mesh processes of this tree start when a
test starts them (``stack.start_service``).

* ``test_data_written_by_the_previous_release_is_served_by_this_one``: the old config, indexer, coordinator and
  gateway store and index images (records without a ``layout`` stamp); they stop; ``mesh migrate`` stamps them
  (a second run has nothing to do); this release's processes start on the same stores; every old image reads the same through the new gateway (its
  record, its bytes, its thumbnail), its similar images and the searches answer as before, new uploads reach
  ``done``, and the similar images of new near-copies are the old originals.
* ``test_two_adjacent_releases_work_side_by_side``: this release's gateway, config, indexer and coordinator and
  an old gateway and coordinator (their own ports; one durable consumer, so the coordinators share the jobs)
  run at once; uploads through either gateway reach ``done``, read the same through both, and find each other
  as similar images. Then each release's coordinator alone works the jobs the other release's gateway
  publishes, and that gateway's ``GET /events`` relays the other release's events: the job messages, records
  and events of either release are accepted by the other (the contract's msgspec Structs ignore unknown fields,
  ``actors/contract/messages.py``).

Everything asserted is what a user sees through the REST API. Timeouts are generous: Triton runs on CPU.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from PIL import Image

from actors.contract import FIRST_LAYOUT, LAYOUT
from actors.settings import package_version
from ops.stack.supervisor import Stack, settings_env
from tests.helpers import TERMINAL, upload_id, wait_status, wait_until
from tests.images import distinct_jpegs, flip, jpeg
from tests.old_release import (
    RELEASE,
    extract_release,
    old_process,
    own_ports,
    previous_release_stack,
    release_version,
)

NEW = ("config", "indexer", "coordinator", "gateway")  # this release's mesh processes, in start order
START_TIMEOUT_S = 240.0
DONE_TIMEOUT_S = 300.0
# what may differ in an image's view once it was read again later: nothing a user asked for
CHANGING = frozenset({"updated_at", "history"})


# --- fixtures -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def release_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The previous release, extracted once per session (``OLD_RELEASE_DIR``: a folder extracted already,
    e.g. a hand-edited copy to see these tests fail on a planted incompatibility)."""
    given = os.environ.get("OLD_RELEASE_DIR")
    folder = Path(given) if given else extract_release(tmp_path_factory)
    assert release_version(folder) == RELEASE
    return folder


@pytest.fixture(scope="module")
def versions_stack(
    tmp_path_factory: pytest.TempPathFactory, models_dir: Path, release_dir: Path
) -> Iterator[Stack]:
    with previous_release_stack(
        tmp_path_factory.mktemp("versions"),
        release_dir,
        timeout_s=START_TIMEOUT_S,
        model_repository=models_dir,
        models="efficientnet_lite0",
    ) as stack:
        yield stack


# --- helpers ------------------------------------------------------------------------------------------------
def migrate_cli(stack: Stack) -> dict[str, Any]:
    """``mesh migrate --json`` as an operator runs it against the stack; its result."""
    env = {**os.environ, **settings_env(stack.settings)}
    done = subprocess.run(
        [sys.executable, "-m", "ops.cli", "migrate", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def layouts(stack: Stack, ids: list[str]) -> dict[str, str | None]:
    """Each record's stored ``layout`` field (None: no stamp, as 0.2.0 wrote it)."""
    with redis.Redis.from_url(stack.settings.redis_server_url, decode_responses=True) as r:
        return {i: r.hget(f"{stack.settings.redis_prefix}:image:{i}", "layout") for i in ids}


def start_new(stack: Stack, names: tuple[str, ...] = NEW) -> None:
    """Start this release's processes under the stack's supervisord (a running one stays as it is)."""
    for name in names:
        stack.start_service(name, timeout_s=START_TIMEOUT_S)


def stop_new(stack: Stack, names: tuple[str, ...] = NEW) -> None:
    for name in reversed(names):
        stack.stop_service(name)


def gateway_url(stack: Stack) -> str:
    return f"http://{stack.settings.host}:{stack.settings.gateway_port}"


def near_copy(data: bytes) -> bytes:
    """The image a little smaller and saved again: other bytes, nearly the same picture."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return jpeg(img.resize((img.width * 9 // 10, img.height * 9 // 10)), quality=75)


def flipped(data: bytes) -> bytes:
    return jpeg(flip(Image.open(io.BytesIO(data)).convert("RGB")))


async def get_json(client: httpx.AsyncClient, path: str, **params: Any) -> Any:
    r = await client.get(path, params=params)
    assert r.status_code == 200, f"GET {client.base_url}{path} {params}: {r.status_code} {r.text[:300]}"
    return r.json()


async def mesh_status(client: httpx.AsyncClient) -> dict[str, Any]:
    return dict(await get_json(client, "/status"))


async def similar(client: httpx.AsyncClient, image_id: str, k: int = 10) -> dict[str, Any]:
    return dict(await get_json(client, f"/images/{image_id}/similar", k=k))


async def search_image(client: httpx.AsyncClient, data: bytes, k: int = 10) -> dict[str, Any]:
    r = await client.post("/search/image", files={"file": ("q.jpg", data, "image/jpeg")}, params={"k": k})
    assert r.status_code == 200, f"POST /search/image: {r.status_code} {r.text[:300]}"
    return dict(r.json())


def ranking(reply: dict[str, Any]) -> list[str]:
    return [hit["image_id"] for hit in reply["results"]]


def assert_same_results(before: dict[str, Any], after: dict[str, Any], what: str) -> None:
    """The same images in the same order with the same scores (a reply's other fields may be added to)."""
    assert ranking(after) == ranking(before), f"{what}: {ranking(before)} then {ranking(after)}"
    for b, a in zip(before["results"], after["results"], strict=True):
        assert a["score"] == pytest.approx(b["score"], abs=1e-4), f"{what}: {b} then {a}"
    for key in before.keys() - {"results"}:
        assert after.get(key) == before[key], f"{what}: {key} was {before[key]!r}, is {after.get(key)!r}"


def assert_same_view(before: dict[str, Any], after: dict[str, Any], what: str) -> None:
    """Every field the earlier view had, with the same value (a new release may add fields); the earlier
    history is where the later one starts."""
    differ = {
        k: (v, after.get(k, "(missing)"))
        for k, v in before.items()
        if k not in CHANGING and after.get(k, "(missing)") != v
    }
    assert not differ, f"{what}: fields that changed (before, after): {differ}"
    assert after["history"][: len(before["history"])] == before["history"], f"{what}: history rewritten"


async def wait_done(client: httpx.AsyncClient, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Until every image is done or error, through this gateway; then every one must be done."""
    views = await wait_status(client, ids, TERMINAL, timeout_s=DONE_TIMEOUT_S)
    failed = {i: v["error"] for i, v in views.items() if v["status"] != "done"}
    assert not failed, f"{client.base_url}: images in error: {failed}"
    return views


async def read_alike(gateways: dict[str, httpx.AsyncClient], ids: list[str]) -> None:
    """Every image is done and reads the same through each gateway."""
    views = {name: await wait_done(client, ids) for name, client in gateways.items()}
    first, *others = views
    for other in others:
        for i in ids:
            assert_same_view(views[first][i], views[other][i], f"image {i} ({first} gateway, then {other})")


def top_hit(reply: dict[str, Any]) -> str | None:
    return reply["results"][0]["image_id"] if reply["results"] else None


async def upload_all(client: httpx.AsyncClient, images: list[bytes], run: str, where: str) -> list[str]:
    return [
        await upload_id(client, data, f"{where}-{n}.jpg", {"run": run, "n": n, "via": where})
        for n, data in enumerate(images)
    ]


async def events_until_done(
    lines: AsyncIterator[str], ids: list[str], timeout_s: float
) -> dict[str, list[str]]:
    """Read a ``GET /events`` stream until every image in ``ids`` had its ``done`` event; each image's states
    in the order they came."""
    seen: dict[str, list[str]] = {i: [] for i in ids}
    event = ""
    async with asyncio.timeout(timeout_s):
        async for line in lines:
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                data = json.loads(line.removeprefix("data: "))
                assert data["status"] == event, f"event {event!r} carries {data}"
                if data["image_id"] in seen:
                    seen[data["image_id"]].append(event)
            if all("done" in states for states in seen.values()):
                return seen
    raise AssertionError(f"the event stream ended before every image was done: {seen}")


async def uploads_followed_by_events(
    uploads: httpx.AsyncClient, watcher: httpx.AsyncClient, images: list[bytes], run: str, where: str
) -> dict[str, list[str]]:
    """Upload through ``uploads`` while ``watcher``'s ``GET /events`` is open; the states each image went
    through as ``watcher`` relayed them, up to ``done``."""
    timeout = httpx.Timeout(30, read=None)
    async with watcher.stream("GET", "/events", timeout=timeout) as r:
        assert r.status_code == 200, await r.aread()
        lines = r.aiter_lines()
        assert (await anext(lines)).startswith(": connected")
        ids = await upload_all(uploads, images, run, where)
        return await events_until_done(lines, ids, DONE_TIMEOUT_S)


def jobs_finished(metrics: str) -> float:
    """``mesh_jobs_total`` summed over outcomes, from a coordinator's ``/metrics``."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("mesh_jobs_total{")
    )


async def coordinator_jobs(url: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=10) as c:
        r = await c.get("/metrics")
        assert r.status_code == 200, r.text[:200]
        return jobs_finished(r.text)


# --- the tests ----------------------------------------------------------------------------------------------
async def test_data_written_by_the_previous_release_is_served_by_this_one(
    versions_stack: Stack, release_dir: Path
) -> None:
    stack = versions_stack
    stop_new(stack)  # from the old release alone, whatever ran before
    run = uuid.uuid4().hex[:8]
    images = distinct_jpegs(6, seed=2002)
    query = flipped(images[0])  # a query by image, never stored

    with ExitStack() as old:
        procs = {name: old.enter_context(old_process(name, stack, release_dir)) for name in NEW}
        async with httpx.AsyncClient(base_url=procs["gateway"].url, timeout=30) as client:
            assert (await mesh_status(client))["version"] == RELEASE
            ids = await upload_all(client, images, run, "old")
            before = await wait_done(client, ids)
            assert layouts(stack, ids) == {i: None for i in ids}  # the previous layout: no stamp
            similar_before = {i: await similar(client, i) for i in ids}
            by_image_before = await search_image(client, query)
            # a text search in labels mode (EfficientNet's classes): the top label of a labelled image
            label = next((before[i]["labels"][0]["name"] for i in ids if before[i]["labels"]), None)
            by_text_before = await get_json(client, "/search", q=label) if label else None
            thumbnails = [i for i in ids if before[i]["thumbnail_url"]]
            for i in thumbnails:
                assert (await client.get(f"/images/{i}/thumbnail")).status_code == 200
    print(f"\nold release stored {len(ids)} images; label searched: {label!r}; thumbnails: {len(thumbnails)}")

    # the upgrade: mesh migrate stamps what 0.2.0 wrote; a second run has nothing left to do
    first = migrate_cli(stack)
    assert first["found"] == FIRST_LAYOUT and first["complete"] and first["stamped"] >= len(ids)
    assert layouts(stack, ids) == {i: str(LAYOUT) for i in ids}
    again = migrate_cli(stack)
    assert (again["found"], again["stamped"], again["steps"]) == (LAYOUT, 0, [])

    start_new(stack)
    async with httpx.AsyncClient(base_url=gateway_url(stack), timeout=30) as client:
        assert (await mesh_status(client))["version"] == package_version()
        for n, i in enumerate(ids):
            after = await get_json(client, f"/images/{i}")
            assert after["status"] == "done"
            assert_same_view(before[i], after, f"image {i}")
            added = sorted(after.keys() - before[i].keys())
            r = await client.get(f"/images/{i}/content", params={"presigned": False})
            assert r.status_code == 200 and r.content == images[n], f"content of {i}: {r.status_code}"
        print(f"fields the new gateway adds to an old image's view: {added}")
        for i in thumbnails:
            r = await client.get(f"/images/{i}/thumbnail")
            assert r.status_code == 200, f"thumbnail of {i}: {r.status_code} {r.text[:200]}"
        for i in ids:
            assert_same_results(similar_before[i], await similar(client, i), f"similar to {i}")
        assert_same_results(by_image_before, await search_image(client, query), "search by image")
        if by_text_before is not None:
            after_text = await get_json(client, "/search", q=label)
            assert_same_results(by_text_before, after_text, f"search {label!r}")

        # new uploads: near-copies of three old images, and two new pictures
        copies = [near_copy(d) for d in images[:3]]
        fresh = distinct_jpegs(2, seed=2003)
        new_ids = await upload_all(client, copies + fresh, run, "new")
        await wait_done(client, new_ids)
        for copy_id, old_id in zip(new_ids, ids[:3], strict=False):
            assert top_hit(await similar(client, copy_id)) == old_id, f"similar to the copy of {old_id}"
            assert top_hit(await similar(client, old_id)) == copy_id, f"similar to {old_id}"


async def test_two_adjacent_releases_work_side_by_side(versions_stack: Stack, release_dir: Path) -> None:
    stack = versions_stack
    start_new(stack)
    run = uuid.uuid4().hex[:8]
    bases = distinct_jpegs(10, seed=3003)
    copies = [near_copy(b) for b in bases]
    new_coordinator = f"http://{stack.settings.host}:{stack.settings.coordinator_http_port}"

    with old_process("gateway", stack, release_dir, **own_ports("gateway")) as old_gw:
        async with (
            httpx.AsyncClient(base_url=gateway_url(stack), timeout=30) as new,
            httpx.AsyncClient(base_url=old_gw.url, timeout=30) as old,
        ):
            gateways = {"new": new, "old": old}
            with old_process("coordinator", stack, release_dir, **own_ports("coordinator")) as old_co:
                assert (await mesh_status(old))["version"] == RELEASE
                assert (await mesh_status(new))["version"] == package_version()
                for name, client in gateways.items():  # both coordinators answer on the mesh (NATS micro)

                    async def two_coordinators(client: httpx.AsyncClient = client) -> bool:
                        return bool((await mesh_status(client))["services"].get("coordinator") == 2)

                    await wait_until(
                        f"the {name} gateway's /status counting 2 coordinators", two_coordinators
                    )
                jobs_before = {
                    "new": await coordinator_jobs(new_coordinator),
                    "old": await coordinator_jobs(old_co.url),
                }

                # interleaved: the original through one gateway, its near-copy through the other
                base_ids, copy_ids, via = [], [], {}
                for n in range(len(bases)):
                    first, second = ("new", "old") if n % 2 == 0 else ("old", "new")
                    base_ids.append(await upload_id(gateways[first], bases[n], f"b{n}.jpg", {"run": run}))
                    copy_ids.append(await upload_id(gateways[second], copies[n], f"c{n}.jpg", {"run": run}))
                    via[base_ids[-1]], via[copy_ids[-1]] = first, second
                ids = base_ids + copy_ids
                await read_alike(gateways, ids)
                for name, client in gateways.items():
                    for b, c in zip(base_ids, copy_ids, strict=True):
                        assert top_hit(await similar(client, c)) == b, (
                            f"{name} gateway: similar to {c} (via {via[c]})"
                        )
                        assert top_hit(await similar(client, b)) == c, (
                            f"{name} gateway: similar to {b} (via {via[b]})"
                        )
                for i in ids:
                    assert ranking(await similar(new, i)) == ranking(await similar(old, i)), f"similar to {i}"
                share = {
                    "new": await coordinator_jobs(new_coordinator) - jobs_before["new"],
                    "old": await coordinator_jobs(old_co.url) - jobs_before["old"],
                }
                print(f"\njobs finished side by side, by coordinator: {share}")

                # the old coordinator alone: the jobs the new gateway publishes, the events on the new gateway
                stack.stop_service("coordinator")
                try:
                    seen = await uploads_followed_by_events(
                        new, new, distinct_jpegs(2, seed=3004), run, "new"
                    )
                finally:
                    stack.start_service("coordinator", timeout_s=START_TIMEOUT_S)
                print(f"new gateway, old coordinator: {seen}")
                await read_alike(gateways, list(seen))

            # the new coordinator alone: the jobs the old gateway publishes, the events on the old gateway
            seen = await uploads_followed_by_events(old, old, distinct_jpegs(2, seed=3005), run, "old")
            print(f"old gateway, new coordinator: {seen}")
            await read_alike(gateways, list(seen))
