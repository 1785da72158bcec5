"""Latency measurement shared by every runtime: warm-up, then median and p90."""

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict:
        return {"median": round(self.median_ms, 3), "p90": round(self.p90_ms, 3), "runs": self.runs}


def bench(fn: Callable[[], object], runs: int = 20, warmup: int = 3) -> Timing:
    """Time `fn` after `warmup` calls; wall-clock, one call per sample."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(samples)
    return Timing(float(np.median(a)), float(np.percentile(a, 90)), runs)
