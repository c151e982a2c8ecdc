"""The web page as a library, in a real browser against the whole mesh: the grid with infinite scroll, filter
chips, an image's view and delete; uploads of a folder through a bounded queue with live status from the event
stream, and cancel; search by a dropped image (nothing stored); the groups of copies and deleting the extras.
Screenshots of the library, a search and the duplicates view are saved under ``var/screenshots``."""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np
from PIL import Image

from tests.e2e.browser import DONE_TIMEOUT_MS, screenshot_path
from tests.helpers import upload, wait_status, wait_until
from tests.images import colour_shift, crop, distinct_jpegs, jpeg

if TYPE_CHECKING:
    from playwright.async_api import Page, Request, Route


async def upload_run(
    client: httpx.AsyncClient, images: list[bytes], metadata: list[dict[str, str]]
) -> list[str]:
    ids = []
    for data, meta in zip(images, metadata, strict=True):
        r = await upload(client, data, "x.jpg", metadata=meta)
        assert r.status_code in (200, 202), r.text
        ids.append(r.json()["image_id"])
    await wait_status(client, ids, {"done"}, timeout_s=180)
    return ids


async def tile_ids(page: Page) -> list[str]:
    ids: list[str] = await page.eval_on_selector_all(
        "#library-grid .tile", "els => els.map(e => e.dataset.imageId)"
    )
    return ids


async def test_the_library_scrolls_filters_and_deletes(
    page: Page, client: httpx.AsyncClient, console_errors: list[str]
) -> None:
    from playwright.async_api import expect

    run = uuid.uuid4().hex[:10]
    half = [f"{run}-a" if i < 30 else f"{run}-b" for i in range(55)]
    ids = await upload_run(
        client, distinct_jpegs(55, size=(72, 54), seed=5151), [{"run": run, "half": h} for h in half]
    )

    await page.goto(f"/?filter=run:{run}")
    grid = page.locator("#library-grid .tile")
    await expect(grid).to_have_count(48)  # the first page, newest first
    assert (await tile_ids(page))[:3] == ids[::-1][:3]
    await page.locator("#library-sentinel").scroll_into_view_if_needed()  # infinite scroll: the next page
    await expect(grid).to_have_count(55)
    await expect(page.locator("#library-grid")).to_have_attribute("data-complete", "true")
    assert sorted(await tile_ids(page)) == sorted(ids)
    await page.screenshot(path=str(screenshot_path("library")), full_page=False)

    # an image's view: its metadata as chips that filter the library
    first = ids[0]
    await page.locator(f'#library-grid .tile[data-image-id="{first}"]').click()
    viewer = page.locator("#viewer")
    await expect(viewer).to_be_visible()
    await viewer.locator(f'.chip[data-filter="half:{run}-a"]').click()
    await expect(page.locator("#filters .chip")).to_have_count(2)
    await expect(grid).to_have_count(30)
    assert "filter=half" in page.url
    await page.locator(f'#filters .chip[data-filter="run:{run}"]').click()  # remove a filter
    await expect(page.locator("#filters .chip")).to_have_count(1)
    await expect(grid).to_have_count(30)  # the half tag is unique to this run

    # delete from the view
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    await page.locator(f'#library-grid .tile[data-image-id="{first}"]').click()
    await viewer.get_by_role("button", name="Delete").click()
    await expect(viewer).to_be_hidden()
    await expect(grid).to_have_count(29)
    assert (await client.get(f"/images/{first}")).status_code == 404
    assert console_errors == []


