"""The machine a latency was measured on: int8 speed-ups hinge on the ISA, cache and runtime versions."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from edgec.runtimes.native import silenced
from edgec.runtimes.timing import llc_bytes

# What int8 kernels dispatch on: VNNI/AMX dot products, else AVX2 (+FMA for the float parts).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
RUNTIME_PACKAGES = ("onnxruntime", "onnxruntime-qnn", "executorch", "torch")


def _cpuinfo(path: Path = Path("/proc/cpuinfo")) -> dict[str, str]:
    """The first processor's fields; every core lists the same model and flags."""
    fields: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return fields
    for line in text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """What a latency figure cannot be read without. Usable cores can be fewer than logical ones in a container."""
    cpu = _cpuinfo()
    flags = set((cpu.get("flags") or cpu.get("Features") or "").split())
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
        "llc_bytes": llc_bytes(default=None),
        "python": platform.python_version(),
        "runtimes": {name: package_version(name) for name in RUNTIME_PACKAGES},
    }


def _et_pool():
    """ExecuTorch's pybindings, or None when the wheel lacks them or their threadpool controls."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return None
    needed = ("_threadpool_get_thread_count", "_unsafe_reset_threadpool")
    return portable_lib if all(hasattr(portable_lib, n) for n in needed) else None


def executorch_threads() -> int | None:
    """Threads of ExecuTorch's shared CPU threadpool, the one XNNPACK delegates run on."""
    if (lib := _et_pool()) is None:
        return None
    with silenced(2):  # cpuinfo logs its probing to stderr
        return int(lib._threadpool_get_thread_count())


def set_executorch_threads(n: int) -> int | None:
    """Resize ExecuTorch's CPU threadpool; returns the count in force, None if the wheel offers no control.

    Call it before loading any program: an XNNPACK delegate keeps the pool it
    was loaded with, and resizing frees that pool (ExecuTorch calls the reset
    unsafe), so methods loaded earlier must be loaded again.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    if (lib := _et_pool()) is None:
        return None
    with silenced(2):  # the reset logs to stderr
        lib._unsafe_reset_threadpool(n)
        return int(lib._threadpool_get_thread_count())
