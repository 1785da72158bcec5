"""The `--target cpu` artifact: fused, dynamically quantized int8 ONNX for ORT's CPU kernels.

ORT's fastest int8 path for encoders is its fused `QAttention` plus
`DynamicQuantizeMatMul` kernels, and it only gets there through a chain that
fails silently at each step, so every step here is pinned and checked:
- the TorchScript exporter (`dynamo=False`): its graph has the MatMul/Add,
  Reshape/Transpose shape that `onnxruntime.transformers`' BERT fusions match;
- `optimize_model(..., opt_level=0)`, the Python fusions alone: ORT's own
  level-1 passes can first turn MatMul+Add into Gemm, which no attention
  pattern matches (seen on a static-shape MiniLM export);
- `quantize_dynamic` with per-channel int8 weights (per-tensor loses about
  0.025 pooled cosine on MiniLM) turns `Attention` into `QAttention`;
- the fused-node count is checked, since a missed fusion still gives a valid
  but much slower model.
A `TextEncoder` is wrapped in `SkipPadding` first, so a short sentence costs
its own length, not the padded one.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from edgec.errors import ExportError
from edgec.exporters.artifact import Artifact
from edgec.models.encoder import TextEncoder, VisionEncoder
from edgec.passes.skip_padding import SkipPadding

OPSET = 17


def _torch_inputs(example_inputs: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(v)) for v in example_inputs.values())


def _output_name(module: nn.Module) -> str:
    if isinstance(module, (TextEncoder, SkipPadding)):
        return "last_hidden_state"
    return "logits" if isinstance(module, VisionEncoder) else "output"


def _torchscript_export(module: nn.Module, example_inputs: dict[str, np.ndarray], path: Path) -> None:
    """Static input shapes; shapes inside the graph (SkipPadding's token count) stay dynamic."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # chosen on purpose: ORT's fusions match its graphs, not the dynamo exporter's
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
            torch.onnx.export(module.eval(), _torch_inputs(example_inputs), str(path),
                              input_names=list(example_inputs), output_names=[_output_name(module)],
                              opset_version=OPSET, dynamo=False, do_constant_folding=True)
    except Exception as e:  # the exporter raises many unrelated types
        raise ExportError(f"ONNX export of {type(module).__name__} failed ({e}); "
                          "check that the model runs in eager mode on the example inputs") from e


def _write_atomic(model: onnx.ModelProto, out_path: Path) -> None:
    """Readers of out_path never see a half-written file."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=out_path.name, suffix=".tmp")
    os.close(fd)
    try:
        onnx.save(model, tmp)
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextmanager
def _quiet(*loggers: str):
    """ORT's fusions log every pattern they try and the quantizer warns about int64
    tensors it skips; the checks below report what matters."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def op_counts(model: onnx.ModelProto) -> Counter:
    return Counter(node.op_type for node in model.graph.node)


def export_float(module: nn.Module, example_inputs: dict[str, np.ndarray], out_path: Path) -> Artifact:
    """The plain float ONNX of `module` as it is (no padding skipping, no fusion): the baseline."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "float.onnx"
        _torchscript_export(module, example_inputs, path)
        _write_atomic(onnx.load(str(path)), out_path)
    return Artifact(Path(out_path), "onnx", "ort-cpu")


def _prepare(module: nn.Module) -> tuple[nn.Module, int]:
    """The module to export and how many Attention nodes ORT must fuse in it (0: not required)."""
    if isinstance(module, TextEncoder):
        module = SkipPadding(module)
    if isinstance(module, SkipPadding):
        return module, len(module.encoder.layers)
    if isinstance(module, VisionEncoder):
        return module, 0
    raise ExportError(f"the cpu int8 exporter takes a TextEncoder or VisionEncoder, got "
                      f"{type(module).__name__}: rebuild the model with edgec.models.hf.from_hf")


def _fuse(path: Path, out: Path, num_heads: int, hidden_size: int) -> Counter:
    from onnxruntime.transformers.optimizer import optimize_model

    with _quiet("onnxruntime.transformers"):
        optimized = optimize_model(str(path), model_type="bert", num_heads=num_heads,
                                   hidden_size=hidden_size, opt_level=0)
    optimized.save_model_to_file(str(out))
    return op_counts(optimized.model)


def _quantize(path: Path, out: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet("root"):
        quantize_dynamic(str(path), str(out), per_channel=True, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def export_cpu_int8(module: nn.Module, example_inputs: dict[str, np.ndarray], out_path: Path,
                    num_heads: int, hidden_size: int) -> Artifact:
    """Export, fuse, quantize and check; writes out_path only when every step succeeded.

    `example_inputs` are in forward-argument order and fix the input shapes.
    `num_heads`/`hidden_size` are the fallback when ORT cannot read them from
    the graph; per-layer head counts (pruned models) are read from the graph.
    """
    module, expected = _prepare(module)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _torchscript_export(module, example_inputs, tmp / "float.onnx")
        fused = _fuse(tmp / "float.onnx", tmp / "fused.onnx", num_heads, hidden_size)
        if fused["Attention"] < expected:
            raise ExportError(
                f"ONNX Runtime fused {fused['Attention']} of {expected} attention blocks, so the int8 model "
                "would run unfused and several times slower. Its BERT fusion matches only projections "
                "exported as MatMul+Add -> Reshape -> Transpose and scores as MatMul -> Div -> Softmax "
                "-> MatMul (the form SkipPadding exports): keep that form in any rewrite of the "
                "attention, and use the onnxruntime version pinned in pyproject.toml")
        _quantize(tmp / "fused.onnx", tmp / "int8.onnx")
        model = onnx.load(str(tmp / "int8.onnx"))
        quantized = op_counts(model)
        if quantized["QAttention"] < fused["Attention"]:
            raise ExportError(
                f"quantize_dynamic turned {quantized['QAttention']} of {fused['Attention']} Attention nodes "
                "into QAttention; the installed onnxruntime may not quantize Attention")
        _write_atomic(model, out_path)
    return Artifact(Path(out_path), "onnx", "ort-cpu")
