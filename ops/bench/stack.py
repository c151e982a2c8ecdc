"""The benchmark's own mesh: the same ``ops.stack`` code as ``make run``, on free ports in its own folder.

Adds what benchmarks need on top: ``config.set`` as the ``ops`` user, a second coordinator process, the
coordinators' ``mesh_stage_seconds`` histograms, and pids for py-spy.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from actors import contract
from actors.contract import ConfigSet, MeshConfig
from actors.rpc import call
from actors.runtime import connect_nats
from actors.settings import Settings
from ops.stack.ports import free_port, private_settings
from ops.stack.prepare import prepare
from ops.stack.services import ROOT
from ops.stack.supervisor import Stack, StackError, settings_env


def bench_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for a private stack: every port free, every file under ``data_dir``; everything else (the log
    level included) as deployed."""
    return private_settings(data_dir, **overrides)


@dataclass
class StageTimes:
    """Cumulative ``mesh_stage_seconds`` sums and counts per stage, over every coordinator."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def minus(self, before: StageTimes) -> dict[str, dict[str, float]]:
        """Per stage: observations, total seconds and mean milliseconds between ``before`` and this."""
        out: dict[str, dict[str, float]] = {}
        for stage, total in self.sums.items():
            n = self.counts.get(stage, 0.0) - before.counts.get(stage, 0.0)
            s = total - before.sums.get(stage, 0.0)
            if n > 0:
                out[stage] = {"count": n, "seconds": round(s, 3), "mean_ms": round(1000 * s / n, 2)}
        return out


def parse_stage_times(texts: list[str]) -> StageTimes:
    st = StageTimes()
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name != "mesh_stage_seconds":
                continue
            for sample in family.samples:
                stage = sample.labels.get("stage", "")
                if sample.name.endswith("_sum"):
                    st.sums[stage] = st.sums.get(stage, 0.0) + sample.value
                elif sample.name.endswith("_count"):
                    st.counts[stage] = st.counts.get(stage, 0.0) + sample.value
    return st


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile of a cumulative histogram ``[(upper bound, count), ...]``, linear inside a bucket."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank, lower, below = q * total, 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def parse_copy_check(texts: list[str]) -> dict[str, Any]:
    hists: dict[str, dict[float, float]] = {"mesh_copy_check_seconds": {}, "mesh_copy_verify_seconds": {}}
    pairs: dict[str, float] = {}
    queue = 0.0
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.endswith("_bucket") and family.name in hists:
                    le = float(sample.labels["le"])
                    hists[family.name][le] = hists[family.name].get(le, 0.0) + sample.value
                elif sample.name == "mesh_copy_pairs_total":
                    verdict = sample.labels.get("verdict", "")
                    pairs[verdict] = pairs.get(verdict, 0.0) + sample.value
                elif sample.name == "mesh_copy_check_queue":
                    queue += sample.value
    out: dict[str, Any] = {"pairs": pairs, "queue": queue}
    for name, key in (
        ("mesh_copy_check_seconds", "per_image_ms"),
        ("mesh_copy_verify_seconds", "per_pair_ms"),
    ):
        buckets = sorted(hists[name].items())
        q50, q99 = _quantile(buckets, 0.5), _quantile(buckets, 0.99)
        out[key] = {
            "n": int(buckets[-1][1]) if buckets else 0,
            "p50": None if q50 is None else round(1000 * q50, 2),
            "p99": None if q99 is None else round(1000 * q99, 2),
        }
    return out


class BenchStack:
    """A whole mesh under supervisord for the benchmarks; ``close()`` stops everything it started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stack = Stack(settings)
        self.extra: dict[int, subprocess.Popen[bytes]] = {}  # http port -> extra coordinator

    @classmethod
    def start(cls, data_dir: Path, timeout_s: float = 300, **overrides: Any) -> BenchStack:
        """Export missing models, then start every service on free ports with its files in ``data_dir``."""
        if data_dir.exists():
            shutil.rmtree(data_dir)  # empty Redis, NATS and S3: every run starts from the same state
        data_dir.mkdir(parents=True)
        bench = cls(bench_settings(data_dir, **overrides))
        prepare(bench.settings)
        bench.stack.launch_supervisord()
        try:
            bench.stack.start(timeout_s=timeout_s)
        except StackError:
            bench.close()
            raise
        return bench

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.settings.gateway_port}"

    @property
    def coordinator_ports(self) -> list[int]:
        return [self.settings.coordinator_http_port, *self.extra]

    def pid(self, service: str) -> int | None:
        return self.stack.pids().get(service)

    # --- runtime configuration ----------------------------------------------------------------------
    async def set_config(self, key: str, value: Any) -> MeshConfig:
        """``config.set`` as the ops user; waits out the actors' config cache (2 s) before returning."""
        nc = await connect_nats(self.settings, "ops", name="bench")
        try:
            cfg = await call(nc, contract.CONFIG_SET, ConfigSet(key=key, value=value), MeshConfig, 5.0)
        finally:
            await nc.close()
        await asyncio.sleep(2.5)
        return cfg

    # --- coordinators ---------------------------------------------------------------------------------
    def add_coordinator(self, timeout_s: float = 60) -> int:
        """Start another coordinator with the same settings but its own HTTP port; returns its pid."""
        port = free_port()
        env = {**os.environ, **settings_env(self.settings), "MESH_COORDINATOR_HTTP_PORT": str(port)}
        log = open(self.stack.log_dir / f"coordinator-{port}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "actors", "coordinator"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.extra[port] = proc
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"http://{self.settings.host}:{port}/health", timeout=2).status_code == 200:
                    return proc.pid
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise StackError(f"the extra coordinator on :{port} did not become healthy")
            time.sleep(0.5)

    def remove_coordinators(self) -> None:
        for port, proc in list(self.extra.items()):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            del self.extra[port]

    def stage_times(self) -> StageTimes:
        texts = []
        for port in self.coordinator_ports:
            r = httpx.get(f"http://{self.settings.host}:{port}/metrics", timeout=10)
            r.raise_for_status()
            texts.append(r.text)
        return parse_stage_times(texts)

    def copy_check_times(self) -> dict[str, Any]:
        """The copy checker's cost so far, from the coordinators' histograms: per image and per pair (p50,
        p99 by interpolating the buckets), pairs by verdict, and the queue it still has."""
        texts = []
        for port in self.coordinator_ports:
            r = httpx.get(f"http://{self.settings.host}:{port}/metrics", timeout=10)
            r.raise_for_status()
            texts.append(r.text)
        return parse_copy_check(texts)

    def close(self) -> None:
        self.remove_coordinators()
        self.stack.shutdown()
