"""The ingest baseline (``ops/bench/baseline.py``) does the coordinator's work on an image, call for call.

The shared functions (header read with the draft target and pixel cap, decode, preprocessing) are spied on
while one image goes through ``Pipeline.process`` over fakes and then through the baseline's ``image_work``:
both must make the same calls with the same arguments and give the model the same pixels and the index the
same tags, under the default configuration (no pipeline steps today) and with steps configured.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from typing import Any

import msgspec
import numpy as np
import pytest
from PIL import Image

from actors import preprocess
from actors.adapters.embedder import ImageEmbedding
from actors.contract import MeshConfig, ProcessJob
from ops.bench.baseline import image_work
from ops.photos import jpeg, photo
from tests.unit.workflow_fakes import World


class Spy:
    """Records each call of the shared decode and preprocessing functions, as comparable values."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[Any, ...]] = []
        open_image, decode_opened, to_pixels, thumbnail_webp = (
            preprocess.open_image,
            preprocess.decode_opened,
            preprocess.to_pixels,
            preprocess.thumbnail_webp,
        )

        def spy_open(data: bytes, target: int | None = None, max_pixels: int | None = None) -> Image.Image:
            img = open_image(data, target, max_pixels)
            self.calls.append(("open_image", hashlib.sha256(data).hexdigest(), target, max_pixels, img.size))
            return img

        def spy_decode(img: Image.Image) -> Image.Image:
            self.calls.append(("decode_opened", img.size, img.mode))
            return decode_opened(img)

        def spy_pixels(img: Image.Image, spec: Any) -> np.ndarray:
            self.calls.append(("to_pixels", img.size, img.mode, spec))
            return to_pixels(img, spec)

        def spy_thumbnail(img: Image.Image, side: int) -> bytes:
            data = thumbnail_webp(img, side)
            self.calls.append(("thumbnail_webp", img.size, side, hashlib.sha256(data).hexdigest()))
            return data

        monkeypatch.setattr(preprocess, "thumbnail_webp", spy_thumbnail)
        monkeypatch.setattr(preprocess, "open_image", spy_open)
        monkeypatch.setattr(preprocess, "decode_opened", spy_decode)
        monkeypatch.setattr(preprocess, "to_pixels", spy_pixels)

    def take(self) -> list[tuple[Any, ...]]:
        out, self.calls = self.calls, []
        return out


@pytest.fixture
def world() -> Iterator[World]:
    w = World()
    yield w
    w.close()


@pytest.fixture(scope="module")
def camera_jpeg() -> bytes:
    """A photo large enough that JPEG decodes at a reduced scale (draft) for the thumbnail's 256 px."""
    return jpeg(photo("astronaut").resize((1280, 960)))


def _job_with(world: World, data: bytes, cfg: MeshConfig) -> ProcessJob:
    world.config.cfg = cfg
    job = world.add_image()
    world.objects.objects[job.object_key] = data
    return msgspec.structs.replace(job, sha256=hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize(
    "cfg",
    [MeshConfig(active_model="m1"), MeshConfig(active_model="m1", pipeline_steps=["exif", "moderation"])],
    ids=["default-config", "with-steps"],
)
async def test_the_baseline_calls_what_the_pipeline_calls_with_the_same_arguments(
    world: World, camera_jpeg: bytes, cfg: MeshConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(monkeypatch)
    job = _job_with(world, camera_jpeg, cfg)
    embedded: list[np.ndarray] = []
    embed = world.embedder.embed_image_full

    async def keep_pixels(model: str, pixels: np.ndarray) -> ImageEmbedding:
        embedded.append(pixels)
        return await embed(model, pixels)

    monkeypatch.setattr(world.embedder, "embed_image_full", keep_pixels)
    assert await world.pipeline.process(job) == "done"
    mesh_calls = spy.take()
    [upsert] = world.nats.upserts

    spec = await world.embedder.preprocess_spec("m1")
    # on a thread, as in the baseline's pool (the steps are coroutines: the baseline runs them on its own loop)
    stored: dict[str, bytes] = {}
    put = lambda key, data, _: stored.__setitem__(key, data)  # noqa: E731
    result = await asyncio.to_thread(image_work, camera_jpeg, [spec], cfg, job.image_id, put)
    baseline_calls = spy.take()

    assert baseline_calls == mesh_calls
    opened = [c for c in mesh_calls if c[0] == "open_image"]
    # the draft is really used: the first header read asks for the thumbnail's size (the fake model wants
    # less) and gets a reduced frame
    assert opened[0][2:4] == (preprocess.THUMBNAIL_SIDE, cfg.max_pixels) and opened[0][4] < (1280, 960)
    if cfg.pipeline_steps:  # the steps see the image at full size
        assert opened[1][2:] == (None, cfg.max_pixels, (1280, 960))
    # the same thumbnail and copy features, stored under the same keys
    assert len(stored) == 2 and all(world.objects.objects[key] == data for key, data in stored.items())
    assert result.thumbnail in stored.values() and any(c[0] == "thumbnail_webp" for c in mesh_calls)
    assert result.tags == upsert.tags
    # and the model gets the same pixels from both
    assert len(embedded) == len(result.pixels) == 1 and np.array_equal(embedded[0], result.pixels[0])
