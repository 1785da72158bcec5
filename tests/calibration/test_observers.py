"""Observers: the quantize-dequantize error and the range each observer picks."""

import numpy as np
import pytest

from edgec.calibration.observers import TensorStats, candidates, choose_range, qdq_error


def _stats(batches) -> TensorStats:
    rng = np.random.default_rng(123)
    stats = TensorStats()
    for b in batches:
        stats.update(np.asarray(b, np.float32), rng)
    return stats


def _gaussian(n_batches, size=4096, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(size).astype(np.float32) for _ in range(n_batches)]


def test_values_on_the_grid_have_no_error():
    x = np.arange(-128, 128) * 0.01  # scale 0.01, zero point 128 on [-1.28, 1.27]
    assert qdq_error(x, -1.28, 1.27, 8) < 1e-12
    assert qdq_error(x + 0.005, -1.28, 1.27, 8) == pytest.approx(0.005 ** 2, rel=0.05)  # half a step off


def test_zero_is_always_exact():
    assert qdq_error(np.zeros(16), 1.0, 2.0, 8) == 0.0
    assert qdq_error(np.zeros(16), -3.0, -1.0, 8) == 0.0


def test_error_grows_with_clipping():
    x = np.random.default_rng(0).uniform(-1, 1, 200_000)
    errors = [qdq_error(x, -c, c, 16) for c in (1.0, 0.75, 0.5, 0.25)]
    assert errors[0] < 1e-9
    assert errors == sorted(errors) and errors[1] > 100 * errors[0]
    # uniform on [-1, 1] clipped at c: E[(|x| - c)^2, |x| > c] = (1 - c)^3 / 3
    assert errors[2] == pytest.approx(0.5 ** 3 / 3, rel=0.03)


def test_minmax_returns_the_exact_extremes_beyond_the_sample():
    batches = _gaussian(3, size=50_000)
    batches[1][12_345] = 42.0  # far outside the 4096 values sampled per batch
    batches[2][777] = -17.0
    stats = _stats(batches)
    assert sum(s.size for s in stats.samples) == 3 * 4096
    assert choose_range(stats, "minmax", 8) == ("minmax", -17.0, 42.0)


def test_percentile_returns_the_percentile_range():
    batches = _gaussian(4)
    stats = _stats(batches)
    data = np.concatenate(batches)
    values = np.concatenate([data, [data.min(), data.max()]])  # the exact extremes count once more
    name, lo, hi = choose_range(stats, "percentile", 8)
    assert name == "percentile"
    assert (lo, hi) == pytest.approx((np.percentile(values, 0.01), np.percentile(values, 99.99)), rel=1e-6)
    assert data.min() < lo < -3 and 3 < hi < data.max()  # a clipped range, not min-max


def test_auto_clips_a_single_huge_outlier_at_8_bits():
    batches = _gaussian(64)
    batches[5][100] = 100.0  # one value in 262,144
    stats = _stats(batches)
    name, lo, hi = choose_range(stats, "auto", 8)
    assert name != "minmax"
    assert hi < 0.9 * stats.hi and lo >= stats.lo
    values = stats.values()
    err, err_minmax = qdq_error(values, lo, hi, 8), qdq_error(values, stats.lo, stats.hi, 8)
    assert err < 0.9 * err_minmax
    others = [qdq_error(values, a, b, 8) for a, b in candidates(stats, "auto").values()]
    assert err == pytest.approx(min(others))


def test_auto_keeps_min_max_at_16_bits_on_gaussian_data():
    stats = _stats(_gaussian(8))
    name, lo, hi = choose_range(stats, "auto", 16)
    values = stats.values()
    err_minmax = qdq_error(values, stats.lo, stats.hi, 16)
    assert qdq_error(values, lo, hi, 16) <= 1.01 * err_minmax
    assert name == "minmax" and (lo, hi) == (stats.lo, stats.hi)
    # at 8 bits the same data is better served by a slight clip: the choice depends on the bits
    assert choose_range(stats, "auto", 8)[0] != "minmax"


def test_candidates_by_observer():
    stats = _stats(_gaussian(1))
    assert set(candidates(stats, "minmax")) == {"minmax"}
    assert set(candidates(stats, "percentile")) == {"minmax", "percentile"}
    mse = candidates(stats, "mse")
    assert "percentile" not in mse and mse["mse@0.5"] == (stats.lo * 0.5, stats.hi * 0.5)
    assert len(candidates(stats, "auto")) == len(mse) + 1
