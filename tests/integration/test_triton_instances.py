"""The embedder over two real Triton instances (``MESH_TRITON_URL=a,b``): calls go to both, and when one is
killed (kill -9) while calls are in flight, none is lost: they move on to the other, counted in
``mesh_embedder_failovers_total``. Both Tritons are started by the same code as ``make run``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

import actors.adapters.embedder as embedder_module
from actors.adapters.embedder import Embedder
from ops.models.repository import ensure_models
from ops.stack.supervisor import Stack
from tests.helpers import running_stack, test_settings

MODEL = "efficientnet_lite0"
N = 160


@pytest.fixture(scope="module")
def tritons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    """Two Triton processes over one exported repository, each under its own supervisor, on its own ports."""
    data = tmp_path_factory.mktemp("two-tritons")
    repo: dict[str, object] = {"model_repository": data / "repo", "models": MODEL}
    ensure_models(test_settings(data, **repo))
    try:
        with (
            running_stack(
                Path(data / "a"), only=("triton",), export_models=False, timeout_s=120, **repo
            ) as a,
            running_stack(
                Path(data / "b"), only=("triton",), export_models=False, timeout_s=120, **repo
            ) as b,
        ):
            yield a, b
    finally:
        _kill_leftovers(data)


def _kill_leftovers(data: Path) -> None:
    """The Python-backend stubs of the killed Triton outlive it (their parent died with kill -9): end them,
    and their shared-memory regions, so nothing of the test keeps running."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if str(data) in cmdline and "triton_python_backend_stub" in cmdline:
            region = cmdline.split("\0")[2] if cmdline.count("\0") > 2 else ""
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
            if region.startswith("triton_python_backend_shm_region"):
                Path("/dev/shm", region).unlink(missing_ok=True)


def served(stack: Stack) -> float:
    """Inferences this Triton answered (its own metrics)."""
    s = stack.settings
    text = httpx.get(f"http://{s.host}:{s.triton_metrics_port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_inference_request_success{") and f'model="{MODEL}"' in line
    )


@pytest.mark.timeout(300)
async def test_calls_spread_over_two_tritons_and_none_is_lost_when_one_is_killed(
    tritons: tuple[Stack, Stack],
) -> None:
    a, b = tritons
    url = f"{a.settings.triton_grpc_url},{b.settings.triton_grpc_url}"
    rng = np.random.default_rng(7)
    async with Embedder(url, timeout_s=10, backoff_s=0.1) as e:
        shape = (await e.preprocess_spec(MODEL)).shape
        images = [rng.integers(0, 256, size=shape, dtype=np.uint8) for _ in range(N)]
        reference = await e.embed_image(MODEL, images[0])
        for image in images[1:9]:  # a warm-up that reaches both instances, in turn
            await e.embed_image(MODEL, image)
        assert served(a) > 0 and served(b) > 0, "the calls did not go to both instances"

        failovers = embedder_module.FAILOVERS.labels(a.settings.triton_grpc_url)
        before = failovers._value.get()
        done = 0
        gate = asyncio.Semaphore(8)
        underway = asyncio.Event()  # an eighth of the calls answered: the others are in flight on both

        async def one(image: np.ndarray) -> np.ndarray:
            nonlocal done
            async with gate:
                vector = await e.embed_image(MODEL, image)
            done += 1
            if done >= N // 8:
                underway.set()
            return vector

        calls = asyncio.gather(*(one(image) for image in images))
        await underway.wait()
        pid = a.pids()["triton"]
        assert pid
        os.kill(pid, signal.SIGKILL)
        a.stop_service("triton")  # held down: supervisord would start it again
        in_flight_at_kill = N - done
        vectors = await calls

    assert in_flight_at_kill > 0
    assert len(vectors) == N and all(
        np.isfinite(v).all() and abs(np.linalg.norm(v) - 1) < 1e-3 for v in vectors
    )
    assert np.allclose(vectors[0], reference, atol=1e-5)  # the same answer from either instance
    assert failovers._value.get() > before, "the kill hit no call: nothing moved to the other instance"