async def test_a_folder_uploads_through_a_bounded_queue_with_live_status(
    page: Page, client: httpx.AsyncClient, console_errors: list[str], tmp_path: Path
) -> None:
    from playwright.async_api import expect

    folder = tmp_path / "holiday"
    (folder / "day2").mkdir(parents=True)
    images = distinct_jpegs(7, size=(80, 60), seed=int(uuid.uuid4().int % 100_000))
    for i, data in enumerate(images):
        (folder / ("day2" if i >= 5 else "") / f"img{i}.jpg").write_bytes(data)
    (folder / "notes.txt").write_text("not an image")
    in_flight, most, gets = 0, 0, []

    async def slow_upload(route: Route, request: Request) -> None:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.3)  # long enough that a queue without a bound would have them all in flight
        try:
            await route.continue_()
        finally:
            in_flight -= 1

    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.url) if r.url.endswith("/events") else None)
    page.on("request", lambda r: gets.append(r.url) if re.search(r"/images/[0-9a-f]{32}$", r.url) else None)
    await page.route(re.compile(r"/images/upload$"), slow_upload)
    await page.goto("/")
    await page.set_input_files("#folder-input", str(folder))  # the folder chooser (webkitdirectory)
    cards = page.locator(".upload")
    await expect(cards).to_have_count(7)  # the text file was left out
    await expect(page.locator("#queue-status")).to_have_text("7 of 7 sent")
    for i in range(7):
        await expect(cards.nth(i)).to_have_attribute("data-status", "done", timeout=DONE_TIMEOUT_MS)
    assert 1 < most <= 3, most  # a few at a time
    assert streams, "the page did not open the event stream"
    names = set(await page.locator(".upload .name").all_inner_texts())
    assert "holiday/day2/img6.jpg" in names
    # live status came from the stream: once done, nothing polls the records
    settled = len(gets)
    await page.wait_for_timeout(2000)  # a poller would ask again within this time (it asks every <= 3 s)
    assert len(gets) == settled, gets[settled:]
    assert console_errors == []


async def test_cancel_stops_the_uploads_not_yet_sent(
    page: Page, client: httpx.AsyncClient, console_errors: list[str]
) -> None:
    from playwright.async_api import FilePayload, expect

    sent: list[str] = []
    release = asyncio.Event()

    async def held(route: Route, request: Request) -> None:
        sent.append(request.url)
        await release.wait()
        await route.continue_()

    await page.route(re.compile(r"/images/upload$"), held)
    await page.goto("/")
    files: list[FilePayload] = [
        {"name": f"c{i}.jpg", "mimeType": "image/jpeg", "buffer": d}
        for i, d in enumerate(distinct_jpegs(9, size=(40, 30), seed=int(uuid.uuid4().int % 100_000)))
    ]
    await page.set_input_files("#file-input", files=files)
    await wait_until("three uploads in flight", lambda: _true(len(sent) == 3), timeout_s=10, every_s=0.1)
    await page.get_by_role("button", name="Cancel").click()
    release.set()
    cards = page.locator(".upload")
    await expect(cards).to_have_count(3)  # the six queued ones never started
    await expect(page.locator(".upload .badge", has_text="cancelled")).to_have_count(3)
    await expect(page.locator("#queue-status")).to_contain_text("3 refused or failed")
    assert len(sent) == 3
    assert all("Failed to load" in e or "abort" in e.lower() for e in console_errors), console_errors


async def _true(value: bool) -> bool:
    return value


