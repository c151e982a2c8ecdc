"""The copy checker's one-image step (``CopyChecker.check``) on fakes of its stores: which candidates it
verifies, what it asks the index, and that a candidate's features are fetched once. The real thing, in a running
mesh: tests/e2e/test_search.py (copies apart from look-alikes) and tests/e2e/test_web_library.py."""

from __future__ import annotations

import io
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from PIL import Image

from actors import copies
from actors.adapters.object_store import ObjectMissing, copy_features_key
from actors.contract import Hit, ImageRecord, MeshConfig, Status
from actors.copy_check import CANDIDATE_EF, MAX_CANDIDATES, YIELD_MAX_S, CopyChecker
from tests.images import photo


def _jpeg(img: Image.Image, quality: int = 80) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


class World:
    """Records, vectors, features in an object store, the pairs' verdicts and what the index was asked."""

    def __init__(self, images: dict[str, Image.Image], scores: dict[str, float]) -> None:
        self.features = {i: copies.features(img).to_bytes() for i, img in images.items()}
        self.scores = scores  # each candidate's cosine to the checked image
        self.verdicts: dict[str, dict[str, bool]] = {}
        self.asked: list[dict[str, Any]] = []
        self.fetched: Counter[str] = Counter()
        self.updates: dict[str, dict[str, object]] = {}

    # records
    async def get(self, image_id: str) -> ImageRecord | None:
        return ImageRecord(
            image_id=image_id,
            status=Status.DONE,
            sha256="x",
            object_key="k",
            content_type="image/jpeg",
            size_bytes=1,
            width=1,
            height=1,
            copy_features_key=copy_features_key(image_id),
        )

    async def get_embedding(self, model: str, image_id: str) -> np.ndarray | None:
        return np.ones(4, np.float32)

    async def update(self, image_id: str, **fields: object) -> None:
        self.updates[image_id] = fields

    # the index
    async def query(
        self,
        model: str,
        vector: np.ndarray,
        k: int,
        *,
        exclude_id: str | None = None,
        ef_runtime: int | None = None,
    ) -> list[Hit]:
        self.asked.append({"k": k, "exclude_id": exclude_id, "ef_runtime": ef_runtime})
        ranked = sorted(((s, i) for i, s in self.scores.items() if i != exclude_id), reverse=True)
        return [Hit(image_id=i, score=s) for s, i in ranked[:k]]

    # objects
    async def objects_get(self, key: str) -> bytes:
        image_id = key.rsplit("/", 1)[-1].split(".")[0]
        self.fetched[image_id] += 1
        if image_id not in self.features:
            raise ObjectMissing(key)
        return self.features[image_id]


class Pairs:
    def __init__(self, world: World) -> None:
        self.world = world

    async def verdicts(self, image_id: str) -> dict[str, bool]:
        return dict(self.world.verdicts.get(image_id, {}))

    async def record(self, image_id: str, verdicts: dict[str, bool]) -> None:
        for other, copy in verdicts.items():
            self.world.verdicts.setdefault(image_id, {})[other] = copy
            self.world.verdicts.setdefault(other, {})[image_id] = copy


class Objects:
    def __init__(self, world: World) -> None:
        self.world = world

    async def get(self, key: str) -> bytes:
        return await self.world.objects_get(key)


class Config:
    def __init__(self, cfg: MeshConfig) -> None:
        self.cfg = cfg

    async def get(self) -> MeshConfig:
        return self.cfg


def checker(world: World, cfg: MeshConfig) -> CopyChecker:
    return CopyChecker(
        pairs=Pairs(world),  # type: ignore[arg-type]
        records=world,
        neighbors=world,
        objects=Objects(world),
        config=Config(cfg),
    )


@pytest.fixture(scope="module")
def coffee() -> Image.Image:
    return photo("coffee")


async def test_only_candidates_above_the_cut_are_verified_from_a_wide_knn(coffee: Image.Image) -> None:
    w, h = coffee.size
    images = {
        "me": coffee,
        "crop": _jpeg(coffee.crop((0, 0, int(w * 0.8), int(h * 0.8)))),
        "quarter": _jpeg(coffee.crop((0, 0, w // 2, h // 2))),  # above the cut, no copy: a crop keeping 1/4
        "below": _jpeg(coffee.crop((0, 0, int(w * 0.9), h))),  # a copy, but its cosine is under the cut
    }
    world = World(images, {"crop": 0.93, "quarter": 0.8, "below": 0.6})
    cfg = MeshConfig(near_duplicate_threshold=0.675, ef_runtime=50)
    verdicts = await checker(world, cfg).check("me")
    assert verdicts == {"crop": True, "quarter": False}
    assert world.asked == [{"k": MAX_CANDIDATES, "exclude_id": "me", "ef_runtime": CANDIDATE_EF}]
    assert world.verdicts["crop"] == {"me": True}  # written both ways
    assert world.updates["me"] == {"copy_check": copies.COPY_CHECK_VERSION}
    # a second check of the same image verifies nothing again
    assert await checker(world, cfg).check("me") == {}


async def test_a_candidates_features_are_fetched_once_and_a_missing_one_is_skipped(
    coffee: Image.Image,
) -> None:
    w, h = coffee.size
    images = {"a": coffee, "b": _jpeg(coffee, 60), "c": _jpeg(coffee.crop((0, 0, int(w * 0.8), h)))}
    world = World(images, {"a": 0.95, "b": 0.95, "c": 0.9, "gone": 0.9})
    one = checker(world, MeshConfig())
    assert await one.check("a") == {"b": True, "c": True}  # "gone" has no features yet: skipped
    assert await one.check("b") == {"c": True}  # c's features come from memory, a's pair is known
    assert world.fetched["c"] == 1 and world.fetched["gone"] == 2
    assert world.asked[-1]["ef_runtime"] == max(MeshConfig().ef_runtime, CANDIDATE_EF)


class Queue:
    """The checker's queue: one image waiting for ``age_s``; counts the checker's claims."""

    def __init__(self, age_s: float) -> None:
        self.oldest, self.claims = time.time() - age_s, 0

    async def backlog(self) -> tuple[int, float | None]:
        return 1, self.oldest

    async def take(self, n: int) -> list[tuple[str, float]]:
        self.claims += 1
        return []


@pytest.mark.parametrize(
    ("busy", "age_s", "claims"),
    [
        (True, 1.0, 0),  # jobs in flight and a fresh queue: the checker leaves them the CPU
        (True, YIELD_MAX_S + 1, 1),  # but not past YIELD_MAX_S of lag: under a long load it checks anyway
        (False, 0.0, 1),  # no job in flight: it checks at once
    ],
)
async def test_the_checker_yields_to_jobs_in_flight_for_a_bounded_lag(
    busy: bool, age_s: float, claims: int
) -> None:
    queue = Queue(age_s)
    world = World({}, {})
    c = CopyChecker(
        pairs=queue,  # type: ignore[arg-type]
        records=world,
        neighbors=world,
        objects=Objects(world),
        config=Config(MeshConfig()),
        busy=lambda: busy,
    )
    await c._step()
    assert queue.claims == claims
