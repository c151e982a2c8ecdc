"""Near-duplicate groups kept at index time (``actors/group_keeper.py``, ``group_upkeep.py``, the scripts of
``actors/adapters/group_store.py``) against the real Redis with RediSearch of the session's servers.

Every test checks the stored state itself (each image in one group, each group listed once under its smallest
id, no group under two) and the groups against brute force: the connected components of "cosine >= threshold"
over the vectors stored at the end.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pytest
import redis

from actors.adapters.group_store import GroupStore, KeptState
from actors.adapters.vector_index import VectorIndex
from actors.contract import GroupsRequest, MeshConfig
from actors.duplicates import connected_components, state_field
from actors.errors import PermanentError, RetryableError
from actors.group_keeper import GroupKeeper
from actors.group_upkeep import GroupUpkeep
from actors.indexer import Indexer
from actors.settings import Settings
from ops.bench import groups as bench_groups

MODEL, T = "m", 0.8
R = TypeVar("R")
DIM = 64


@dataclass
class LiveConfig:
    """A Config DB with the value a test sets: its watch up (``live``), else its service answering (``up``)."""

    value: MeshConfig
    live: bool = True
    up: bool = True

    async def get(self) -> MeshConfig:
        return self.value

    async def read(self) -> MeshConfig:
        if not self.up:
            raise RetryableError("config.get: no responders")
        return self.value


@dataclass
class Mesh:
    """What one test has: its settings (own prefix), an indexer's parts, and the config the upkeep follows."""

    settings: Settings
    index: VectorIndex
    store: GroupStore
    keeper: GroupKeeper
    config: LiveConfig
    upkeep: GroupUpkeep

    async def add(self, image_id: str, vector: np.ndarray, keeper: GroupKeeper | None = None) -> None:
        """What the indexer's ``index.upsert`` does: write the vector, then join it."""
        k = keeper or self.keeper
        _, changed = await k.index.upsert_changed(MODEL, image_id, vector)
        await retrying(lambda: k.upserted(MODEL, image_id, vector, changed=changed))

    async def remove(self, image_id: str, keeper: GroupKeeper | None = None) -> None:
        """What the indexer's ``index.delete`` does: delete the vector, then take it out of its group."""
        k = keeper or self.keeper
        await k.index.delete(image_id, MODEL)
        await retrying(lambda: k.deleted(image_id, MODEL))

    async def settle(self) -> None:
        """Upkeep rounds until none has work left (keeps, builds, splits, drops)."""
        for _ in range(1000):
            if not await retrying(self.upkeep.step):
                return
        pytest.fail("the upkeep never settled")

    async def state(self, threshold: float = T) -> KeptState:
        [state] = [s for s in await self.store.states(MODEL) if s.threshold == threshold]
        return state

    async def groups(self, threshold: float = T, limit: int = 1000) -> list[list[str]]:
        """Every stored group, page after page."""
        out: list[list[str]] = []
        cursor = ""
        while True:
            page = await self.keeper.page(MODEL, threshold, cursor, limit)
            assert page.status == "ready", page
            out += page.groups
            if page.next_cursor is None:
                assert len(out) == page.total_groups
                return out
            cursor = page.next_cursor


async def retrying(call: Callable[[], Awaitable[R]], tries: int = 100) -> R:
    """RediSearch refuses queries for a moment after an index is created (``index_loading``): wait it out."""
    for _ in range(tries):
        try:
            return await call()
        except RetryableError as e:
            if e.code != "index_loading":
                raise
            await asyncio.sleep(0.05)
    pytest.fail("the index stayed loading")


@pytest.fixture
async def mesh(server_settings: Settings, request: pytest.FixtureRequest) -> AsyncIterator[Mesh]:
    prefix = "t_groups_" + re.sub(r"[^A-Za-z0-9]+", "_", request.node.name)[:50]
    settings = server_settings.model_copy(update={"redis_prefix": prefix})
    async with VectorIndex.from_settings(settings) as index, GroupStore.from_settings(settings) as store:
        keeper = GroupKeeper(index, store)
        config = LiveConfig(MeshConfig(active_model=MODEL, near_duplicate_threshold=T))
        upkeep = GroupUpkeep(keeper, config, retire_grace_s=0.0, tick_s=0.01)
        yield Mesh(settings, index, store, keeper, config, upkeep)
        for model in await index.models():
            await index.drop(model)
    with redis.Redis.from_url(settings.redis_server_url) as r:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            r.delete(*keys)


