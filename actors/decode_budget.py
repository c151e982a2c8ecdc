"""The decode budget: how many bytes of decoded pixels one process may hold at once, shared by every full decode.

A full decode of a 49 MP image holds about 200 MB (Pillow keeps RGB in 4 bytes a pixel), so a count of
concurrent decodes says nothing about memory. :class:`DecodeBudget` is a byte-weighted asyncio semaphore:
``hold(n)`` waits until ``n`` bytes are free, in arrival order (a large image is never starved by a stream of
small ones), and gives them back when the block ends, also when it raises or is cancelled. A single image
larger than the whole budget waits until nothing else is held and then runs alone (no deadlock); refusing
images over the pixel cap is the caller's job, from the header, before it asks for bytes.

The gateway (validation, ``/encode``, ``/search/image``) and the coordinator (``actors.imaging``) each keep one
budget per process, sized by ``MESH_DECODE_BUDGET_BYTES``. ``release_freed_memory_promptly`` makes glibc hand
large freed buffers back to the kernel at once, so the process's RSS follows the budget instead of every
worker thread's malloc arena keeping its own high-water mark.

A leaf module: no project imports, so the gateway and the actors may both use it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import structlog
from prometheus_client import Gauge

log = structlog.get_logger("decode_budget")

DEFAULT_DECODE_BUDGET_BYTES: Final = 256 * 1024 * 1024
# glibc's mallopt parameter, and the size from which an allocation gets its own mapping (returned on free)
_M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD_BYTES: Final = 1024 * 1024

IN_USE = Gauge("mesh_decode_budget_bytes_in_use", "Bytes of decoded pixels held under the decode budget")
WAITING = Gauge("mesh_decode_budget_waiting", "Decodes waiting for room in the decode budget")


class DecodeBudget:
    """A byte-weighted FIFO semaphore for decodes. Use ``async with budget.hold(nbytes): ...``."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"a decode budget needs a positive capacity, not {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        return sum(1 for _, fut in self._waiters if not fut.done())

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the block (0 or less: nothing to hold, never waits)."""
        await self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)

    async def acquire(self, nbytes: int) -> None:
        """Wait until ``nbytes`` are free and everyone who asked before has been served; then take them.

        More than the capacity is granted once nothing is held. Cancelled while waiting: nothing is taken.
        """
        if nbytes <= 0:
            return
        if not self._waiters and self._fits(nbytes):
            self._take(nbytes)
            return
        if nbytes > self.capacity:
            log.info("decode_budget.oversize", nbytes=nbytes, capacity=self.capacity)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((nbytes, fut))
        WAITING.inc()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(nbytes)  # granted in the same instant it was cancelled: give it back
            else:
                self._forget(fut)  # the head may have been waiting on us: let those behind move up
                self._wake()
            raise
        finally:
            WAITING.dec()

    def release(self, nbytes: int) -> None:
        """Give back what ``acquire(nbytes)`` took, and wake those who now fit."""
        if nbytes <= 0:
            return
        self.in_use -= nbytes
        IN_USE.dec(nbytes)
        self._wake()

    def _fits(self, nbytes: int) -> bool:
        return self.in_use == 0 or self.in_use + nbytes <= self.capacity

    def _take(self, nbytes: int) -> None:
        self.in_use += nbytes
        IN_USE.inc(nbytes)

    def _forget(self, fut: asyncio.Future[None]) -> None:
        self._waiters = deque(w for w in self._waiters if w[1] is not fut)

    def _wake(self) -> None:
        # strictly in order: the head waits for its room, those behind it wait for the head
        while self._waiters:
            nbytes, fut = self._waiters[0]
            if fut.done():  # cancelled and not yet forgotten
                self._waiters.popleft()
                continue
            if not self._fits(nbytes):
                return
            self._waiters.popleft()
            self._take(nbytes)
            fut.set_result(None)


def release_freed_memory_promptly() -> bool:
    """Make glibc give every allocation of 1 MiB or more its own mapping, unmapped as soon as it is freed.

    By default glibc raises that threshold after the first large free, and then serves decoded frames from
    per-thread arenas that keep their peak: eight worker threads decoding one 49 MP image after another end up
    holding eight frames. Process-wide; call it once at start. Returns False where there is no glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError) as e:  # not glibc (musl, macOS): the budget still bounds the decodes
        log.info("decode_budget.mallopt_unavailable", error=str(e))
        return False
    if not done:
        log.info("decode_budget.mallopt_refused", threshold=MMAP_THRESHOLD_BYTES)
    return done


__all__ = [
    "DEFAULT_DECODE_BUDGET_BYTES",
    "DecodeBudget",
    "release_freed_memory_promptly",
]
