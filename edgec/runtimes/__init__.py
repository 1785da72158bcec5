"""Runtimes by name: each module has `load(path) -> Session`, where `Session.run(feed) -> list`.

Modules are imported on first use, so naming a runtime never pays for the
others' native libraries.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from edgec.errors import InputError


class Session(Protocol):
    threads: int | None  # intra-op threads in force, for the report

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


@dataclass(frozen=True)
class Runtime:
    name: str
    module: str  # the module whose `load(path)` opens a session
    description: str
    simulated: bool = False  # a simulator: its wall time is no device latency
    package: str = ""  # the distribution whose version the report states

    def load(self, path: Path) -> Session:
        return importlib.import_module(self.module).load(Path(path))


RUNTIMES = {r.name: r for r in [
    Runtime("ort-cpu", "edgec.runtimes.ort_cpu", "ONNX Runtime, CPU execution provider",
            package="onnxruntime"),
    Runtime("qnn-htp", "edgec.runtimes.qnn_htp", "Qualcomm HTP through onnxruntime-qnn, simulated on x86-64, "
            "CPU fallback disabled", simulated=True, package="onnxruntime-qnn"),
    Runtime("executorch", "edgec.runtimes.executorch", "ExecuTorch with XNNPACK", package="executorch"),
]}


def runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise InputError(f"unknown runtime '{name}': choose one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def load(name: str, path: Path) -> Session:
    return runtime(name).load(path)
