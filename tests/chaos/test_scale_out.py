"""Horizontal scale is correct, not only fast: two coordinators, two indexers and two gateways on one ingest.

The second copies run as plain subprocesses with the stack's settings and their own HTTP ports, which is how an
operator scales out (DESIGN.md section 2: more copies, queue groups, the shared durable consumer).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from actors.settings import Settings
from ops.stack.services import ROOT
from ops.stack.supervisor import settings_env
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


def counter(metrics: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus counter's samples whose labels include ``labels``."""
    total = 0.0
    for m in re.finditer(rf"^{name}(?:\{{([^}}]*)\}})? (\S+)$", metrics, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


async def metrics_of(client: httpx.AsyncClient, url: str) -> str:
    r = await client.get(f"{url}/metrics")
    assert r.status_code == 200, r.text
    return r.text


async def test_two_of_each_ingest_every_image_once(chaos_settings: Settings) -> None:
    s = chaos_settings
    images = await asyncio.to_thread(distinct_jpegs, N, (192, 144), SEED)
    coord1 = f"http://{s.host}:{s.coordinator_http_port}"
    index1 = f"http://{s.host}:{s.indexer_http_port}"
    gw1 = f"http://{s.host}:{s.gateway_port}"
    with replicas(s) as extra:
        async with (
            httpx.AsyncClient(timeout=30) as plain,
            httpx.AsyncClient(base_url=gw1, timeout=30) as a,
            httpx.AsyncClient(base_url=extra["gateway-2"].url, timeout=30) as b,
        ):
            done_before = counter(await metrics_of(plain, coord1), "mesh_jobs_total", outcome="done")
            upserts_before = counter(await metrics_of(plain, index1), "mesh_index_upserts_total")
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
                "coordinator": counter(await metrics_of(plain, coord1), "mesh_jobs_total", outcome="done")
                - done_before,
                "coordinator-2": counter(
                    await metrics_of(plain, extra["coordinator-2"].url), "mesh_jobs_total", outcome="done"
                ),
            }
            upserts = {
                "indexer": counter(await metrics_of(plain, index1), "mesh_index_upserts_total")
                - upserts_before,
                "indexer-2": counter(
                    await metrics_of(plain, extra["indexer-2"].url), "mesh_index_upserts_total"
                ),
            }
        print(
            f"\nscale-out: {N} images through 2 gateways in {elapsed:.1f}s "
            f"({N / elapsed:.1f}/s); jobs done per coordinator {done}; upserts per indexer {upserts}"
        )
        assert_ingest_invariants(s, ids, images, {**recs_a, **recs_b})
        assert all(v > 0 for v in done.values()), f"a coordinator did no work: {done}"
        assert all(v > 0 for v in upserts.values()), f"an indexer did no work: {upserts}"
        # every image was processed to the end at least once (a redelivered job that finds it done is skipped)
        assert sum(done.values()) >= N, done
