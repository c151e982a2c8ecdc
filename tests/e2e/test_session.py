"""A browser's session against a real gateway with API keys on: the key once (``POST /session``), then the
``mesh_session`` cookie alone for the listing and a thumbnail (what ``<img src>`` sends), its scope and its
CSRF rule on writes, a tampered cookie refused, and ``DELETE /session`` back to 401.

The keyed gateway is a second ``python -m gateway`` on this folder's stack (the stack's own one has keys off).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from actors.settings import Settings
from gateway.session_tokens import COOKIE, SESSION_TTL_S
from ops.stack.services import ROOT
from ops.stack.supervisor import settings_env
from tests.conftest import free_port
from tests.corpus import jpeg
from tests.helpers import wait_until

KEYS = "viewer:read,ingest:write"


@pytest.fixture(scope="module")
def keyed_gateway(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second gateway on the stack with ``MESH_API_KEYS``; its base URL. Stopped on the way out."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("keyed-gateway") / "gateway.log"
    env = {**os.environ, **settings_env(settings), "MESH_GATEWAY_PORT": str(port), "MESH_API_KEYS": KEYS}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://{settings.host}:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, f"keyed gateway exited: {log_path.read_text()}"
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "keyed gateway did not come up"
                time.sleep(0.3)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


async def uploaded_with_thumbnail(url: str) -> str:
    """An image uploaded with the ingest key, once the pipeline has made its thumbnail; its id."""
    key = {"X-API-Key": "ingest"}
    async with httpx.AsyncClient(base_url=url, timeout=60, headers=key) as c:
        r = await c.post("/images/upload", files={"file": ("s.jpg", jpeg(14061, (80, 60)), "image/jpeg")})
        assert r.status_code in (200, 202), r.text
        image_id = str(r.json()["image_id"])

        async def has_thumbnail() -> bool:
            rec = (await c.get(f"/images/{image_id}")).json()
            assert rec["status"] != "error", rec
            return rec["thumbnail_url"] is not None

        await wait_until("the pipeline made the thumbnail", has_thumbnail, timeout_s=180, every_s=0.2)
    return image_id


async def test_the_page_authenticates_once_then_the_cookie_stands_for_the_key(keyed_gateway: str) -> None:
    url = keyed_gateway
    image_id = await uploaded_with_thumbnail(url)
    thumbnail = f"/images/{image_id}/thumbnail"
    async with httpx.AsyncClient(base_url=url, timeout=60) as page:  # keeps cookies, like a browser
        assert (await page.get("/images")).status_code == 401
        assert (await page.post("/session", headers={"X-API-Key": "nope"})).status_code == 401
        assert COOKIE not in page.cookies

        r = await page.post("/session", headers={"X-API-Key": "viewer"})
        assert r.status_code == 204, r.text
        set_cookie = r.headers["Set-Cookie"]
        assert set_cookie.startswith(f"{COOKIE}=v1.") and "viewer" not in set_cookie
        for attribute in ("HttpOnly", "SameSite=Strict", "Path=/", f"Max-Age={SESSION_TTL_S}"):
            assert attribute in set_cookie, set_cookie
        token = page.cookies[COOKIE]

        listing = await page.get("/images", params={"limit": 200})  # the cookie alone
        assert listing.status_code == 200 and image_id in {i["image_id"] for i in listing.json()["images"]}
        thumb = await page.get(thumbnail)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/webp" and thumb.content
        # the cookie carries the viewer key's scope: no delete, whatever the CSRF header says
        refused = await page.delete(f"/images/{image_id}", headers={"X-Requested-With": "fetch"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden"

        r = await page.delete("/session")
        assert r.status_code == 204 and COOKIE not in page.cookies
        assert (await page.get("/images")).status_code == 401
        assert (await page.get(thumbnail)).status_code == 401

    tampered = token[:-3] + ("xyz" if not token.endswith("xyz") else "abc")
    async with httpx.AsyncClient(base_url=url, timeout=60) as stranger:
        for cookie, status in ((tampered, 401), ("v1.x.9999999999.y", 401), (token, 200)):
            r = await stranger.get(thumbnail, headers={"Cookie": f"{COOKIE}={cookie}"})
            assert r.status_code == status, (cookie, r.status_code, r.text[:200])

    async with httpx.AsyncClient(base_url=url, timeout=60) as page:  # a session of the write key
        assert (await page.post("/session", json={"api_key": "ingest"})).status_code == 204
        forged = await page.delete(f"/images/{image_id}")  # what a form on another site could send
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "csrf"
        assert (await page.get(f"/images/{image_id}")).status_code == 200
        deleted = await page.delete(f"/images/{image_id}", headers={"X-Requested-With": "fetch"})
        assert deleted.status_code == 204, deleted.text
        assert (await page.get(f"/images/{image_id}")).status_code == 404
