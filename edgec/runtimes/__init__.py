"""Runtimes by name: each module has `load(path) -> Session` (or the function the entry names), where
`Session.run(feed) -> list`;
a runtime that runs language models also names a module with `load_lm(path, tokenizer, info) -> LMSession`
(`edgec.runtimes.llm`).

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
    module: str  # "module[:function]" whose function (default: load) opens a session on a path
    description: str
    # a simulator or software device: its wall time is no device latency; "module:function" asks the
    # machine (a GPU runtime is simulated only where no real GPU is present)
    simulator: bool | str = False
    simulator_name: str = "simulator"  # what the report calls it
    package: str = ""  # the distribution whose version the report states
    lm_module: str = ""  # "module[:function]" that opens a decoder artifact (default function: load_lm)

    @property
    def simulated(self) -> bool:
        if isinstance(self.simulator, bool):
            return self.simulator
        module, _, function = self.simulator.partition(":")
        return bool(getattr(importlib.import_module(module), function)())

    def load(self, path: Path) -> Session:
        if not self.module:
            raise InputError(f"runtime '{self.name}' runs language models only: use edgec generate")
        module, _, function = self.module.partition(":")
        return getattr(importlib.import_module(module), function or "load")(Path(path))

    def load_lm(self, path: Path, tokenizer: Path, info: dict):
        """`info`: the manifest's generation fields and the artifact's own entry (its cache layout)."""
        if not self.lm_module:
            raise InputError(f"runtime '{self.name}' does not run language models: choose one of "
                             f"{', '.join(n for n, r in RUNTIMES.items() if r.lm_module)}")
        module, _, function = self.lm_module.partition(":")
        return getattr(importlib.import_module(module), function or "load_lm")(Path(path), Path(tokenizer), info)


RUNTIMES = {r.name: r for r in [
    Runtime("ort-cpu", "edgec.runtimes.ort_cpu", "ONNX Runtime, CPU execution provider",
            package="onnxruntime", lm_module="edgec.runtimes.htp_llm:load_lm_cpu"),
    Runtime("qnn-htp", "edgec.runtimes.qnn_htp", "Qualcomm HTP through onnxruntime-qnn, simulated on x86-64, "
            "CPU fallback disabled", simulator=True, simulator_name="HTP simulator", package="onnxruntime-qnn",
            lm_module="edgec.runtimes.htp_llm"),
    Runtime("executorch", "edgec.runtimes.executorch", "ExecuTorch with XNNPACK (LLMs: its TextLLMRunner)",
            package="executorch", lm_module="edgec.runtimes.executorch_llm"),
    Runtime("ort-genai", "", "ONNX Runtime GenAI (og.Generator), CPU", package="onnxruntime-genai",
            lm_module="edgec.runtimes.ort_genai"),
    Runtime("ort-tiered", "", "ONNX Runtime over the decoder stages, attention over edgec's tiered KV cache "
            "(memory, host, disk; exact or top-k chunks)", package="onnxruntime",
            lm_module="edgec.runtimes.tiered_lm"),
    Runtime("iree-vulkan", "edgec.runtimes.iree_gpu", "IREE on a Vulkan GPU (Mesa's lavapipe where no GPU is "
            "present: a software device)", simulator="edgec.runtimes.iree_gpu:vulkan_is_software",
            simulator_name="software Vulkan device (lavapipe)",
            package="iree-base-runtime", lm_module="edgec.runtimes.iree_gpu:load_lm"),
    Runtime("iree-cuda", "edgec.runtimes.iree_gpu:load_cuda", "IREE on an NVIDIA GPU through CUDA",
            package="iree-base-runtime", lm_module="edgec.runtimes.iree_gpu:load_lm_cuda"),
    Runtime("llama-cpp", "", "llama.cpp through llama-cpp-python (a GGUF file), CPU", package="llama-cpp-python",
            lm_module="edgec.runtimes.llama_cpp"),
    Runtime("torch", "", "transformers generate, eager float32 (the reference)", package="transformers",
            lm_module="edgec.runtimes.torch_lm"),
]}


def fit_ids(x: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    """Integer ids in the width the artifact takes (int32 on GPUs); a value that does not fit is an error."""
    from edgec.errors import BackendError

    if x.dtype == dtype or x.dtype.kind not in "iu" or np.dtype(dtype).kind not in "iu":
        return x
    info = np.iinfo(dtype)
    if x.size and (x.min() < info.min or x.max() > info.max):
        raise BackendError(f"input {name} has values outside {np.dtype(dtype)}, the width the artifact takes")
    return x.astype(dtype)


def runtime(name: str) -> Runtime:
    if name not in RUNTIMES:
        raise InputError(f"unknown runtime '{name}': choose one of {', '.join(RUNTIMES)}")
    return RUNTIMES[name]


def load(name: str, path: Path) -> Session:
    return runtime(name).load(path)
