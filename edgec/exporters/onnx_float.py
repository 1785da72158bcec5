"""Float ONNX export of a canonical module: the baseline every artifact is compared with."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from edgec.errors import ExportError
from edgec.exporters.artifact import Artifact
from edgec.exporters.atomic import write_atomic

# opset 20 has a native Gelu, so the NPU sees one op instead of an Erf chain.
OPSET = 20


def export_onnx(module: torch.nn.Module, example_inputs: dict[str, np.ndarray], output_names: list[str],
                out_path: Path, opset: int = OPSET, fold: bool = True) -> Artifact:
    """TorchScript export with static input shapes (NPUs compile one shape).

    The TorchScript exporter is chosen on purpose: ORT's fusions match its graphs,
    not the dynamo exporter's. `fold` folds constants and shape arithmetic.
    """
    args = tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in example_inputs.values())

    def write(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), args, tmp, input_names=list(example_inputs),
                              output_names=output_names, opset_version=opset, dynamo=False,
                              do_constant_folding=True)
        if fold:
            _fold(Path(tmp))
    try:
        write_atomic(out_path, write)
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        raise ExportError(f"ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0]}): "
                          "the model uses an op the exporter cannot trace") from e
    return Artifact(out_path, "onnx", "ort-cpu")


def _fold(path: Path) -> None:
    """Fold constants and static shape arithmetic: NPUs reject shape ops on static graphs."""
    import onnx
    from onnxscript import optimizer

    onnx.save(optimizer.optimize(onnx.load(path)), path)
