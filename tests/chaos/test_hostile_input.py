"""Hostile input against the whole stack (issue 5, item 7).

The hostile corpus (tests/corpus.py) gets the 4xx of DESIGN.md section 3 with the error body and never a 5xx;
odd but valid images, valid images sent with a spoofed type, and valid images under hostile file names are
processed to ``done`` with their real type; no file name reaches an object key, an object's metadata or a
record; and the gateway's peak RSS stays bounded through it all.

The e2e suite checks the same corpus one request at a time; here requests go in parallel (as a crowd of
hostile clients would), through a raw multipart body (so names that are not UTF-8 arrive as sent), and the
gateway's memory is measured.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest

from actors.adapters.workflow_store import WorkflowStore
from actors.contract import LAYOUT_OBJECT
from actors.settings import Settings
from gateway.validation import UploadError, validate_image
from ops.stack.supervisor import Stack
from tests.chaos.audit import assert_nothing_left, measure_repeats
from tests.chaos.conftest import pid_of
from tests.chaos.test_least_privilege import private_gateway
from tests.corpus import (
    Case,
    hostile_cases,
    jpeg,
    multipart_body,
    odd_valid_images,
    oversize_case,
    png,
    png_by_hand,
)
from tests.helpers import s3_client, wait_terminal

MAX_GATEWAY_RSS_MB = 400
CONCURRENCY = 4
BIG_UPLOADS = 8  # concurrent 49 MP uploads (issue 12: under 600 MB with the default decode budget)
MAX_GATEWAY_BIG_RSS_MB = 600
KEY_PATTERN = re.compile(r"images/[0-9a-f]{2}/[0-9a-f]{32}")
# what the pipeline derives from an image: its thumbnail(s) and copy features, named by its id only
DERIVED_KEY_PATTERN = re.compile(
    r"derived/(thumbs/(256|1024)/[0-9a-f]{2}/[0-9a-f]{32}\.webp|copies/[0-9a-f]{2}/[0-9a-f]{32}\.orb)"
)
REAL_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
# A name like an object key: if names were ever used as keys, this one would collide with a real key's shape.
KEY_LOOKALIKE = "images/ab/" + "c" * 32


def hostile_name_cases() -> list[Case]:
    """Valid images under names the corpus does not have, each sent as ``text/html`` (a stored-XSS attempt)."""
    names: list[tuple[str, str | bytes]] = [
        ("nul_in_name", b"photo\x00.html"),
        ("key_lookalike_name", KEY_LOOKALIKE),
        ("url_encoded_traversal", "%2e%2e%2f%2e%2e%2fetc%2fshadow.jpg"),
        ("terminal_escapes", "\x1b[31mred\x07.jpg"),
        ("param_injection", 'x.jpg; name="metadata"'),
        ("empty_name", ""),
    ]
    return [
        Case(
            name, jpeg(9100 + i, (40, 40)), filename, "text/html", expect_format="JPEG", expect_size=(40, 40)
        )
        for i, (name, filename) in enumerate(names)
    ] + [
        Case(
            "png_as_html",
            png(9199, (30, 20)),
            "index.html",
            "text/html",
            expect_format="PNG",
            expect_size=(30, 20),
        )
    ]


# Fragments of every hostile name (odd_valid_images and hostile_name_cases) that are not hex, so a 32-hex id
# cannot contain one by chance.
NAME_FRAGMENTS = (
    "passwd",
    "shadow",
    "etc",
    "boot.ini",
    "Users",
    "..",
    "%2e",
    "a" * 40,
    "caf",
    "фото",
    "evil",
    ".exe",
    ".html",
    ".jpg",
    ".png",
    "Content-Type",
    "\x1b",
    "red",
    "metadata",
    "photo",
)


async def post_case(client: httpx.AsyncClient, case: Case) -> httpx.Response:
    body, content_type = multipart_body(case)
    return await client.post("/images/upload", content=body, headers={"content-type": content_type})


async def post_all(client: httpx.AsyncClient, cases: Iterable[Case]) -> list[tuple[Case, httpx.Response]]:
    sem = asyncio.Semaphore(CONCURRENCY)

    async def one(case: Case) -> tuple[Case, httpx.Response]:
        async with sem:
            return case, await post_case(client, case)

    return await asyncio.gather(*(one(c) for c in cases))


def peak_rss_mb(pid: int) -> float:
    """The process's lifetime peak resident set (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


def s3_keys(s: Settings) -> list[str]:
    pages = s3_client(s).get_paginator("list_objects_v2").paginate(Bucket=s.s3_bucket)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def error_of(r: httpx.Response) -> dict[str, Any] | None:
    try:
        err = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return None
    return err if isinstance(err, dict) else None


@pytest.fixture
async def config_limits(chaos_settings: Settings) -> dict[str, Any]:
    """The live Config DB (the byte limit may differ from the settings' seed)."""
    url = f"http://{chaos_settings.host}:{chaos_settings.config_http_port}/config"
    async with httpx.AsyncClient(timeout=10) as c:
        return dict((await c.get(url)).json()["config"])


