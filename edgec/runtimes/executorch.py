"""Run a `.pte` program through ExecuTorch's Python runtime.

ExecuTorch logs the reason for a refusal to stderr and raises a bare error
code, so this wrapper turns refusals into `BackendError`s that say what the
program expected.
"""

from pathlib import Path

import numpy as np
import torch
from executorch.runtime import Method, Program, Runtime

from edgec.errors import BackendError
from edgec.runtimes.native import silenced


class ExecutorchSession:
    """The `forward` method of a loaded program; keeps the program alive with it."""

    def __init__(self, program: Program, method: Method, path: Path, threads: int | None = None):
        self._program, self._method, self.path = program, method, path
        self.threads = threads

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; a program has no input names, so the feed's order is the program's input order,
        and shapes and dtypes must match the exported ones exactly."""
        tensors = [torch.from_numpy(np.ascontiguousarray(x)) for x in feed.values()]
        try:
            outputs = self._method.execute(tensors)
        except RuntimeError as e:
            got = [f"{tuple(t.shape)} {t.dtype}" for t in tensors]
            raise BackendError(f"{self.path.name} refused inputs {got}; it expects "
                               f"{self.expected_inputs()} (pass exactly these shapes and dtypes)") from e
        return [o.numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outputs]

    def expected_inputs(self) -> list[str]:
        """The program's input specs as ExecuTorch prints them (sizes, dtype)."""
        meta = self._method.metadata
        return [str(meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]


THREADS = 2  # as ORT CPU's sessions: timings of the two runtimes compare like for like
_pool_sized = False


def _threads() -> int | None:
    """Size ExecuTorch's shared CPU threadpool once, before the first program is loaded (resizing it
    later would pull it from under loaded XNNPACK delegates); the count in force."""
    global _pool_sized
    from edgec.runtimes.machine import executorch_threads, set_executorch_threads

    if not _pool_sized:
        _pool_sized = True
        if executorch_threads() != THREADS:
            return set_executorch_threads(THREADS)
    return executorch_threads()


def load(path: Path) -> ExecutorchSession:
    """Load the `forward` method of the program at `path`."""
    path = Path(path)
    threads = _threads()
    if not path.is_file():
        raise BackendError(f"no .pte file at {path}; check the path or export the model to .pte first")
    try:
        with silenced(2):
            program = Runtime.get().load_program(path)
    except RuntimeError as e:
        raise BackendError(f"{path} is not a valid ExecuTorch program ({e}); "
                           "re-export it with the executorch exporter") from e
    if "forward" not in program.method_names:
        raise BackendError(f"{path} has no 'forward' method (it has {sorted(program.method_names)}); "
                           "export the module's forward")
    try:
        with silenced(2):
            method = program.load_method("forward")
    except RuntimeError as e:
        raise BackendError(f"{path}: ExecuTorch could not load 'forward' ({e}); the program may need "
                           "a backend or kernels this runtime lacks, re-export it for XNNPACK") from e
    return ExecutorchSession(program, method, path, threads)
