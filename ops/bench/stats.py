"""Figures: the median of several runs with their min and max, a run's results, percentiles, a timer."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog

log = structlog.get_logger("bench")


@dataclass(frozen=True)
class Figure:
    """One measured quantity over ``n`` runs: the median is the figure, min and max show the noise."""

    median: float
    min: float
    max: float
    n: int
    unit: str = ""

    @classmethod
    def of(cls, values: Sequence[float], unit: str = "") -> Figure:
        if not values:
            raise ValueError("a figure needs at least one value")
        return cls(
            float(statistics.median(values)), float(min(values)), float(max(values)), len(values), unit
        )

    def as_dict(self) -> dict[str, float | int | str]:
        return {"median": self.median, "min": self.min, "max": self.max, "n": self.n, "unit": self.unit}


@dataclass
class Results:
    """What a run measured: figures by name, details (settings, scans, stage times) and each step's seconds."""

    figures: dict[str, Figure] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, values: list[float], unit: str = "") -> Figure:
        fig = Figure.of(values, unit)
        self.figures[name] = fig
        log.info(
            "bench.figure",
            name=name,
            median=round(fig.median, 4),
            min=round(fig.min, 4),
            max=round(fig.max, 4),
        )
        return fig


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Run-by-run ratios (run i of the mesh over run i of its baseline, measured back to back)."""
    return [a / b for a, b in zip(numerators, denominators, strict=True) if b > 0]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation, like ``numpy.percentile``."""
    data = sorted(values)
    if not data:
        raise ValueError("no values")
    pos = (len(data) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


class Timer:
    """Seconds since ``start()``; ``elapsed`` freezes at ``stop()``."""

    def __init__(self) -> None:
        self._t0 = time.perf_counter()
        self._t1: float | None = None

    def stop(self) -> float:
        self._t1 = time.perf_counter()
        return self.elapsed

    @property
    def elapsed(self) -> float:
        return (self._t1 if self._t1 is not None else time.perf_counter()) - self._t0


@contextmanager
def timed() -> Iterator[Timer]:
    t = Timer()
    try:
        yield t
    finally:
        t.stop()