@pytest.fixture
async def store(chaos_settings: Settings) -> AsyncIterator[WorkflowStore]:
    s = WorkflowStore(chaos_settings.redis_server_url, chaos_settings.redis_prefix)
    try:
        yield s
    finally:
        await s.close()


async def test_hostile_corpus_gets_its_4xx_and_never_a_5xx(
    chaos_mesh: Stack, chaos_settings: Settings, gw: httpx.AsyncClient, config_limits: dict[str, Any]
) -> None:
    cases = [*hostile_cases(), oversize_case(int(config_limits["max_upload_bytes"]))]
    assert len(cases) >= 20
    objects_before = len(await asyncio.to_thread(s3_keys, chaos_settings))
    rss_before = peak_rss_mb(pid_of(chaos_mesh, "gateway"))

    results = await post_all(gw, cases)

    # the same oversize upload without a Content-Length (chunked): refused while streaming, not after
    oversize = cases[-1]
    body, content_type = multipart_body(oversize)

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 1 << 20):
            yield body[i : i + (1 << 20)]

    chunked = await gw.post("/images/upload", content=chunks(), headers={"content-type": content_type})
    results.append((Case("over_byte_limit_chunked", b"", "", "", None, 413, "too_large"), chunked))

    wrong = []
    for case, r in results:
        err = error_of(r)
        got = (r.status_code, err.get("code") if err else None, bool(err and err.get("message")))
        if got != (case.expect_status, case.expect_code, True):
            wrong.append(
                f"{case.name}: expected {case.expect_status} {case.expect_code}, got {got}: {r.text[:200]}"
            )
    statuses = Counter(r.status_code for _, r in results)
    rss = peak_rss_mb(pid_of(chaos_mesh, "gateway"))
    print(
        f"\nhostile corpus: cases={len(results)} statuses={dict(sorted(statuses.items()))} gateway_peak_rss_mb={rss_before:.0f}->{rss:.0f}"
    )
    assert not [s for s in statuses if s >= 500], wrong
    assert not wrong, "\n".join(wrong)
    assert len(await asyncio.to_thread(s3_keys, chaos_settings)) == objects_before, (
        "a refused upload stored an object"
    )
    assert rss < MAX_GATEWAY_RSS_MB
    await assert_nothing_left(chaos_settings)  # nor an intent, a record or a vector


async def test_odd_valid_images_and_hostile_names_are_done_with_their_real_type(
    chaos_mesh: Stack, chaos_settings: Settings, gw: httpx.AsyncClient, store: WorkflowStore
) -> None:
    cases = [*odd_valid_images(), *hostile_name_cases()]
    results = await post_all(gw, cases)
    refused = [
        f"{c.name}: {r.status_code} {r.text[:200]}" for c, r in results if r.status_code not in (200, 202)
    ]
    assert not refused, "\n".join(refused)
    ids = {c.name: str(r.json()["image_id"]) for c, r in results}
    assert len(set(ids.values())) == len(cases), "two distinct images got one id"

    records = await wait_terminal(gw, list(ids.values()), timeout_s=300)
    problems = []
    for case in cases:
        image_id, rec = ids[case.name], records[ids[case.name]]
        real_type = REAL_TYPES[str(case.expect_format)]
        seen = (rec["status"], rec["content_type"], (rec["width"], rec["height"]))
        if seen != ("done", real_type, case.expect_size):
            problems.append(f"{case.name}: {seen} (error {rec.get('error')})")
        # ids and hashes are hex, which can spell a fragment ("caf") by chance: only the other fields count;
        # the file name is the one field that shows the name (cleaned, never part of a key: checked below)
        hexes = {"metadata", "image_id", "sha256", "trace_id", "thumbnail_url", "filename"}
        values = json.dumps([v for k, v in rec.items() if k not in hexes], ensure_ascii=False)
        shown = rec["filename"]  # the last path part, printable, bounded (gateway/upload.py clean_filename)
        if not shown.isprintable() or "/" in shown or "\\" in shown or len(shown) > 255:
            problems.append(f"{case.name}: file name shown as {shown!r}")
        leaked = [f for f in NAME_FRAGMENTS if f in values]
        if leaked:
            problems.append(f"{case.name}: record carries name fragments {leaked}")
        stored = await store.get(image_id)
        assert stored is not None
        if stored.object_key != f"images/{image_id[:2]}/{image_id}":
            problems.append(f"{case.name}: object key {stored.object_key!r}")
    assert not problems, "\n".join(problems)

    # served back with the real type, whatever the upload claimed (text/html must never come back)
    for case in cases:
        if case.content_type == "text/html":
            r = await gw.get(f"/images/{ids[case.name]}/content", params={"presigned": "false"})
            assert r.status_code == 200 and r.content == case.data, case.name
            assert r.headers["content-type"] == REAL_TYPES[str(case.expect_format)], (case.name, r.headers)

    keys = await asyncio.to_thread(s3_keys, chaos_settings)
    # besides originals and derived objects, the bucket holds only the layout stamp (actors/contract/layout.py)
    originals = [k for k in keys if not k.startswith("derived/") and k != LAYOUT_OBJECT]
    bad_keys = [k for k in originals if not KEY_PATTERN.fullmatch(k) or k[7:9] != k[10:12]]
    bad_keys += [k for k in keys if k.startswith("derived/") and not DERIVED_KEY_PATTERN.fullmatch(k)]
    # a key is "images/<hex>/<hex>" or a derived one named by the id (bad_keys): a fragment made of hex letters
    # ("caf") can appear in it by chance
    spelled = [f for f in NAME_FRAGMENTS if not re.fullmatch("[0-9a-f]+", f)]
    leaked_keys = [k for k in keys if k == KEY_LOOKALIKE or any(f in k for f in spelled)]
    ours = {f"images/{i[:2]}/{i}" for i in ids.values()}
    s3 = s3_client(chaos_settings)
    heads = [
        await asyncio.to_thread(s3.head_object, Bucket=chaos_settings.s3_bucket, Key=k) for k in sorted(ours)
    ]
    meta_leaks = [h["Metadata"] for h in heads if h.get("Metadata")]
    rss = peak_rss_mb(pid_of(chaos_mesh, "gateway"))
    print(
        f"\nvalid uploads: cases={len(cases)} done={sum(1 for r in records.values() if r['status'] == 'done')} "
        f"s3_keys={len(keys)} content_types={dict(Counter(r['content_type'] for r in records.values()))} "
        f"gateway_peak_rss_mb={rss:.0f}"
    )
    assert not bad_keys, bad_keys[:10]
    assert not leaked_keys, leaked_keys[:10]
    assert ours <= set(keys), sorted(ours - set(keys))[:10]
    assert not meta_leaks, meta_leaks[:5]
    assert {h["ContentType"] for h in heads} <= set(REAL_TYPES.values())
    assert rss < MAX_GATEWAY_RSS_MB
    repeats = measure_repeats(chaos_settings, records)  # no fault: each image processed once
    print(f"repeats: {repeats.figures()}")
    assert not (repeats.repeated or repeats.restarted or repeats.never_upserted), repeats
    await assert_nothing_left(chaos_settings)


