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
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
from torch import nn

from edgec.errors import ExportError
from edgec.exporters.artifact import Artifact
from edgec.exporters.atomic import write_atomic
from edgec.exporters.onnx_float import export_onnx
from edgec.models.encoder import TextEncoder, VisionEncoder
from edgec.passes.skip_padding import SkipPadding

OPSET = 17


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


def _prepare(module: nn.Module) -> tuple[nn.Module, int]:
    """The module to export and how many Attention nodes ORT must fuse in it (0: not required)."""
    if isinstance(module, TextEncoder):
        module = SkipPadding(module)
    if isinstance(module, SkipPadding):
        return module, len(module.encoder.layers)
    return module, 0  # ViTs and token-dropped encoders: fusion is welcome, not required


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
        # 7-bit weights: without VNNI, x86's u8 x s8 dot product (VPMADDUBSW) saturates int16 pair sums;
        # on an AVX2-only EPYC a tiny ViT's int8 top-1 agreement fell to 0.62. MiniLM keeps 0.992 either way.
        quantize_dynamic(str(path), str(out), per_channel=True, weight_type=QuantType.QInt8, reduce_range=True,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})


def graph_note(module: nn.Module) -> str:
    """What the cpu graph of `module` does, in words, for the report."""
    if isinstance(_prepare(module)[0], SkipPadding):
        return ("Padding-free execution: the graph reads the real-token count from attention_mask at run "
                "time (NonZero + Gather), runs embeddings and all layers on those tokens only, and writes "
                "zeros to the padded rows of last_hidden_state, so a short sentence costs its own length. "
                "It assumes padding carries mask 0 (any mask works; right padding is what the tokenizer "
                "gives). Attention, SkipLayerNorm and BiasGelu are fused by ONNX Runtime and the MatMuls "
                "run as int8 (per-channel weights in a 7-bit range, activations quantized per call).")
    return ("ONNX Runtime fuses SkipLayerNorm and BiasGelu; every MatMul runs as int8 "
            "(per-channel weights in a 7-bit range, activations quantized per call).")


def export_cpu_int8(module: nn.Module, example_inputs: dict[str, np.ndarray], out_path: Path,
                    num_heads: int, hidden_size: int, output_names: list[str] | None = None) -> Artifact:
    """Export, fuse, quantize and check; writes out_path only when every step succeeded.

    `example_inputs` are in forward-argument order and fix the input shapes.
    `num_heads`/`hidden_size` are the fallback when ORT cannot read them from
    the graph; per-layer head counts (pruned models) are read from the graph.
    """
    module, expected = _prepare(module)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        names = output_names or ["logits" if isinstance(module, VisionEncoder) else "last_hidden_state"]
        export_onnx(module, example_inputs, names, tmp / "float.onnx", opset=OPSET, fold=False)
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
        write_atomic(out_path, lambda path: onnx.save(model, path))
    return Artifact(Path(out_path), "onnx", "ort-cpu")