def at(degrees: float, plane: int = 0) -> np.ndarray:
    """A unit vector at an angle in one plane of its own (vectors of two planes are orthogonal)."""
    v = np.zeros(DIM, np.float32)
    rad = np.radians(degrees)
    v[2 * plane], v[2 * plane + 1] = np.cos(rad), np.sin(rad)
    return v


def clustered(n: int, clusters: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` unit vectors around ``clusters`` random centres: pairs of one cluster near 0.9, of two near 0."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, DIM))
    out = {}
    for i in range(n):
        v = centres[i % clusters] / np.linalg.norm(centres[i % clusters])
        v = v + rng.standard_normal(DIM) * 0.04
        out[f"img{i:03d}"] = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def brute_force(vectors: dict[str, np.ndarray], threshold: float = T) -> list[list[str]]:
    ids = sorted(vectors)
    m = np.stack([vectors[i] for i in ids])
    sims = m @ m.T
    # a pair this close to the cut could go either way between float32 paths: the data must stay clear of it
    assert not np.any(np.abs(sims - threshold) < 1e-4), "a pair sits on the threshold: change the seed"
    edges = [(ids[a], ids[b]) for a, b in zip(*np.nonzero(sims >= threshold), strict=True) if a < b]
    return connected_components(ids, edges)


def layout(settings: Settings, state: KeptState) -> dict[str, list[str]]:
    """The stored state read raw, every invariant checked: ``{group id: members}``."""
    ns = f"{settings.redis_prefix}:dup:{state.gen}"
    with redis.Redis.from_url(settings.redis_server_url, decode_responses=True) as r:
        of = r.hgetall(f"{ns}:of")
        first = set(r.zrange(f"{ns}:first", 0, -1))
        groups = {k[len(f"{ns}:m:") :]: r.zrange(k, 0, -1) for k in r.scan_iter(match=f"{ns}:m:*")}
    assert all(len(m) >= 2 for m in groups.values()), groups
    assert of == {i: g for g, members in groups.items() for i in members}, "an image in two groups, or lost"
    assert first == {m[0] for m in groups.values()}, "the page index does not list every group once"
    return groups


async def test_inserts_join_groups_and_merge_them(mesh: Mesh) -> None:
    await mesh.settle()  # the config asks for m at 0.8: kept, built (nothing to scan yet), ready
    vectors = {
        "a": at(0),
        "b": at(20),  # cos 0.94 with a
        "c": at(0, plane=1),
        "f": at(70),  # cos 0.64 with b: apart
        "g": at(90),
    }
    for image_id, v in vectors.items():
        await mesh.add(image_id, v)
    assert await mesh.groups() == [["a", "b"], ["f", "g"]]
    await mesh.add("d", at(10, plane=1))
    await mesh.add("h", at(45))  # cos 0.91 with b and with f: the two groups become one
    vectors |= {"d": at(10, plane=1), "h": at(45)}
    assert await mesh.groups() == [["a", "b", "f", "g", "h"], ["c", "d"]] == brute_force(vectors)
    assert sorted(map(sorted, layout(mesh.settings, await mesh.state()).values())) == await mesh.groups()

    # a redelivered upsert (the same vector) changes nothing; a changed vector leaves its old group
    await mesh.add("h", at(45))
    assert await mesh.groups() == [["a", "b", "f", "g", "h"], ["c", "d"]]
    await mesh.add("h", at(20, plane=1))  # now near c and d only: a-b and f-g fall apart again
    assert await mesh.groups() == [["a", "b"], ["c", "d", "h"], ["f", "g"]]
    layout(mesh.settings, await mesh.state())


async def test_a_delete_splits_the_group_it_held_together_and_only_that_group(mesh: Mesh) -> None:
    await mesh.settle()
    chain = {"a": at(0), "a2": at(5), "b": at(30), "c": at(60), "c2": at(65)}  # b bridges a.. and c..
    other = {"x": at(0, plane=2), "y": at(10, plane=2)}
    for image_id, v in (chain | other).items():
        await mesh.add(image_id, v)
    assert await mesh.groups() == [["a", "a2", "b", "c", "c2"], ["x", "y"]]
    state = await mesh.state()
    before = layout(mesh.settings, state)
    x_group = next(g for g, m in before.items() if "x" in m)

    await mesh.remove("b")
    assert await mesh.groups() == [["a", "a2"], ["c", "c2"], ["x", "y"]]
    after = layout(mesh.settings, state)
    assert after[x_group] == ["x", "y"]  # untouched: the other group was not recomputed
    assert not await mesh.store.dirty(state, 10)

    await mesh.remove("a2")  # a group of two loses one: dissolved
    await mesh.remove("nobody")  # nothing to take out
    assert await mesh.groups() == [["c", "c2"], ["x", "y"]]
    left = {k: v for k, v in (chain | other).items() if k not in {"b", "a2"}}
    assert await mesh.groups() == brute_force(left)


async def test_a_large_group_is_split_in_the_background_and_is_a_superset_meanwhile(mesh: Mesh) -> None:
    mesh.keeper.inline_split = 2  # a delete leaves every group of three or more to the upkeep
    await mesh.settle()
    for image_id, deg in {"a": 0, "a2": 5, "b": 30, "c": 60, "c2": 65}.items():
        await mesh.add(image_id, at(deg))
    await mesh.remove("b")
    state = await mesh.state()
    assert len(await mesh.store.dirty(state, 10)) == 1
    assert await mesh.groups() == [["a", "a2", "c", "c2"]]  # no pair missing; one too many until split
    await mesh.settle()
    assert await mesh.groups() == [["a", "a2"], ["c", "c2"]]
    assert not await mesh.store.dirty(state, 10)
    layout(mesh.settings, state)


async def test_two_indexers_inserting_and_deleting_at_once_keep_the_groups_whole(
    mesh: Mesh, server_settings: Settings
) -> None:
    """Two indexers (their own Redis clients), every upsert of each at once: the stored groups equal brute
    force; then deletes racing with more inserts."""
    await mesh.settle()
    async with (
        VectorIndex.from_settings(mesh.settings) as index2,
        GroupStore.from_settings(mesh.settings) as store2,
    ):
        second = GroupKeeper(index2, store2)
        vectors = clustered(160, clusters=16, seed=5)
        ids = list(vectors)
        await mesh.add(ids[0], vectors[ids[0]])  # the index exists before the race
        await asyncio.gather(
            *(mesh.add(i, vectors[i], keeper=(mesh.keeper, second)[n % 2]) for n, i in enumerate(ids[1:120]))
        )
        stored = {i: vectors[i] for i in ids[:120]}
        assert await mesh.groups() == brute_force(stored)
        assert len(await mesh.groups()) == 16
        layout(mesh.settings, await mesh.state())

        gone = ids[1:120:3]
        await asyncio.gather(
            *(mesh.remove(i, keeper=(mesh.keeper, second)[n % 2]) for n, i in enumerate(gone)),
            *(mesh.add(i, vectors[i], keeper=(second, mesh.keeper)[n % 2]) for n, i in enumerate(ids[120:])),
        )
        await mesh.settle()  # a split that kept meeting a join is finished by the upkeep
        left = {i: v for i, v in vectors.items() if i not in gone}
        assert await mesh.groups() == brute_force(left)
        layout(mesh.settings, await mesh.state())


async def test_a_join_that_saw_an_image_before_its_delete_does_not_bring_it_back(mesh: Mesh) -> None:
    """The interleaving concurrency makes rare, forced: z's range query finds x, x is deleted (vector, then its
    group), and only then z's join runs. The join skips images whose vector is gone."""
    await mesh.settle()
    await mesh.add("x", at(0))
    await mesh.add("y", at(10))
    await mesh.index.upsert(MODEL, "z", at(5))
    seen = await mesh.index.query(MODEL, at(5), 10, exclude_id="z", min_score=T)
    assert {h.image_id for h in seen} == {"x", "y"}
    await mesh.remove("x")
    state = await mesh.state()
    assert await mesh.store.join(state, mesh.index.key_prefix(MODEL), "z", ["x", "y"]) == 2  # z and y
    assert await mesh.groups() == [["y", "z"]]
    # and a join for an image deleted before it ran changes nothing
    await mesh.index.delete("z", MODEL)
    assert await mesh.store.join(state, mesh.index.key_prefix(MODEL), "z", ["y"]) == -2


async def test_a_state_is_built_from_the_stored_vectors_then_follows_the_config(mesh: Mesh) -> None:
    """Vectors stored before their groups were kept are grouped by the build; a new threshold is built as a new
    state, and the old one is retired and deleted."""
    vectors = clustered(90, clusters=9, seed=11)
    for image_id, v in vectors.items():  # plain upserts: nothing kept yet
        await mesh.index.upsert(MODEL, image_id, v)
    assert (await mesh.keeper.page(MODEL, T, "", 10)).status == "none"
    mesh.upkeep.build_batch = 20
    await mesh.settle()
    state = await mesh.state()
    assert state.status == "ready" and state.scanned >= 90
    assert await mesh.groups(limit=2) == await mesh.groups() == brute_force(vectors)

    mesh.config.value = MeshConfig(active_model=MODEL, near_duplicate_threshold=0.95)
    await mesh.settle()
    assert [s.threshold for s in await mesh.store.states()] == [0.95]
    assert await mesh.groups(0.95) == brute_force(vectors, 0.95)
    assert (await mesh.keeper.page(MODEL, T, "", 10)).status == "none"
    with redis.Redis.from_url(mesh.settings.redis_server_url) as r:
        left = {k.decode() for k in r.scan_iter(match=f"{mesh.settings.redis_prefix}:dup:{state.gen}:*")}
    assert left == set() and not await mesh.store.dropping()

    mesh.config.live = False  # the watch down: the config service's answer is followed
    mesh.config.value = MeshConfig(active_model=MODEL, near_duplicate_threshold=0.9)
    await mesh.settle()
    assert [s.field for s in await mesh.store.states()] == [state_field(MODEL, 0.9)]
    mesh.config.up = False  # and a config that may be stale keeps and retires nothing
    mesh.config.value = MeshConfig(active_model=MODEL, near_duplicate_threshold=0.5)
    await mesh.settle()
    assert [s.field for s in await mesh.store.states()] == [state_field(MODEL, 0.9)]


async def test_index_groups_reads_the_kept_state_and_bounds_every_other_threshold(mesh: Mesh) -> None:
    await mesh.settle()
    vectors = clustered(40, clusters=4, seed=3)
    for image_id, v in vectors.items():
        await mesh.add(image_id, v)
    indexer = Indexer(mesh.index, mesh.keeper)

    kept = await indexer.groups(GroupsRequest(model=MODEL, threshold=T, limit=3, max_images=10))
    assert kept.kept and kept.images == 40 and kept.total_groups == 4 and len(kept.groups) == 3
    assert kept.next_cursor == kept.groups[-1][0]

    other = await indexer.groups(GroupsRequest(model=MODEL, threshold=0.5, limit=10))
    assert not other.kept and other.groups == brute_force(vectors, 0.5)
    with pytest.raises(PermanentError, match=r"over max_images=10 .* kept near_duplicate_threshold 0.8"):
        await indexer.groups(GroupsRequest(model=MODEL, threshold=0.5, max_images=10))


async def test_the_bench_hook_measures_building_keeping_and_paging(mesh: Mesh) -> None:
    """``ops/bench/groups.py`` at a tiny size: figures produced and sane, never timed."""
    vectors = clustered(60, clusters=6, seed=17)
    ids = list(vectors)
    for image_id in ids[:40]:
        await mesh.index.upsert(MODEL, image_id, vectors[image_id])
    await retrying(lambda: mesh.index.query(MODEL, vectors[ids[0]], 1))  # the new index scanned
    built = await bench_groups.build(mesh.keeper, MODEL, T)
    assert built["images"] >= 40 and built["seconds"] > 0
    cost = await bench_groups.keeping_cost(
        mesh.keeper, MODEL, ids[40:], np.stack([vectors[i] for i in ids[40:]])
    )
    assert cost["keep_groups"]["n"] == 20 and cost["keep_groups"]["p50_ms"] > 0
    paged = await bench_groups.page_latency(mesh.keeper, MODEL, T, limit=2)
    assert paged["n"] == 3 and paged["total_groups"] == 6
    assert await mesh.groups() == brute_force(vectors)
