"""Horizontal scale is correct, not only fast: two coordinators, two indexers and two gateways on one ingest,
every image processed once (no fault: no repeated work, by the log tally and by the indexers' counters).

The second copies run as plain subprocesses with the stack's settings and their own HTTP ports, which is how an
operator scales out (DESIGN.md section 2: more copies, queue groups, the shared durable consumer).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from actors.settings import Settings
from ops.stack.services import ROOT
from ops.stack.supervisor import settings_env
from tests.chaos.audit import assert_nothing_left, samples, scrape, upsert_counters
from tests.chaos.conftest import assert_ingest_invariants, ingest, size
from tests.conftest import free_port
from tests.helpers import wait_terminal
from tests.images import distinct_jpegs

N = size(300, 40)
SEED = 5_200_000


@dataclass
class Replica:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def start_replica(settings: Settings, name: str, argv: list[str], port_var: str) -> Replica:
    port = free_port()
    env = {**os.environ, **settings_env(settings), port_var: str(port)}
    log = settings.log_dir.resolve() / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, *argv], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    return Replica(name, port, proc, log)


def wait_health(replica: Replica, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert replica.proc.poll() is None, f"{replica.name} exited: {replica.log.read_text()[-2000:]}"
        try:
            if httpx.get(f"{replica.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{replica.name} not healthy: {replica.log.read_text()[-2000:]}"
        time.sleep(0.5)


def stop_replica(replica: Replica, timeout_s: float = 60) -> int | None:
    """SIGTERM (drain), then the exit status; None if it had to be killed."""
    if replica.proc.poll() is None:
        replica.proc.send_signal(signal.SIGTERM)
    try:
        return replica.proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        replica.proc.kill()
        replica.proc.wait()
        return None


@contextmanager
def replicas(settings: Settings) -> Iterator[dict[str, Replica]]:
    """A second coordinator, indexer and gateway; stopped with SIGTERM, and each must exit 0."""
    specs = {
        "coordinator-2": (["-m", "actors", "coordinator"], "MESH_COORDINATOR_HTTP_PORT"),
        "indexer-2": (["-m", "actors", "indexer"], "MESH_INDEXER_HTTP_PORT"),
        "gateway-2": (["-m", "gateway"], "MESH_GATEWAY_PORT"),
    }
    started: dict[str, Replica] = {}
    codes: dict[str, int | None] = {}
    try:
        for name, (argv, port_var) in specs.items():
            started[name] = start_replica(settings, name, argv, port_var)
        for r in started.values():
            wait_health(r)
        yield started
    finally:
        for name, r in started.items():
            codes[name] = stop_replica(r)
        print(f"replica exit codes: {codes}")
    # a negative code is a death by that signal: a drained process must exit 0 on its own, not re-raise SIGTERM
    assert all(code == 0 for code in codes.values()), {
        n: (c, started[n].log.read_text()[-600:]) for n, c in codes.items() if c != 0
    }


def done_jobs(url: str) -> float:
    """A coordinator's ``mesh_jobs_total{outcome="done"}``."""
    return samples(scrape(url), "mesh_jobs_total", outcome="done")


async def test_two_of_each_ingest_every_image_once(chaos_settings: Settings) -> None:
    s = chaos_settings
    images = await asyncio.to_thread(distinct_jpegs, N, (192, 144), SEED)
    coord1 = f"http://{s.host}:{s.coordinator_http_port}"
    index1 = f"http://{s.host}:{s.indexer_http_port}"
    gw1 = f"http://{s.host}:{s.gateway_port}"
    with replicas(s) as extra:
        async with (
            httpx.AsyncClient(base_url=gw1, timeout=30) as a,
            httpx.AsyncClient(base_url=extra["gateway-2"].url, timeout=30) as b,
        ):
            indexers = {"indexer": index1, "indexer-2": extra["indexer-2"].url}
            done_before = await asyncio.to_thread(done_jobs, coord1)
            upserts_before = {n: await asyncio.to_thread(upsert_counters, [u]) for n, u in indexers.items()}
            started = time.monotonic()
            # clients spread over both gateways: even images through the first, odd through the second
            (ids_a, _), (ids_b, _) = await asyncio.gather(
                ingest(a, images[0::2], 6), ingest(b, images[1::2], 6)
            )
            ids = [""] * N
            ids[0::2], ids[1::2] = ids_a, ids_b
            # read every record through the other gateway than the one that accepted it
            recs_a = await wait_terminal(b, ids_a, timeout_s=size(600, 180))
            recs_b = await wait_terminal(a, ids_b, timeout_s=size(600, 180))
            elapsed = time.monotonic() - started
            done = {
                "coordinator": await asyncio.to_thread(done_jobs, coord1) - done_before,
                "coordinator-2": await asyncio.to_thread(done_jobs, extra["coordinator-2"].url),
            }
            upserts = {
                n: await asyncio.to_thread(upsert_counters, [u]) - upserts_before[n]
                for n, u in indexers.items()
            }
        print(
            f"\nscale-out: {N} images through 2 gateways in {elapsed:.1f}s "
            f"({N / elapsed:.1f}/s); jobs done per coordinator {done}; upserts per indexer {upserts}"
        )
        # no fault: every image processed once (the log tally, per image, and the counters agree)
        figures = assert_ingest_invariants(s, ids, images, {**recs_a, **recs_b})
        counted = sum(upserts.values(), Counter[str]())
        assert (counted["created"], counted["updated"]) == (
            figures["upserts_created"],
            figures["upserts_updated"],
        ), (counted, figures)
        assert all(sum(v.values()) > 0 for v in upserts.values()), f"an indexer did no work: {upserts}"
        assert all(v > 0 for v in done.values()), f"a coordinator did no work: {done}"
        assert sum(done.values()) == N, done
    await assert_nothing_left(s)
