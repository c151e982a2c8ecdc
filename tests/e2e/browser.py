"""Headless Chromium (Debian's ``chromium``) driven by Playwright, for the web page's tests: the fixtures
``chromium``, ``page`` and ``console_errors`` (registered by ``tests/e2e/conftest.py``).

Playwright's own browser download cannot work here; a missing browser fails the test rather than skipping it,
so CI cannot pass without having run it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "var" / "screenshots"  # kept after the run: what the library looked like

CHROMIUM = Path("/usr/bin/chromium")
# As root on a machine with no outside network: no sandbox, and nothing that phones home at start-up.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DONE_TIMEOUT_MS = 120_000
UI_TIMEOUT_MS = 30_000


@pytest.fixture
def console_errors() -> list[str]:
    """Errors the page logged (each with the URL it names) or threw; each test decides which it expects."""
    return []


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's browser with "
            "`apt-get install -y --no-install-recommends chromium` (Playwright's download does not work here)"
        )
    return CHROMIUM


@pytest.fixture
async def page(chromium: Path, base_url: str, console_errors: list[str]) -> AsyncIterator[Page]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install -e '.[dev]'`")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(base_url=base_url, viewport={"width": 1280, "height": 900})
            context.set_default_timeout(UI_TIMEOUT_MS)
            pg = await context.new_page()
            pg.on("pageerror", lambda e: console_errors.append(f"pageerror: {e}"))
            # with the URL it names (a resource that failed to load), so a test can tell its own images'
            pg.on(
                "console",
                lambda m: (
                    console_errors.append(f"{m.text} [{m.location.get('url', '')}]")
                    if m.type == "error"
                    else None
                ),
            )
            yield pg
        finally:
            await browser.close()


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"
