"""The web page served by the gateway: the library (grid, uploads, live status, search, duplicates).

The page is static (``gateway/static``: plain HTML, JS and CSS, no build step, nothing from a CDN) and
talks to the public REST API like any other client, so it needs no API key to load: its calls send
``X-API-Key`` when the gateway asks for one. Files are served by explicit routes rather than a
``StaticFiles`` mount because a mount on an ``APIRouter`` is dropped by ``include_router``; a fixed table
also means no path from the URL reaches the disk.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from gateway.errors import ApiError

STATIC_DIR = Path(__file__).parent / "static"
_JS = "text/javascript; charset=utf-8"
STATIC_FILES = {
    "app.js": _JS,  # the page's modules (ES modules, imported by app.js)
    "api.js": _JS,
    "library.js": _JS,
    "search.js": _JS,
    "uploads.js": _JS,
    "style.css": "text/css; charset=utf-8",
}
# Revalidate on each load (the ETag makes that a 304), so a redeployed page is never stale.
NO_STALE = {"Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index() -> FileResponse:
    """The page itself."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=NO_STALE)


@router.get("/static/{name}")
async def static(name: str) -> FileResponse:
    """The page's script and style sheet."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", f"no static file {name}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=NO_STALE)
