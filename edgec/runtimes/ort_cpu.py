"""ONNX Runtime on the CPU: the reference that every other runtime is checked against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _state

from edgec.errors import BackendError
from edgec.runtimes import fit_ids

# ORT's Python exceptions share no base class below Exception.
ORT_ERRORS = (_state.Fail, _state.InvalidArgument, _state.InvalidGraph, _state.InvalidProtobuf,
              _state.NoSuchFile, _state.EPFail, _state.RuntimeException, _state.NotImplemented)
_INT_TYPES = {"tensor(int32)": "int32", "tensor(int64)": "int64"}
_BAD_MODEL_ERRORS = (_state.InvalidGraph, _state.InvalidProtobuf, _state.NoSuchFile)


class OrtSession:
    """An ONNX Runtime session that takes and returns numpy arrays."""

    def __init__(self, session: ort.InferenceSession, threads: int | None = None):
        self._session = session
        self.threads = threads
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self._ids = {i.name: np.dtype(_INT_TYPES[i.type]) for i in session.get_inputs() if i.type in _INT_TYPES}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        feeds = {k: fit_ids(v, self._ids[k], k) if k in self._ids else v for k, v in feeds.items()}
        return self._session.run(self.output_names, feeds)


def check_model_file(path: Path) -> None:
    """Fails early with a message the user can act on; ORT's own says less."""
    if not Path(path).is_file():
        raise BackendError(f"model not found: {path}; check the path or export the model first")


def is_bad_model(error: Exception) -> bool:
    """The file is no model ORT can read, whatever the provider.

    A file with no graph raises InvalidArgument, so ORT's message decides too.
    """
    return isinstance(error, _BAD_MODEL_ERRORS) or "Load model from" in str(error)


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def cannot_load(path: Path, error: Exception) -> BackendError:
    return BackendError(f"ONNX Runtime cannot load {path} ({first_line(error)}); "
                        "re-export the model or check it with onnx.checker")


def load(path: Path, threads: int = 2) -> OrtSession:
    """All graph optimisations, `threads` intra-op threads, nodes run one after another."""
    if threads < 1:
        raise ValueError("threads must be >= 1")
    check_model_file(path)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except ORT_ERRORS as e:
        raise cannot_load(path, e) from e
    return OrtSession(session, threads)
