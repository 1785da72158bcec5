"""Cold timing evicts more than the last-level cache, and a cold run is never the faster one."""

from pathlib import Path

import numpy as np

from edgec.runtimes import timing


def _sysfs_llc() -> int:
    """The largest data or unified cache sysfs lists for CPU 0, read independently of timing.py."""
    sizes = [0]
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() != "Instruction":
                sizes.append(int((index / "size").read_text().strip().rstrip("K")) * 1024)
        except (OSError, ValueError):
            pass
    return max(sizes)


def test_eviction_buffer_exceeds_the_llc():
    touched = timing.flush_caches()
    assert touched > _sysfs_llc()
    assert touched > timing.llc_bytes() and touched >= 32 << 20


def test_llc_from_a_sysfs_tree_and_the_fallback(tmp_path, monkeypatch):
    for name, level, kind, size in (("index0", 1, "Data", "32K"), ("index1", 1, "Instruction", "32K"),
                                    ("index2", 2, "Unified", "1024K"), ("index3", 3, "Unified", "16M")):
        (tmp_path / name).mkdir()
        for f, v in (("level", level), ("type", kind), ("size", size)):
            (tmp_path / name / f).write_text(f"{v}\n")
    monkeypatch.setattr(timing, "_SYS_CACHE", tmp_path)
    timing.llc_bytes.cache_clear()
    try:
        assert timing.llc_bytes() == 16 << 20
        monkeypatch.setattr(timing, "_SYS_CACHE", tmp_path / "absent")
        timing.llc_bytes.cache_clear()
        assert timing.llc_bytes() == 64 << 20
    finally:
        monkeypatch.undo()
        timing.llc_bytes.cache_clear()


def test_cold_is_not_faster_than_hot():
    # An array that fits in the LLC: back to back it is read from cache, cold from memory.
    a = np.ones(min(timing.llc_bytes() // 4, 16 << 20) // 8)
    hot, cold = [], []
    for _ in range(3):  # alternate, so drift on a shared machine hits both alike
        h = timing.bench(a.sum, runs=15, warmup=2)
        c = timing.bench(a.sum, runs=15, warmup=2, cold=True)
        assert h.runs == c.runs == 15
        assert set(h.to_dict()) == set(c.to_dict()) == {"median", "p90", "runs"}
        hot.append(h.median_ms)
        cold.append(c.median_ms)
    assert np.median(cold) >= 0.8 * np.median(hot)
