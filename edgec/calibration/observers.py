"""Activation ranges from calibration data, chosen per tensor by quantization error.

Min-max lets one outlier waste the integer grid; a percentile clips it but
can clip real signal. `auto` tries min-max, a percentile and a grid of
clipped ranges, and keeps for each tensor the range whose quantize-dequantize
error on the calibration values is smallest (the MSE criterion).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLE_PER_BATCH = 4096
CLIP_GRID = (1.0, 0.99, 0.97, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)


@dataclass
class TensorStats:
    """Exact extremes plus a uniform sample of values, enough for MSE search."""

    lo: float = np.inf
    hi: float = -np.inf
    samples: list | None = None

    def update(self, x: np.ndarray, rng: np.random.Generator) -> None:
        flat = x.reshape(-1)
        self.lo, self.hi = min(self.lo, float(flat.min())), max(self.hi, float(flat.max()))
        pick = flat if flat.size <= SAMPLE_PER_BATCH else flat[rng.integers(0, flat.size, SAMPLE_PER_BATCH)]
        self.samples = (self.samples or []) + [pick.astype(np.float32)]

    def values(self) -> np.ndarray:
        return np.concatenate(self.samples + [np.array([self.lo, self.hi], np.float32)])


def qdq_error(x: np.ndarray, lo: float, hi: float, bits: int) -> float:
    """Mean squared error of asymmetric quantize-dequantize on [lo, hi]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero must be exact
    scale = max(hi - lo, 1e-12) / (2 ** bits - 1)
    zp = np.round(-lo / scale)
    q = np.clip(np.round(x / scale) + zp, 0, 2 ** bits - 1)
    return float(np.mean(((q - zp) * scale - x) ** 2))


def sqnr_db(stats: TensorStats, bits: int) -> float:
    """Signal-to-quantization-noise ratio of the best `bits`-bit range, in dB."""
    v = stats.values()
    _, lo, hi = choose_range(stats, "auto", bits)
    noise = qdq_error(v, lo, hi, bits)
    return float(10 * np.log10(max(float(np.mean(v.astype(np.float64) ** 2)), 1e-30) / max(noise, 1e-30)))


def candidates(stats: TensorStats, observer: str) -> dict[str, tuple[float, float]]:
    v = stats.values()
    out = {"minmax": (stats.lo, stats.hi)}
    if observer in ("percentile", "auto"):
        out["percentile"] = (float(np.percentile(v, 0.01)), float(np.percentile(v, 99.99)))
    if observer in ("mse", "auto"):
        for c in CLIP_GRID[1:]:
            out[f"mse@{c}"] = (stats.lo * c, stats.hi * c)
    return out


def choose_range(stats: TensorStats, observer: str, bits: int) -> tuple[str, float, float]:
    """(observer name, rmin, rmax) with the smallest error; min-max wins ties."""
    if observer == "minmax":
        return "minmax", stats.lo, stats.hi
    v = stats.values()
    best = None
    for name, (lo, hi) in candidates(stats, observer).items():
        err = qdq_error(v, lo, hi, bits)
        if best is None or err < best[0] * 0.999:
            best = (err, name, lo, hi)
    if observer == "percentile":  # the user asked for it: no search
        lo, hi = candidates(stats, observer)["percentile"]
        return "percentile", lo, hi
    return best[1].split("@")[0], best[2], best[3]
