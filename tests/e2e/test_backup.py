"""``mesh backup`` and ``mesh restore`` (ops/backup) on a private mesh: back up while uploads go on (the
coordinators stopped, so those uploads are unfinished in the backup; one lands between the streams' snapshot and
the Redis pass, the worst moment: its record is copied, its job is not), ingest more, wipe every data directory
(NATS, Redis, the S3 store), restore with ``mesh restore``, start the mesh again.

What a user sees afterwards: ``mesh check`` is clean; every image finished before the backup comes back with
the same record, the same similar images, the same search and listing answers, and its bytes; every upload
accepted while the backup ran is either whole (its bytes, and done with its vector once the mesh has caught up)
or absent; what was uploaded after the backup is absent. The concurrent uploads are shown to overlap the backup
(accepted between its start and its end), so the consistency rule was tested on work in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ops.backup.backup import backup
from ops.stack.bootstrap import bootstrap
from ops.stack.supervisor import Stack, settings_env
from tests.helpers import running_stack, upload_id, wait_status, wait_terminal, wait_until
from tests.images import distinct_jpegs

BEFORE, AFTER = 8, 3
TERMINAL = ("done", "error")
SERVERS = ("nats", "redis", "s3")
MESH = ("triton", "config", "indexer", "coordinator", "gateway")  # in start order (ops/stack/services.py)


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("backup"), model_repository=models_dir, models="efficientnet_lite0"
    ) as stack:
        yield stack


def endless_jpegs() -> Iterator[bytes]:
    for seed in itertools.count(1234):
        yield from distinct_jpegs(10, seed=seed)


def base_url(stack: Stack) -> str:
    return f"http://{stack.settings.host}:{stack.settings.gateway_port}"


async def mesh_cli(stack: Stack, *args: str) -> tuple[int, str, str]:
    """``mesh ARGS`` as an operator would run it, with the stack's settings; (exit code, stdout, stderr)."""
    env = {**os.environ, **settings_env(stack.settings)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return int(proc.returncode or 0), out.decode(), err.decode()


async def observe(client: httpx.AsyncClient, ids: list[str], run: str) -> dict[str, Any]:
    """What a user sees of these images: records, similar images, a text search, a filtered listing, bytes."""
    seen: dict[str, Any] = {"records": {}, "similar": {}, "content": {}}
    for image_id in ids:
        seen["records"][image_id] = (await client.get(f"/images/{image_id}")).json()
        r = await client.get(f"/images/{image_id}/similar", params={"k": 5, "filter": f"run:{run}"})
        assert r.status_code == 200, r.text
        seen["similar"][image_id] = [(h["image_id"], round(h["score"], 5)) for h in r.json()["results"]]
        seen["content"][image_id] = (await client.get(f"/images/{image_id}/content")).content
    r = await client.get("/search", params={"q": "a photo", "k": 5, "filter": f"run:{run}"})
    assert r.status_code == 200, r.text
    seen["search"] = [(h["image_id"], round(h["score"], 5)) for h in r.json()["results"]]
    r = await client.get("/images", params={"filter": f"run:{run}", "limit": 100})
    seen["listing"] = [i["image_id"] for i in r.json()["images"]]
    return seen


def copy_queue(stack: Stack) -> int:
    """Images waiting for the copy checker (its verdicts land after ``done``)."""
    with redis.Redis.from_url(stack.settings.redis_server_url) as r:
        return int(r.zcard(f"{stack.settings.redis_prefix}:copyq"))


def wipe(stack: Stack) -> None:
    """Every data directory of the stack's servers, gone."""
    for name in SERVERS:
        shutil.rmtree(stack.settings.data_dir / name)


async def test_restore_rebuilds_the_mesh_as_it_was_at_the_backup(private: Stack, tmp_path: Path) -> None:
    run, images = f"bkp{int(time.time())}", endless_jpegs()
    backup_dir = tmp_path / "backup"
    async with httpx.AsyncClient(base_url=base_url(private), timeout=60) as client:
        before = [
            await upload_id(client, next(images), metadata={"run": run, "n": str(i)}) for i in range(BEFORE)
        ]
        await wait_status(client, before, ["done"], timeout_s=300)
        await wait_until(  # the copy checker's verdicts land after done: the backup point is after them
            "the copy checker went over the images",
            lambda: copy_queue(private) == 0,
            timeout_s=120,
            every_s=0.5,
        )

        # uploads go on while the backup runs; with the coordinators stopped, every one of them is unfinished
        # in the backup, and the one made between the streams' snapshot and the Redis pass has its record
        # there but not its job: restore must queue it again
        private.stop_service("coordinator")
        accepted: list[tuple[str, float]] = []
        between: list[str] = []
        backing_up = asyncio.Event()

        async def keep_uploading() -> None:
            while not backing_up.is_set() or len(accepted) < 2:
                image_id = await upload_id(client, next(images), metadata={"run": run + "d"})
                accepted.append((image_id, time.time()))
                await asyncio.sleep(0.1)

        async def progress(part: str) -> None:
            if part == "jetstream":
                between.append(await upload_id(client, next(images), metadata={"run": run + "d"}))

        uploads = asyncio.create_task(keep_uploading())
        await asyncio.sleep(0.2)
        m = await backup(private.settings, backup_dir, progress)
        backing_up.set()
        await uploads
        private.start_service("coordinator")
        assert m.done_without_vector == 0 and m.dropped == 0 and m.done == BEFORE
        overlapping = [i for i, at in accepted if m.started_at <= at <= m.finished_at]
        assert overlapping, f"no upload was accepted while the backup ran: {accepted} vs {m}"

        at_backup = await observe(client, before, run)
        after = [await upload_id(client, next(images), metadata={"run": run + "a"}) for _ in range(AFTER)]
        await wait_terminal(client, after + between + [i for i, _ in accepted], timeout_s=300)

    private.shutdown()
    wipe(private)
    private.launch_supervisord()
    for name in SERVERS:
        private.start_service(name)
    await asyncio.to_thread(
        bootstrap, private.settings
    )  # what a fresh stack's start-up does: empty streams, the layout stamp

    code, out, err = await mesh_cli(private, "restore", str(backup_dir), "--json")
    assert code == 0, err
    restored = json.loads(out)
    assert restored["images"] == m.images > BEFORE
    assert restored["jobs_published"] >= len(between) == 1

    for name in MESH:
        private.start_service(name, timeout_s=240)
    async with httpx.AsyncClient(base_url=base_url(private), timeout=60) as client:
        concurrent = [i for i, _ in accepted] + between
        present = [i for i in concurrent if (await client.get(f"/images/{i}")).status_code == 200]
        assert between[0] in present
        await wait_status(client, before + present, ["done"], timeout_s=300, through_outages=True)
        for image_id in after + [i for i in concurrent if i not in present]:
            assert (await client.get(f"/images/{image_id}")).status_code == 404, image_id

        assert await observe(client, before, run) == at_backup
        for image_id in present:  # whole: its bytes, and a vector (similar answers)
            assert (await client.get(f"/images/{image_id}/content")).status_code == 200
            assert (await client.get(f"/images/{image_id}/similar", params={"k": 1})).status_code == 200

    code, out, err = await mesh_cli(private, "check", "--json")
    assert code == 0, out + err
    assert json.loads(out)["ok"] is True
