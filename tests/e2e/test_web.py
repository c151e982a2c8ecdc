"""The gateway's web page in a real browser (headless Chromium driven by Playwright) against the whole mesh.

Chromium comes from Debian's ``chromium`` package (Playwright's own browser download cannot work here); a
missing browser fails the test rather than skipping it, so CI cannot pass without having run it.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.e2e.browser import DONE_TIMEOUT_MS, screenshot_path
from tests.helpers import upload, wait_status
from tests.images import colour_shift, crop, flip, jpeg, photo

if TYPE_CHECKING:
    from playwright.async_api import FilePayload, Page, Request, Route


async def upload_neighbours(client: httpx.AsyncClient) -> list[str]:
    """Three altered copies of one photo, indexed; another test may have sent the same bytes (a duplicate)."""
    original = photo("chelsea")
    ids = []
    for name, data in (
        ("original", jpeg(original)),
        ("crop", jpeg(crop(original))),
        ("colour", jpeg(colour_shift(original))),
    ):
        r = await upload(client, data, f"chelsea-{name}.jpg")
        assert r.status_code in (200, 202), r.text
        ids.append(r.json()["image_id"])
    await wait_status(client, ids, {"done"})
    return ids


async def grid(page: Page) -> list[tuple[str, float]]:
    """The similar grid as a user sees it: (image id, score shown), in page order."""
    items: list[dict[str, Any]] = await page.eval_on_selector_all(
        "#grid .result",
        "els => els.map(e => ({id: e.dataset.imageId, shown: e.querySelector('.score').textContent}))",
    )
    return [(i["id"], float(i["shown"])) for i in items]


async def thumbnails_loaded(page: Page) -> None:
    await page.wait_for_function(
        "() => { const imgs = [...document.querySelectorAll('#grid img, #query-thumb')];"
        " return imgs.length > 1 && imgs.every(i => i.complete && i.naturalWidth > 0); }"
    )


async def test_upload_follow_status_and_browse_similar(
    page: Page, client: httpx.AsyncClient, console_errors: list[str], tmp_path: Path
) -> None:
    from playwright.async_api import expect

    neighbours = await upload_neighbours(client)
    await page.goto("/")
    await expect(page.get_by_role("heading", name="Image similarity mesh")).to_be_visible()

    # a copy of the same photo that no other test uploads, so it goes through the whole pipeline
    query = jpeg(flip(photo("chelsea")), quality=80)
    chosen: FilePayload = {"name": "chelsea-flipped.jpg", "mimeType": "image/jpeg", "buffer": query}
    await page.set_input_files("#file-input", files=[chosen])
    card = page.locator(".upload").first
    await expect(card).to_have_attribute("data-status", "done", timeout=DONE_TIMEOUT_MS)
    await expect(card.locator(".badge")).to_have_text("done")
    query_id = await card.get_attribute("data-image-id")
    assert query_id
    history = await card.locator(".history li.state .label").all_inner_texts()
    assert history[0] == "pending" and history[-1] == "done", history

    # the newest upload's neighbours appear by themselves, best first, with scores
    results = page.locator("#results")
    await expect(results).to_have_attribute("data-query-id", query_id)
    await expect(page.locator("#grid .result").first).to_be_visible()
    shown = await grid(page)
    assert set(neighbours) <= {i for i, _ in shown}, shown
    assert query_id not in {i for i, _ in shown}
    scores = [s for _, s in shown]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1.0005, scores
    await thumbnails_loaded(page)

    # choosing a result searches from it
    target = neighbours[1]
    await page.locator(f'#grid .result[data-image-id="{target}"]').click()
    await expect(results).to_have_attribute("data-query-id", target)
    await expect(page.locator(f'#grid .result[data-image-id="{query_id}"]')).to_be_visible()
    shown = await grid(page)
    assert target not in {i for i, _ in shown}
    assert {neighbours[0], neighbours[2]} <= {i for i, _ in shown}, shown
    assert f"image={target}" in page.url
    await expect(page.locator("#query-id")).to_have_text(target)
    await thumbnails_loaded(page)

    shot = tmp_path / "web.png"
    await page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")

    # back goes to the previous search
    await page.go_back()
    await expect(results).to_have_attribute("data-query-id", query_id)
    assert console_errors == []


async def test_drag_and_drop_upload(page: Page, client: httpx.AsyncClient, console_errors: list[str]) -> None:
    from playwright.async_api import expect

    data = jpeg(photo("coffee"), quality=77)
    await page.goto("/")
    # a synthetic drop: the DataTransfer a user's drag would carry, dispatched on the drop zone
    await page.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
            const zone = document.getElementById("drop-zone");
            for (const type of ["dragenter", "dragover", "drop"]) {
                zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
            }
        }""",
        [base64.b64encode(data).decode(), "coffee.jpg"],
    )
    card = page.locator(".upload").first
    await expect(card.locator(".name")).to_have_text("coffee.jpg")
    await expect(card).to_have_attribute("data-status", "done", timeout=DONE_TIMEOUT_MS)
    await expect(page.locator("#drop-zone")).not_to_have_class(re.compile(r"\bdragging\b"))
    image_id = await card.get_attribute("data-image-id")
    rec = (await client.get(f"/images/{image_id}")).json()
    assert rec["size_bytes"] == len(data) and rec["content_type"] == "image/jpeg"
    await expect(page.locator("#results")).to_have_attribute("data-query-id", str(image_id))
    assert console_errors == []