def png_rgba(width: int, height: int, seed: int, *, last_filter: int = 0, rows: int | None = None) -> bytes:
    """A flat RGBA PNG with whole chunks and right CRCs, a few hundred KB for 49 MP (4 bytes a pixel decoded).

    ``last_filter`` > 4 (no such PNG filter) breaks the last row, so the image is refused only once its whole
    frame is allocated and decoded; ``rows`` < ``height`` makes the pixel data end early.
    """
    row = bytes([seed % 256]) * (4 * width)
    rows = height if rows is None else rows
    co = zlib.compressobj(9)
    idat = b"".join(co.compress(b"\x00" + row) for _ in range(rows - 1))
    idat += co.compress(bytes([last_filter]) + row) + co.flush()
    return png_by_hand(width, height, bit_depth=8, color_type=6, idat=idat)


def test_png_with_short_pixel_data_is_a_broken_image() -> None:
    """Pillow pads a short zlib stream with black rows silently; validation must not (gateway/validation.py)."""
    whole, short = png_rgba(300, 200, 1), png_rgba(300, 200, 1, rows=199)
    info = validate_image(whole, max_bytes=1 << 25, max_pixels=1 << 30)
    assert (info.format, info.width, info.height) == ("PNG", 300, 200)
    with pytest.raises(UploadError) as refused:
        validate_image(short, max_bytes=1 << 25, max_pixels=1 << 30)
    assert (refused.value.status, refused.value.code) == (400, "broken_image")


async def test_concurrent_big_images_under_the_pixel_limit_keep_the_gateway_small(
    chaos_settings: Settings, tmp_path: Path
) -> None:
    """8 concurrent 49 MP RGBA PNGs, each refused only once its whole frame (196 MB in Pillow) is decoded: the
    decode budget (actors/decode_budget.py, default MESH_DECODE_BUDGET_BYTES) lets one decode at a time, and
    freed frames go back to the kernel, so the gateway's peak stays far below 8 frames."""
    # a private gateway, so the main one's lifetime peak (and every later test) is left alone
    with private_gateway(chaos_settings, tmp_path / "gateway-big.log") as (url, pid):
        before = peak_rss_mb(pid)
        body = png_rgba(7000, 7000, 1, last_filter=9)
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            results = await asyncio.gather(
                *(
                    c.post("/images/upload", files={"file": (f"big{i}.png", body, "image/png")})
                    for i in range(BIG_UPLOADS)
                )
            )
        elapsed = time.monotonic() - started
        rss = peak_rss_mb(pid)
    codes = [(r.status_code, (error_of(r) or {}).get("code")) for r in results]
    print(
        f"\nbig images: {BIG_UPLOADS} x 7000x7000 RGBA PNG of {len(body) // 1024} KB each in {elapsed:.1f} s: "
        f"{codes}; private gateway peak RSS {before:.0f} -> {rss:.0f} MB"
    )
    assert codes == [(400, "broken_image")] * BIG_UPLOADS
    assert rss < MAX_GATEWAY_BIG_RSS_MB
