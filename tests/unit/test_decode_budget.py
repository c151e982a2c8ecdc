"""actors/decode_budget.py, and the decode costs read from headers that the gateway and the coordinator hold.

The budget: bytes, not a count; first come first served (a large image is not starved by small ones); an image
larger than the whole budget runs alone; what was taken is given back when the block raises or is cancelled,
and a waiter cancelled in line takes nothing. The costs: what a decode will hold, read before decoding.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile

from actors import preprocess
from actors.contract import PreprocessSpec
from actors.decode_budget import DecodeBudget, release_freed_memory_promptly
from actors.imaging import ImageWork, TooManyPixels, UndecodableImage
from actors.steps.exif import read_exif
from gateway.validation import decode_cost, validate_image

SPEC = PreprocessSpec(resize=64, crop=56)


async def settle() -> None:
    """Let every task that can run, run."""
    for _ in range(5):
        await asyncio.sleep(0)


def holder(
    budget: DecodeBudget, nbytes: int, log: list[str], name: str, done: asyncio.Event
) -> asyncio.Task[None]:
    async def run() -> None:
        async with budget.hold(nbytes):
            log.append(name)
            await done.wait()

    return asyncio.create_task(run(), name=name)


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


async def test_bytes_within_the_capacity_run_together_and_the_rest_waits() -> None:
    budget, log, done = DecodeBudget(100), [], asyncio.Event()
    tasks = [holder(budget, n, log, name, done) for n, name in ((40, "a"), (50, "b"), (30, "c"))]
    await settle()
    assert log == ["a", "b"] and budget.in_use == 90 and budget.waiting == 1
    done.set()
    await asyncio.gather(*tasks)
    assert log == ["a", "b", "c"] and budget.in_use == 0 and budget.waiting == 0


async def test_first_come_first_served_a_large_request_is_not_overtaken_by_small_ones() -> None:
    budget, log = DecodeBudget(100), []
    first, big_done, small_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    a = holder(budget, 60, log, "a", first)
    await settle()
    big = holder(budget, 50, log, "big", big_done)  # does not fit beside a: waits
    await settle()
    smalls = [holder(budget, 10, log, f"small{i}", small_done) for i in range(3)]  # would fit, but come later
    await settle()
    assert log == ["a"] and budget.waiting == 4
    first.set()
    await settle()
    assert log[:2] == ["a", "big"] and set(log[2:]) == {"small0", "small1", "small2"}
    assert budget.in_use == 80
    big_done.set()
    small_done.set()
    await asyncio.gather(a, big, *smalls)
    assert budget.in_use == 0


async def test_an_image_larger_than_the_whole_budget_runs_alone_instead_of_deadlocking() -> None:
    budget, log = DecodeBudget(100), []
    small_done, huge_done, after_done = asyncio.Event(), asyncio.Event(), asyncio.Event()
    small = holder(budget, 30, log, "small", small_done)
    await settle()
    huge = holder(budget, 250, log, "huge", huge_done)  # waits for the budget to be empty
    after = holder(budget, 10, log, "after", after_done)  # waits behind it
    await settle()
    assert log == ["small"]
    small_done.set()
    await settle()
    assert log == ["small", "huge"] and budget.in_use == 250
    huge_done.set()
    await settle()
    assert log == ["small", "huge", "after"]
    after_done.set()
    await asyncio.gather(small, huge, after)
    assert budget.in_use == 0
    async with budget.hold(1000):  # alone from the start: no wait at all
        assert budget.in_use == 1000


async def test_what_was_taken_is_given_back_when_the_block_raises_or_is_cancelled() -> None:
    budget = DecodeBudget(100)
    with pytest.raises(RuntimeError):
        async with budget.hold(80):
            raise RuntimeError("the decoder failed")
    assert budget.in_use == 0

    started = asyncio.Event()

    async def stuck() -> None:
        async with budget.hold(80):
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(stuck())
    await started.wait()
    assert budget.in_use == 80
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert budget.in_use == 0


async def test_a_waiter_cancelled_in_line_takes_nothing_and_lets_those_behind_it_move_up() -> None:
    budget, log = DecodeBudget(100), []
    a_done, rest_done = asyncio.Event(), asyncio.Event()
    a = holder(budget, 70, log, "a", a_done)
    await settle()
    blocked = holder(budget, 50, log, "blocked", rest_done)  # the head of the line
    behind = holder(budget, 20, log, "behind", rest_done)  # fits beside a, waits for the head
    await settle()
    assert log == ["a"]
    blocked.cancel()
    await settle()
    assert log == ["a", "behind"] and budget.in_use == 90 and budget.waiting == 0
    a_done.set()
    rest_done.set()
    await asyncio.gather(a, behind)
    assert blocked.cancelled() and budget.in_use == 0


async def test_a_waiter_cancelled_in_the_instant_it_was_served_gives_its_bytes_back() -> None:
    budget, log, done = DecodeBudget(100), [], asyncio.Event()
    await budget.acquire(100)
    served = holder(budget, 100, log, "served", asyncio.Event())
    await settle()
    budget.release(100)  # ``served`` gets the bytes now, but has not run yet
    served.cancel()  # and is cancelled before it does
    with pytest.raises(asyncio.CancelledError):
        await served
    assert budget.in_use == 0 and log == []
    later = holder(budget, 100, log, "later", done)
    await settle()
    assert log == ["later"]
    done.set()
    await later
    assert budget.in_use == 0


async def test_nothing_to_hold_never_waits_and_a_budget_must_be_positive() -> None:
    budget = DecodeBudget(10)
    async with budget.hold(10), budget.hold(0):
        assert budget.in_use == 10
    with pytest.raises(ValueError):
        DecodeBudget(0)
    assert isinstance(release_freed_memory_promptly(), bool)


def test_decode_cost_is_read_from_the_header_as_pillow_will_store_the_frame() -> None:
    rgb = encode(Image.new("RGB", (300, 200), (10, 20, 30)), "PNG")
    grey = encode(Image.new("L", (300, 200), 7), "PNG")
    rgba = encode(Image.new("RGBA", (300, 200), (1, 2, 3, 4)), "PNG")
    big_jpeg = encode(Image.new("RGB", (1600, 1200), (90, 90, 90)), "JPEG")
    px = 300 * 200
    assert preprocess.decode_cost(preprocess.open_image(rgb)) == 4 * px  # RGB is 4 bytes a pixel in Pillow
    assert preprocess.decode_cost(preprocess.open_image(grey)) == px + 4 * px  # the L frame and its RGB copy
    assert preprocess.decode_cost(preprocess.open_image(rgba)) == 4 * px + 4 * px + px  # + white base, alpha
    full = preprocess.decode_cost(preprocess.open_image(big_jpeg))
    draft = preprocess.decode_cost(preprocess.open_image(big_jpeg, target=150))
    assert full == 1600 * 1200 * 4 and draft == 200 * 150 * 4  # DCT scaling at 1/8 costs 1/64
    # the gateway's validation decodes the frame in its own mode (JPEG at 1/8), and refuses before decoding
    limits = {"max_bytes": 1 << 20, "max_pixels": 10_000_000}
    assert decode_cost(rgb, **limits) == 4 * px and decode_cost(grey, **limits) == px
    assert decode_cost(big_jpeg, **limits) == 200 * 150 * 4
    assert decode_cost(rgb, max_bytes=1 << 20, max_pixels=px - 1) == 0  # over the pixel limit: refused
    assert decode_cost(b"not an image", **limits) == 0 and decode_cost(b"", **limits) == 0
    assert validate_image(rgb, **limits).width == 300


def test_decoding_keeps_the_pixels_of_the_one_call_decode() -> None:
    rgba = Image.new("RGBA", (90, 60), (200, 10, 10, 128))
    data = encode(rgba, "PNG")
    img = preprocess.open_image(data)
    (pixels,) = preprocess.pixels_for(img, [SPEC])
    assert np.array_equal(pixels, preprocess.to_pixels(preprocess.decode_image(data), SPEC))


class PeakBudget(DecodeBudget):
    """Remembers the most bytes ever held at once."""

    peak = 0

    def _take(self, nbytes: int) -> None:
        super()._take(nbytes)
        self.peak = max(self.peak, self.in_use)


def test_reading_the_cost_decodes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    loads = record_loads(monkeypatch, lambda: 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    for data in (
        encode(Image.new("RGB", (40, 30)), "PNG"),  # a PNG's getexif() would decode it all
        encode(Image.new("RGB", (40, 30)), "JPEG", exif=exif.tobytes()),
        encode(Image.new("RGB", (40, 30)), "WEBP"),
        encode(Image.new("P", (40, 30)), "GIF", transparency=0),
        encode(Image.new("RGB", (40, 30)), "TIFF"),
    ):
        assert preprocess.decode_cost(preprocess.open_image(data)) > 0
        assert decode_cost(data, max_bytes=1 << 20, max_pixels=1 << 20) > 0
    assert loads == []


def test_the_exif_step_reads_a_png_exif_chunk_after_the_pixels_without_decoding_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    with_exif = encode(Image.new("RGB", (40, 30)), "PNG", exif=exif.tobytes())
    chunk = with_exif.index(b"eXIf") - 4
    end = chunk + 12 + int.from_bytes(with_exif[chunk : chunk + 4], "big")
    iend = with_exif.index(b"IEND") - 4
    late = (
        with_exif[:chunk] + with_exif[end:iend] + with_exif[chunk:end] + with_exif[iend:]
    )  # eXIf after IDAT
    assert late.index(b"eXIf") > late.index(b"IDAT")
    loads = record_loads(monkeypatch, lambda: 0)
    assert read_exif(late) == {"exif.make": "Canon"}
    assert read_exif(encode(Image.new("RGB", (40, 30)), "PNG")) == {}
    assert loads == []


def record_loads(monkeypatch: pytest.MonkeyPatch, held: Callable[[], int]) -> list[int]:
    """Every Pillow decode (``ImageFile.load``) from now on, as what ``held()`` says at its start."""
    loads: list[int] = []
    load = ImageFile.ImageFile.load

    def recording(self: ImageFile.ImageFile) -> Any:
        loads.append(held())
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return loads


async def test_the_coordinators_decodes_hold_the_budget_and_refuse_too_many_pixels_from_the_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = 400 * 300 * 4
    budget = PeakBudget(frame + frame // 2)  # room for one such frame at a time
    loads = record_loads(monkeypatch, lambda: budget.in_use)
    work = ImageWork(workers=4, budget=budget)
    try:
        images = [encode(Image.new("RGB", (400, 300), (i, 0, 0)), "PNG") for i in range(6)]
        results = await asyncio.gather(*(work.pixels_for(d, [SPEC], target=64) for d in images))
        assert [r.pixels[0].shape for r in results] == [(56, 56, 3)] * 6
        thumbs = [Image.open(io.BytesIO(r.thumbnail)) for r in results]  # from the same decode
        assert [(t.format, t.size) for t in thumbs] == [("WEBP", (256, 192))] * 6
        assert budget.peak == frame and budget.in_use == 0
        async with work.decoded(images[0]) as full:
            assert full.size == (400, 300) and budget.in_use == frame
        assert budget.in_use == 0
        with pytest.raises(TooManyPixels):
            await work.pixels_for(images[0], [SPEC], max_pixels=400 * 300 - 1)
        with pytest.raises(UndecodableImage):
            await work.pixels_for(b"\x89PNG\r\n\x1a\n broken", [SPEC])
        assert budget.peak == frame and budget.in_use == 0
        assert loads and min(loads) > 0  # every decode ran with its bytes held
    finally:
        work.close()