@pytest.mark.parametrize("sessions", [True, False], ids=["session-cookie", "no-sessions"])
async def test_asks_for_an_api_key_once_when_refused(
    page: Page, client: httpx.AsyncClient, console_errors: list[str], tmp_path: Path, sessions: bool
) -> None:
    """The session's mesh runs without keys, so the browser plays a gateway that wants one: with sessions the
    key is exchanged once for an HttpOnly cookie and <img> elements load their URLs as they are; a gateway
    without sessions (POST /session 404) gets the key on every request and the pictures come as blobs."""
    from playwright.async_api import expect

    key, token = "web-test-key", "signed-token"
    neighbours = await upload_neighbours(client)
    passed: list[str] = []
    sessions_made: list[str] = []

    async def gate(route: Route, request: Request) -> None:
        if request.url.endswith("/session"):
            if not sessions:
                await route.fulfill(status=404, json={"error": {"code": "not_found", "message": "Not Found"}})
            elif request.method == "DELETE":
                sessions_made.append("deleted")
                await route.fulfill(status=204, headers={"Set-Cookie": "mesh_session=; Path=/; Max-Age=0"})
            elif request.headers.get("x-api-key") == key:
                sessions_made.append("made")
                cookie = f"mesh_session={token}; Path=/; HttpOnly; SameSite=Strict"
                await route.fulfill(status=204, headers={"Set-Cookie": cookie})
            else:
                await route.fulfill(
                    status=401, json={"error": {"code": "unauthorized", "message": "bad key"}}
                )
            return
        cookie_ok = f"mesh_session={token}" in (request.headers.get("cookie") or "")
        if request.headers.get("x-api-key") != key and not cookie_ok:
            body = {"error": {"code": "unauthorized", "message": "a valid API key is required"}}
            await route.fulfill(status=401, json=body)
            return
        passed.append(request.url)
        await route.continue_()

    # the API's paths (not the page's own files, such as static/search.js)
    await page.route(re.compile(r"^https?://[^/]+/(images|search|session|events|duplicates)\b"), gate)
    await page.goto(f"/?image={neighbours[0]}")
    dialog = page.get_by_role("dialog", name="API key needed")
    await expect(dialog).to_be_visible()
    await page.get_by_label("API key", exact=True).fill("wrong")
    await page.get_by_role("button", name="Use key").click()
    await expect(page.locator("#key-reason")).to_contain_text("refused")
    await page.screenshot(path=str(tmp_path / "key.png"))
    await page.get_by_label("API key", exact=True).fill(key)
    await page.get_by_role("button", name="Use key").click()
    await expect(dialog).to_be_hidden()

    await expect(page.locator(f'#grid .result[data-image-id="{neighbours[1]}"]')).to_be_visible()
    await thumbnails_loaded(page)
    srcs = await page.eval_on_selector_all("#grid img", "els => els.map(e => e.src)")
    stored = await page.evaluate(
        "[sessionStorage.getItem('mesh.apiKey'), sessionStorage.getItem('mesh.session')]"
    )
    if sessions:  # the cookie does it: plain URLs, and the key itself is kept nowhere
        assert srcs and all("/thumbnail" in s for s in srcs), srcs
        assert stored == [None, "1"] and sessions_made == ["made"]
    else:
        assert srcs and all(s.startswith("blob:") for s in srcs), srcs
        assert stored == [key, None]
    await expect(page.get_by_role("button", name="Forget API key")).to_be_visible()
    await page.get_by_role("button", name="Forget API key").click()
    await expect(dialog).to_be_visible()  # the page asks again: nothing is remembered
    if sessions:
        assert sessions_made == ["made", "deleted"]
    expected = ("401",) if sessions else ("401", "404")  # without sessions: POST /session answers 404
    assert all(any(code in e for code in expected) for e in console_errors), console_errors


