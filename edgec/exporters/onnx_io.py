"""What an app feeds an ONNX artifact and reads from it: names, dtypes, shapes, and boundary Q/DQ parameters."""

from __future__ import annotations

from pathlib import Path

import onnx


def _quant(node) -> dict | None:
    """The scale, zero point and dtype of a Q or DQ node with constant parameters."""
    if node is None or len(node.inputs) < 3 or node.inputs[1].const_value is None:
        return None
    scale, zp = node.inputs[1].const_value.numpy(), node.inputs[2].const_value.numpy()
    return {"scale": float(scale.ravel()[0]), "zero_point": int(zp.ravel()[0]), "dtype": str(zp.dtype)}


def _spec(value, quant) -> dict:
    return {"name": value.name, "dtype": str(value.dtype.numpy()),
            "shape": [d if isinstance(d, int) else str(d) for d in value.shape], "quantization": quant}


def onnx_io(path: Path) -> dict:
    """Names, dtypes, static shapes, and the Q/DQ parameters at the graph boundary."""
    import onnx_ir as ir

    g = ir.from_proto(onnx.load(path, load_external_data=False)).graph
    q_of = lambda v: next((n for n in v.consumers() if n.op_type == "QuantizeLinear"), None)
    dq_to = lambda v: v.producer() if v.producer() and v.producer().op_type == "DequantizeLinear" else None
    return {"inputs": [_spec(v, _quant(q_of(v))) for v in g.inputs],
            "outputs": [_spec(v, _quant(dq_to(v))) for v in g.outputs]}
