"""ExecuTorch `.pte` export for XNNPACK, float or int8 through PT2E.

The default int8 scheme is XNNPACK's dynamic one: int8 weights per output
channel, activations of linear layers quantized per call from their actual
range. Transformers keep their accuracy with it (no static ranges to break on
residual-stream outliers) and it needs no calibration set.
"""

from pathlib import Path

import torch
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer, get_symmetric_quantization_config)
from executorch.exir import ExecutorchProgramManager, to_edge_transform_and_lower
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from edgec.errors import ExportError
from edgec.exporters.artifact import Artifact
from edgec.exporters.atomic import write_atomic

Inputs = tuple[torch.Tensor, ...]


def export_pte(module: torch.nn.Module, example_inputs: Inputs, out_path: Path,
               calib_inputs: list[Inputs] | None = None, quantize: bool = True) -> Artifact:
    """Export `module` with static shapes to an XNNPACK `.pte` at `out_path`.

    `calib_inputs` feed the quantization observers; None calibrates on
    `example_inputs`, which is enough for dynamic activations. The module is
    exported in eval mode and its training flag restored afterwards.
    """
    if calib_inputs is not None and not calib_inputs:
        raise ExportError("calib_inputs is empty; pass at least one input tuple, "
                          "or None to calibrate on example_inputs")
    out_path = Path(out_path)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            program = _export(module, example_inputs)
            if quantize:
                program = _quantize(program, example_inputs, calib_inputs or [example_inputs])
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        program_bytes = lowered.to_executorch()
        write_atomic(out_path, lambda tmp: _write(program_bytes, tmp))
    finally:
        module.train(was_training)
    return Artifact(out_path, "pte", "executorch")


def _export(module: torch.nn.Module, inputs: Inputs) -> torch.export.ExportedProgram:
    """torch.export with static shapes; a model that cannot be traced is the user's to fix."""
    try:
        return torch.export.export(module, tuple(inputs))
    except Exception as e:  # torch.export raises many unrelated types for untraceable code
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.export failed on {type(module).__name__}: {first}; "
                          "make forward traceable with static shapes "
                          "(no data-dependent Python control flow)") from e


def _quantize(program: torch.export.ExportedProgram, example_inputs: Inputs,
              calib_inputs: list[Inputs]) -> torch.export.ExportedProgram:
    """PT2E int8: insert observers, calibrate, fold to quantize/dequantize pairs, re-export."""
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    prepared = prepare_pt2e(program.module(), XNNPACKQuantizer().set_global(config))
    for inputs in calib_inputs:
        prepared(*inputs)
    return torch.export.export(convert_pt2e(prepared), tuple(example_inputs))


def _write(program: ExecutorchProgramManager, path: str) -> None:
    with open(path, "wb") as f:
        program.write_to_file(f)