async def test_search_by_words_shows_the_mode_and_label_chips_filter(
    page: Page, client: httpx.AsyncClient, console_errors: list[str], tmp_path: Path
) -> None:
    """On the default model (no text tower) the search box searches the labels and says so; an image's
    label chips show the images with that label."""
    from playwright.async_api import expect

    await page.goto("/")
    cat_copy = jpeg(photo("chelsea").resize((360, 270)), quality=74)  # bytes no other test sends
    chosen: FilePayload = {"name": "my-cat.jpg", "mimeType": "image/jpeg", "buffer": cat_copy}
    await page.set_input_files("#file-input", files=[chosen])
    card = page.locator(".upload").first
    await expect(card).to_have_attribute("data-status", "done", timeout=DONE_TIMEOUT_MS)
    cat_id = await card.get_attribute("data-image-id")
    record = (await client.get(f"/images/{cat_id}")).json()
    names = [label["name"] for label in record["labels"]]
    chips = card.locator(".labels .chip")
    await expect(chips).to_have_count(len(names))
    assert await chips.all_inner_texts() == names  # the record's labels, most probable first

    await page.get_by_role("searchbox", name="Search images by words").fill("cats")
    await page.get_by_role("button", name="Search", exact=True).click()
    results = page.locator("#results")
    await expect(results).to_have_attribute("data-mode", "labels")
    await expect(page.locator("#results-status")).to_contain_text("Searched by labels")
    await expect(page.locator(f'#grid .result[data-image-id="{cat_id}"]')).to_be_visible()
    assert "q=cats" in page.url
    await page.screenshot(path=str(screenshot_path("search")), full_page=True)

    # a word that names no label: the reason, no error
    await page.get_by_role("searchbox", name="Search images by words").fill("xylophonist")
    await page.get_by_role("button", name="Search", exact=True).click()
    await expect(page.locator("#results-status")).to_contain_text("No label matches")
    await expect(page.locator("#grid .result")).to_have_count(0)

    # a chip filters the library: the images labelled so, this one among them
    await chips.first.click()
    await expect(page.locator("#library")).to_be_visible()
    await expect(page.locator("#filters .chip")).to_have_text(f"label:{names[0]} ×")
    await expect(page.locator(f'#library-grid .tile[data-image-id="{cat_id}"]')).to_be_visible()
    await expect(page.locator("#library-grid")).to_have_attribute("data-complete", "true")  # one page
    for image_id in await page.eval_on_selector_all(
        "#library-grid .tile", "els => els.map(e => e.dataset.imageId)"
    ):
        rec = (await client.get(f"/images/{image_id}")).json()
        assert names[0] in {label["name"] for label in rec["labels"] or []}, rec
    assert "filter=label" in page.url
    await page.go_back()  # the previous search, from the URL
    await expect(page.locator("#results-status")).to_contain_text("No label matches")
    assert console_errors == []