async def test_search_by_a_dropped_image_stores_nothing(
    page: Page, client: httpx.AsyncClient, console_errors: list[str]
) -> None:
    from playwright.async_api import expect

    # a picture like no other the session stores (coloured noise), and a crop of it as the query (not stored)
    rng = np.random.default_rng(int(uuid.uuid4().int % 100_000))
    blocks = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    picture = Image.fromarray(blocks).resize((320, 240), Image.Resampling.NEAREST)
    ids = await upload_run(client, [jpeg(picture, quality=93)], [{"run": uuid.uuid4().hex[:8]}])
    newest = (await client.get("/images", params={"limit": 1})).json()["images"][0]["image_id"]
    query = jpeg(crop(picture), quality=66)
    await page.goto("/")
    await page.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
            const zone = document.getElementById("image-search-zone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
            }
        }""",
        [base64.b64encode(query).decode(), "query.jpg"],
    )
    await expect(page.locator("#results")).to_have_attribute("data-mode", "image")
    await expect(page.locator(f'#grid .result[data-image-id="{ids[0]}"]')).to_be_visible()
    await expect(page.locator("#results-status")).to_contain_text("it was not stored")
    after = (await client.get("/images", params={"limit": 1})).json()["images"][0]["image_id"]
    assert after == newest  # nothing recorded
    assert console_errors == []


async def test_the_search_box_says_why_it_is_off(page: Page, console_errors: list[str]) -> None:
    """A model with neither a text tower nor labels: the gateway answers 400 no_text_tower (played here: the
    session's models all have one or the other)."""
    from playwright.async_api import expect

    async def no_text(route: Route, request: Request) -> None:
        body = {
            "error": {
                "code": "no_text_tower",
                "message": "the active model m has no text tower and no labels",
            }
        }
        await route.fulfill(status=400, json=body)

    await page.route(re.compile(r"/search\?q=probe"), no_text)
    await page.goto("/")
    await expect(page.locator("#search-disabled")).to_contain_text("no text tower and no labels")
    await expect(page.get_by_role("searchbox", name="Search images by words")).to_be_disabled()
    assert all("400" in e for e in console_errors), console_errors


async def test_the_duplicates_view_groups_copies_and_deletes_the_extras(
    page: Page, client: httpx.AsyncClient, console_errors: list[str]
) -> None:
    from playwright.async_api import expect

    # a picture no other test stores (other tests' photo copies would join its group): coloured blocks
    rng = np.random.default_rng(int(uuid.uuid4().int % 100_000))
    original = Image.fromarray(rng.integers(0, 256, (30, 30, 3), dtype=np.uint8)).resize((600, 600))
    run = uuid.uuid4().hex[:8]
    ids = await upload_run(
        client,
        [
            jpeg(original, quality=91),
            jpeg(crop(original), quality=70),
            jpeg(colour_shift(original), quality=72),
        ],
        [{"run": run}] * 3,
    )

    async def checked() -> bool:
        bodies = [(await client.get(f"/images/{i}/duplicates")).json() for i in ids]
        found = {h["image_id"] for h in bodies[0]["results"]}
        return all(b.get("checked") for b in bodies) and set(ids[1:]) <= found

    # the checker works through every image the session stored before these (its queue is oldest first)
    await wait_until("the copies were verified", checked, timeout_s=300, every_s=1.0)
    page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
    await page.goto("/?view=duplicates")
    group = page.locator(f'#duplicate-groups .group[data-image-ids~="{ids[0]}"]')
    await expect(group).to_be_visible()
    assert set((await group.get_attribute("data-image-ids") or "").split()) == set(ids)
    await expect(group.locator(".badge")).to_have_text("copy")
    # as a user would: the group scrolled into view (its thumbnails load lazily) and its pictures on screen
    # before the extras are deleted (a thumbnail still loading when its image goes answers 404)
    await group.scroll_into_view_if_needed()
    await page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)",
        arg=f'#duplicate-groups .group[data-image-ids~="{ids[0]}"] img',
    )
    await page.screenshot(path=str(screenshot_path("duplicates")), full_page=False)
    await group.get_by_role("button", name="Delete the 2 other copies").click()
    await expect(group).to_have_count(0)
    statuses = [(await client.get(f"/images/{i}")).status_code for i in ids]
    assert statuses == [200, 404, 404]  # the largest (the original, 600 x 600, least compressed) is kept
    # the page lists every group of the session: other tests' images whose objects they removed on purpose
    # (the reconciler's repairs) may fail to load; none of this test's, and no script error
    mine = [e for e in console_errors if e.startswith("pageerror") or any(i in e for i in ids)]
    assert mine == [], console_errors
