"""Proof that a QDQ graph is integer-only: what an NPU needs to run all of it.

A graph passes when every compute op reads only dequantized integer tensors
and writes only tensors that are immediately quantized again, so the NPU can
fuse each DQ -> op -> Q group into one integer kernel. The only float allowed
is at the model boundary: a float graph input that is quantized at once, an
integer input cast to float and quantized at once, and DQ outputs that are
graph outputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
import onnx_ir as ir

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_FLOAT = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16}
_INT16 = {ir.DataType.INT16, ir.DataType.UINT16}
_WEIGHT_OPS = {"MatMul": 1, "Gemm": 1, "Conv": 1}


@dataclass
class IntegerCheck:
    integer_only: bool
    violations: list[dict] = field(default_factory=list)
    int16_tensors: list[str] = field(default_factory=list)
    compute_nodes: int = 0

    def to_dict(self) -> dict:
        return {"integer_only": self.integer_only, "compute_nodes": self.compute_nodes,
                "violations": self.violations, "int16_tensors": len(self.int16_tensors)}


def _typed_graph(model: onnx.ModelProto) -> ir.Graph:
    """The graph with inferred dtypes; a Constant's output may lack one, so take its tensor's."""
    graph = ir.from_proto(onnx.shape_inference.infer_shapes(model)).graph
    for node in graph:
        value = node.attributes.get("value") if node.op_type == "Constant" else None
        if value is not None and node.outputs[0].dtype is None:
            node.outputs[0].dtype = value.value.dtype
    return graph


def check_integer_only(model: onnx.ModelProto) -> IntegerCheck:
    violations, int16, compute = [], [], 0

    def bad(node, reason):
        if not _is_input_cast(node):
            violations.append({"node": node.name or "", "op": node.op_type, "reason": reason})

    for node in _typed_graph(model):
        if node.op_type == "QuantizeLinear" and len(node.inputs) > 2 and _dtype(node.inputs[2]) in _INT16:
            int16.append(node.inputs[0].name)
        if node.op_type in _QDQ or node.op_type == "Constant":
            continue
        compute += 1
        for value in node.inputs:
            if _dtype(value) not in _FLOAT:
                continue
            src = value.producer()
            if src is None or src.op_type != "DequantizeLinear":
                origin = ("a graph input" if value.is_graph_input()
                          else src.op_type if src else "a float initializer")
                bad(node, f"float input '{value.name}' comes from {origin}, not from DequantizeLinear")
        for value in node.outputs:
            if _dtype(value) not in _FLOAT:
                continue
            users = value.consumers()
            if value.is_graph_output() or not users or any(u.op_type != "QuantizeLinear" for u in users):
                bad(node, f"float output '{value.name}' is not quantized right away")
        widx = _WEIGHT_OPS.get(node.op_type)
        if widx is not None and len(node.inputs) > widx and node.inputs[widx] is not None:
            dq = node.inputs[widx].producer()
            if dq is not None and dq.op_type == "DequantizeLinear" and _initializer(dq.inputs[0]) is not None:
                if not _per_output_channel(node, dq):
                    bad(node, "weights are not int8 per output channel")
    return IntegerCheck(not violations, violations, int16, compute)


def _dtype(value: ir.Value | None) -> ir.DataType | None:
    return None if value is None else value.dtype


def _initializer(value: ir.Value | None) -> ir.TensorProtocol | None:
    return value.const_value if value is not None and value.is_initializer() else None


def _per_output_channel(node: ir.Node, dq: ir.Node) -> bool:
    """int8 weights with one scale per output channel, along the output-channel axis."""
    q = _initializer(dq.inputs[0])
    scale = _initializer(dq.inputs[1]) if len(dq.inputs) > 1 else None
    if q.dtype != ir.DataType.INT8 or scale is None or len(q.shape) < 2:
        return False
    rank = len(q.shape)
    if node.op_type == "MatMul":
        out_axis = rank - 1
    elif node.op_type == "Gemm":
        out_axis = 0 if node.attributes.get_int("transB", 0) else 1
    else:  # Conv: [out, in/groups, kh, kw]
        out_axis = 0
    axis = dq.attributes.get_int("axis", 1) % rank
    return axis == out_axis and scale.size == q.shape[out_axis] and len(scale.shape) == 1


def _is_input_cast(node: ir.Node) -> bool:
    """The input boundary: an integer graph input cast to float and quantized at once."""
    return (node.op_type == "Cast" and node.inputs[0] is not None and node.inputs[0].is_graph_input()
            and all(u.op_type == "QuantizeLinear" for u in node.outputs[0].consumers()))
