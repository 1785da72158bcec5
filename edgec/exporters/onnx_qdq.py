"""Static QDQ quantization of a float ONNX graph by a precision plan.

ORT's quantization tool places the QuantizeLinear/DequantizeLinear pairs and
knows the HTP's constraints (`get_qnn_qdq_config`); edgec decides the ranges
(its own observers) and the per-tensor types, and hands both over as
TensorQuantOverrides.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantType, quantize
from onnxruntime.quantization.execution_providers.qnn import get_qnn_qdq_config

from edgec.calibration.observers import TensorStats, choose_range, sqnr_db
from edgec.calibration.plan import PrecisionPlan
from edgec.errors import ExportError
from edgec.exporters.artifact import Artifact
from edgec.exporters.atomic import write_atomic

_QTYPES = {"uint8": QuantType.QUInt8, "uint16": QuantType.QUInt16}
_BITS = {"uint8": 8, "uint16": 16}


# Below this 8-bit SQNR a tensor needs 16 bits (outliers or a wide dynamic range).
NEEDS_16BIT_DB = 30.0


@dataclass
class QdqResult:
    artifact: Artifact
    observers: dict[str, int]  # which observer won how many tensors
    sqnr8_db: dict[str, float]  # per activation: what 8 bits would have kept

    def int16_reasons(self, names: list[str]) -> list[dict]:
        """Why each 16-bit tensor is 16-bit: needed by its range, or kept for a uniform width."""
        out = []
        for name in names:
            db = self.sqnr8_db.get(name)
            if db is None:
                reason = "constant operand of a 16-bit op"
            elif db < NEEDS_16BIT_DB:
                reason = f"needed: 8 bits would keep only {db:.1f} dB SQNR (< {NEEDS_16BIT_DB:.0f} dB)"
            else:
                reason = (f"uniform activation width (the HTP fails to build graphs mixing 8- and "
                          f"16-bit activations); 8 bits would keep {db:.1f} dB")
            out.append({"tensor": name, "sqnr8_db": None if db is None else round(db, 1), "reason": reason})
        return out


class _Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def weight_overrides(model: onnx.ModelProto) -> dict[str, list[dict]]:
    """Int8 symmetric per-output-channel weights; uint8 lookup tables."""
    inits = {i.name: i for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        w = node.input[1] if len(node.input) > 1 else None
        if node.op_type == "Gather" and node.input[0] in inits:
            out[node.input[0]] = [{"quant_type": QuantType.QUInt8}]
        elif w in inits and node.op_type in ("MatMul", "Gemm", "Conv"):
            rank = len(inits[w].dims)
            if node.op_type == "MatMul":
                axis = rank - 1
            elif node.op_type == "Gemm":
                trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
                axis = 0 if trans_b else 1
            else:
                axis = 0
            out[w] = [{"axis": axis, "quant_type": QuantType.QInt8, "symmetric": True}]
    return out


def _widen_looked_up_rows(model: onnx.ModelProto, overrides: dict[str, list[dict]], plan: PrecisionPlan) -> None:
    """Rows looked up in an 8-bit table stay 8-bit; where a MatMul reads them directly (a decoder without a
    norm before its first attention, OLMo 2), they are requantized to the activation type, since the HTP
    takes no MatMul mixing 8- and 16-bit activations."""
    if plan.activations == plan.embeddings:
        return
    inits = {i.name for i in model.graph.initializer}
    readers = collections.defaultdict(set)
    for node in model.graph.node:
        for x in node.input:
            readers[x].add(node.op_type)
    for node in model.graph.node:
        out = node.output[0]
        if node.op_type == "Gather" and node.input[0] in inits and readers[out] & {"MatMul", "Gemm"} \
                and out in overrides:
            overrides[out] = [{**overrides[out][0], "quant_type": _QTYPES[plan.embeddings],
                               "convert": {"quant_type": _QTYPES[plan.activations]}}]


def activation_ranges(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], plan: PrecisionPlan,
                      seed: int = 0) -> tuple[dict[str, list[dict]], dict[str, int], dict[str, float]]:
    """Run the float graph with every intermediate exposed and pick a range per tensor."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    names = [o for n in probe.graph.node if n.op_type != "Constant" for o in n.output]
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    stats: dict[str, TensorStats] = {}
    for feed in feeds:
        for name, value in zip(names, sess.run(names, feed)):
            if value.dtype == np.float32 and value.size:
                stats.setdefault(name, TensorStats()).update(value, rng)
    overrides, won, sqnr8 = {}, collections.Counter(), {}
    for name, st in stats.items():
        observer, lo, hi = choose_range(st, plan.observer, _BITS[plan.activations])
        won[observer] += 1
        overrides[name] = [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
        sqnr8[name] = sqnr_db(st, 8)
    return overrides, dict(won), sqnr8


def quantize_qdq(float_path: Path, out_path: Path, feeds: list[dict[str, np.ndarray]],
                 plan: PrecisionPlan, adjust: Callable[[onnx.ModelProto, dict], None] | None = None
                 ) -> QdqResult:
    """`adjust(model, ranges)` may change the chosen activation ranges in place (ties between tensors)."""
    if not feeds:
        raise ExportError("no calibration samples: give --calib data with at least one sample")
    model = onnx.load(float_path)
    overrides, won, sqnr8 = activation_ranges(model, feeds, plan)
    if adjust is not None:
        adjust(model, overrides)
    _widen_looked_up_rows(model, overrides, plan)
    overrides.update(weight_overrides(model))
    config = get_qnn_qdq_config(
        model, _Feeds(feeds[:2]), calibrate_method=CalibrationMethod.MinMax,
        activation_type=_QTYPES[plan.activations], weight_type=QuantType.QUInt8,
        init_overrides=overrides)
    write_atomic(out_path, lambda tmp: quantize(model, tmp, config))
    return QdqResult(Artifact(out_path, "onnx-qdq", "qnn-htp"), won, sqnr8)
