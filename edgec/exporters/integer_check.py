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

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_FLOAT = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16}
_INT16 = {onnx.TensorProto.INT16, onnx.TensorProto.UINT16}
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


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    types.update({i.name: i.data_type for i in g.initializer})
    for node in g.node:  # constants are not always in value_info
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.data_type:
            types[node.output[0]] = node.attribute[0].t.data_type
    return types


def check_integer_only(model: onnx.ModelProto) -> IntegerCheck:
    g = model.graph
    types = _elem_types(model)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_inputs = {i.name for i in g.input}
    graph_outputs = {o.name for o in g.output}
    inits = {i.name: i for i in g.initializer}
    violations, int16, compute = [], [], 0

    def bad(node, reason):
        if not _is_input_cast(node, graph_inputs, consumers):
            violations.append({"node": node.name, "op": node.op_type, "reason": reason})

    for node in g.node:
        if node.op_type == "QuantizeLinear" and len(node.input) > 2 and types.get(node.input[2]) in _INT16:
            int16.append(node.input[0])
        if node.op_type in _QDQ or node.op_type == "Constant":
            continue
        compute += 1
        for name in node.input:
            if not name or types.get(name) not in _FLOAT:
                continue
            src = producer.get(name)
            if src is None or src.op_type != "DequantizeLinear":
                origin = "a graph input" if name in graph_inputs else (src.op_type if src else "a float initializer")
                bad(node, f"float input '{name}' comes from {origin}, not from DequantizeLinear")
        for name in node.output:
            if types.get(name) not in _FLOAT:
                continue
            users = consumers.get(name, [])
            if name in graph_outputs or not users or any(u.op_type != "QuantizeLinear" for u in users):
                bad(node, f"float output '{name}' is not quantized right away")
        widx = _WEIGHT_OPS.get(node.op_type)
        if widx is not None and len(node.input) > widx:
            dq = producer.get(node.input[widx])
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                if not _per_output_channel(node, inits[dq.input[0]], dq, inits):
                    bad(node, "weights are not int8 per output channel")
    return IntegerCheck(not violations, violations, int16, compute)


def _per_output_channel(node: onnx.NodeProto, q: onnx.TensorProto, dq: onnx.NodeProto, inits: dict) -> bool:
    """int8 weights with one scale per output channel, along the output-channel axis."""
    scale = inits.get(dq.input[1])
    if q.data_type != onnx.TensorProto.INT8 or scale is None or len(q.dims) < 2:
        return False
    rank = len(q.dims)
    if node.op_type == "MatMul":
        out_axis = rank - 1
    elif node.op_type == "Gemm":
        out_axis = 0 if next((a.i for a in node.attribute if a.name == "transB"), 0) else 1
    else:  # Conv: [out, in/groups, kh, kw]
        out_axis = 0
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % rank
    n_scales = 1
    for d in scale.dims:
        n_scales *= d
    return axis == out_axis and n_scales == q.dims[out_axis] and len(scale.dims) == 1


def _is_input_cast(node: onnx.NodeProto, graph_inputs: set, consumers: dict) -> bool:
    """The input boundary: an integer graph input cast to float and quantized at once."""
    return (node.op_type == "Cast" and node.input[0] in graph_inputs
            and all(u.op_type == "QuantizeLinear" for u in consumers.get(node.output[0], [])))
