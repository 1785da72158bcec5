"""Latency measurement shared by every runtime: warm-up, then median and p90.

Back-to-back runs keep the weights in cache; an app that runs a model now and
then sees them evicted by everything else. `cold=True` measures that case.
"""

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

_SYS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
_FALLBACK_LLC = 64 << 20
_MIN_EVICT = 32 << 20


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p90_ms: float
    runs: int

    def to_dict(self) -> dict:
        return {"median": round(self.median_ms, 3), "p90": round(self.p90_ms, 3), "runs": self.runs}


def _bytes(size: str) -> int:
    """sysfs writes sizes as '32768K'."""
    size = size.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
    return int(size.rstrip("KMG")) * scale


@lru_cache(maxsize=None)
def llc_bytes(default: int | None = _FALLBACK_LLC) -> int | None:
    """Size of the highest data cache level of CPU 0; `default` where sysfs says nothing."""
    levels = []
    for index in _SYS_CACHE.glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            levels.append((int((index / "level").read_text()), _bytes((index / "size").read_text())))
        except (OSError, ValueError):
            continue
    return max(levels)[1] if levels else default


@lru_cache(maxsize=None)
def _evict_buffer() -> np.ndarray:
    # int64 words: each cache line is read and written with few instructions.
    return np.zeros(max(2 * llc_bytes(), _MIN_EVICT) // 8, dtype=np.int64)


def flush_caches() -> int:
    """Read and write a buffer of twice the last-level cache (32 MiB at least) so nothing timed next is cached.

    Only evicts the caches of the core it runs on (and those it shares);
    returns the bytes touched.
    """
    buf = _evict_buffer()
    np.add(buf, 1, out=buf)
    return buf.nbytes


def bench(fn: Callable[[], object], runs: int = 20, warmup: int = 3, cold: bool = False) -> Timing:
    """Time `fn` after `warmup` calls; wall-clock, one call per sample.

    cold: evict the caches before each timed call (the eviction is not timed),
    for models run now and then rather than back to back.
    """
    if runs < 1:
        raise ValueError("runs must be >= 1")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        if cold:
            flush_caches()
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    a = np.asarray(samples)
    return Timing(float(np.median(a)), float(np.percentile(a, 90)), runs)
