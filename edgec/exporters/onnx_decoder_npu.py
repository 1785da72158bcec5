"""A static-shape decoder graph for the HTP: a chunk of tokens in, logits and the chunk's cache entries out.

NPUs compile one shape, so the graph takes `chunk` tokens, the whole cache
(`context` slots per layer) and an additive mask over cache slots plus the
chunk itself (one more per sliding window shorter than the context); rotary
rows (one set per RoPE table) come in from the host. It returns only the chunk's
new keys and values, which the host writes into its cache: no cache-sized
copy goes through the graph. Activations are 16-bit and weights int8 per
channel (A16W8); the cache tensors are graph inputs and outputs in uint16,
with one scale per layer and kind shared by the past input, the new output
and their concatenation, so the host stores the graph's output as is.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from edgec.calibration.plan import PrecisionPlan
from edgec.errors import ExportError, InputError
from edgec.exporters.atomic import write_atomic
from edgec.exporters.formats import CHUNKED_KIND
from edgec.exporters.onnx_float import export_onnx
from edgec.models.decoder import Decoder

SCORE_FLOOR = 30.0  # masked scores clip this far below the lowest real score: weight e**-30


class _ChunkGraph(nn.Module):
    """Decoder.run with a cache callback: attend over past slots + the chunk, return the chunk's entries."""

    def __init__(self, module: Decoder, windows: list[int | None]):
        super().__init__()
        self.module, self.windows = module, windows
        self.tables = len(module.rope_scale)  # cos and sin inputs per RoPE table
        self.kinds = list(dict.fromkeys(windows))  # one mask input per distinct window, in this order

    def forward(self, input_ids, *rest):
        t = self.tables
        cos, sin, rest = list(rest[:2 * t:2]), list(rest[1:2 * t:2]), rest[2 * t:]  # lists: no Gather
        masks, past = rest[:len(self.kinds)], rest[len(self.kinds):]
        new: list[torch.Tensor] = []

        def cache(i: int, k: torch.Tensor, v: torch.Tensor):
            new.extend((k, v))
            return torch.cat([past[2 * i], k], dim=2), torch.cat([past[2 * i + 1], v], dim=2)

        per_layer = [masks[self.kinds.index(w)] for w in self.windows]
        return (self.module.run(input_ids, cos, sin, per_layer, cache), *new)


def windows_within(module: Decoder, context: int) -> list[int | None]:
    """Each layer's sliding window where it hides something in `context` positions, else None."""
    return [w if w is not None and w < context else None for w in module.windows]


def mask_name(window: int | None) -> str:
    return "mask" if window is None else f"mask_w{window}"


def rope_names(table: int) -> tuple[str, str]:
    return ("cos", "sin") if table == 0 else (f"cos{table}", f"sin{table}")


def _io(module: Decoder, context: int, chunk: int) -> tuple[list[dict], list[dict]]:
    d = module.layers[0].attn.head_dim
    inputs = [{"name": "input_ids", "shape": [1, chunk], "dtype": "int32"}]
    inputs += [{"name": name, "shape": [chunk, d], "dtype": "float32"}
               for t in range(len(module.rope_scale)) for name in rope_names(t)]
    inputs += [{"name": mask_name(w), "shape": [1, 1, chunk, context + chunk], "dtype": "float32"}
               for w in dict.fromkeys(windows_within(module, context))]
    outputs = [{"name": "logits", "shape": [1, chunk, module.lm_head.out_features], "dtype": "float32"}]
    for i, layer in enumerate(module.layers):
        for kind in ("key", "value"):
            inputs.append({"name": f"past_{kind}.{i}", "shape": [1, layer.attn.kv_heads, context, d],
                           "dtype": "float32"})
            outputs.append({"name": f"new_{kind}.{i}", "shape": [1, layer.attn.kv_heads, chunk, d],
                            "dtype": "float32"})
    return inputs, outputs


def export_float_decoder(module: Decoder, out_path: Path, context: int, chunk: int) -> dict:
    """The float graph (the reference before quantization) and its contract."""
    if not 0 < chunk <= context <= module.max_pos:
        raise InputError(f"need 0 < chunk ({chunk}) <= context ({context}) <= the model's max positions "
                         f"({module.max_pos}): pick a smaller --context or --chunk")
    inputs, outputs = _io(module, context, chunk)
    example = {t["name"]: np.zeros(t["shape"], t["dtype"]) for t in inputs}
    windows = windows_within(module, context)
    export_onnx(_ChunkGraph(module.eval(), windows), example, [t["name"] for t in outputs], Path(out_path))
    d = inputs[1]["shape"][1]
    return {"kind": CHUNKED_KIND, "context": context, "chunk": chunk, "inputs": inputs, "outputs": outputs,
            "rope": {"inv_freq": module.inv_freq.tolist(), "attention_factor": module.rope_scale, "head_dim": d,
                     "layout": "half-split", "inputs": [list(rope_names(t)) for t in range(len(module.rope_scale))]},
            "masks": [{"name": mask_name(w), "window": w} for w in dict.fromkeys(windows)],
            "mask_value": module.mask_value,
            "host_loop": (f"edgec.runtimes.htp_llm: prefill {chunk} tokens per run; decode runs the same "
                          f"graph with one token, the chunk padded with copies of it"),
            "cache": {"dtype": "float32", "scale": {}, "zero_point": {},
                      "update": ("past_X.i holds positions 0..context-1 (unwritten slots: the zero point, "
                                 "masked); after a run on tokens at positions p..p+n-1, copy new_X.i[:, :, :n] "
                                 "into past_X.i[:, :, p:p+n] as is (same dtype and scale)"),
                      "mask": ("mask[0, 0, r, j] = 0 where row r may attend, else mask_value: cache slots "
                               "j < p, and the chunk's own entries at j = context + c for c <= r; rows past "
                               "the real tokens copy the last one (id, position, mask row). mask_wW, for the "
                               "layers with a sliding window of W: the same, less the keys at positions "
                               "<= the row's position - W")}}


def quantize_decoder(float_path: Path, out_path: Path, contract: dict, feeds: list[dict]) -> dict:
    """The float graph as an integer-only A16W8 QDQ graph at `out_path`, its cache tensors carrying the quantized
    integers; `contract["cache"]` gains their dtype, scales and zero points. Returns the observers chosen."""
    from edgec.exporters.integer_check import check_integer_only
    from edgec.exporters.onnx_qdq import quantize_qdq

    out_path = Path(out_path)

    def adjust(model: onnx.ModelProto, ranges: dict) -> None:
        _tie_cache_ranges(model, ranges, contract)
        _floor_masked_scores(model, ranges)

    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        qdq_path = Path(tmp) / "qdq.onnx"
        result = quantize_qdq(float_path, qdq_path, feeds, PrecisionPlan(), adjust=adjust)
        model = onnx.load(qdq_path)
    contract["cache"].update(_quantized_io(model, contract))
    check = check_integer_only(model)
    if not check.integer_only:
        raise ExportError(f"the decoder graph is not integer-only ({check.violations[0]['node']}: "
                          f"{check.violations[0]['reason']})")
    write_atomic(out_path, lambda t: onnx.save(model, t))
    return result.observers


def _tie_cache_ranges(model: onnx.ModelProto, ranges: dict[str, list[dict]], contract: dict) -> None:
    """One range for past_X.i, new_X.i and their Concat, so the host stores new entries without requantizing."""
    for t in contract["outputs"][1:]:
        new, past = t["name"], "past_" + t["name"][len("new_"):]
        concat = next(n.output[0] for n in model.graph.node
                      if n.op_type == "Concat" and list(n.input) == [past, new])
        lo = min(0.0, *(float(ranges[x][0]["rmin"]) for x in (past, new) if x in ranges))
        hi = max(0.0, *(float(ranges[x][0]["rmax"]) for x in (past, new) if x in ranges))
        for name in (past, new, concat):
            ranges[name] = [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]


def _floor_masked_scores(model: onnx.ModelProto, ranges: dict[str, list[dict]]) -> None:
    """Softmax inputs range from just below the lowest real score, not from the mask value.

    A range down to -1e4 would leave 0.15 per 16-bit step; clipped SCORE_FLOOR below the
    lowest unmasked score, a masked key still gets weight below e**-30, at steps of ~1e-3.
    """
    mask_like = {i.name for i in model.graph.input if i.name == "mask" or i.name.startswith("mask_w")}
    for node in model.graph.node:  # the mask, repeated per query group
        if node.op_type == "Concat" and set(node.input) <= mask_like:
            mask_like.add(node.output[0])
    for node in model.graph.node:
        if node.op_type == "Add" and sum(x in mask_like for x in node.input) == 1:
            scores = next(x for x in node.input if x not in mask_like)
            if scores in ranges and node.output[0] in ranges:
                lo = float(ranges[scores][0]["rmin"]) - SCORE_FLOOR
                ranges[node.output[0]] = [{"rmin": np.float32(lo), "rmax": ranges[scores][0]["rmax"]}]


def _quantized_io(model: onnx.ModelProto, contract: dict) -> dict:
    """Cache inputs and outputs carry the quantized integers: drop the inputs' Q, expose the outputs' Q.

    Returns the cache section's dtype and per-tensor scale/zero point; each past/new pair must share them.
    """
    g = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in g.node:
        for x in node.input:
            consumers.setdefault(x, []).append(node)
    producers = {o: n for n in g.node for o in n.output}
    qparams = {}
    for value in g.input:
        if value.name.startswith("past_"):
            (q,) = consumers[value.name]
            for dq in consumers[q.output[0]]:
                dq.input[0] = value.name
            g.node.remove(q)
            qparams[value.name] = _retype(value, q, inits)
    for value in g.output:
        if value.name.startswith("new_"):
            dq = producers[value.name]
            q, hidden = producers[dq.input[0]], value.name + "_DequantizeLinear_Output"
            for user in consumers.get(value.name, []):
                user.input[:] = [hidden if x == value.name else x for x in user.input]
            dq.output[0] = hidden
            dq.input[0] = q.output[0] = value.name
            qparams[value.name] = _retype(value, q, inits)
    for t in contract["outputs"][1:]:
        past = "past_" + t["name"][len("new_"):]
        if qparams[t["name"]] != qparams[past]:
            raise ExportError(f"{t['name']} and {past} were quantized differently, so the host could not "
                              "store one as the other: a bug in this exporter")
    dtypes = {dtype for _, _, dtype in qparams.values()}
    if len(dtypes) != 1:
        raise ExportError(f"the cache tensors were quantized to mixed types {sorted(dtypes)}: a bug in this exporter")
    for t in [*contract["inputs"], *contract["outputs"]]:
        if t["name"] in qparams:
            t["dtype"] = qparams[t["name"]][2]
    onnx.checker.check_model(model)
    return {"dtype": dtypes.pop(), "scale": {k: v[0] for k, v in qparams.items()},
            "zero_point": {k: v[1] for k, v in qparams.items()}}


def _retype(value: onnx.ValueInfoProto, q: onnx.NodeProto, inits: dict) -> tuple[float, int, str]:
    """Gives the graph input/output the integer type of quantizer `q`; returns its scale, zero point, dtype."""
    zp = inits[q.input[2]]
    value.type.tensor_type.elem_type = onnx.helper.np_dtype_to_tensor_dtype(zp.dtype)
    return float(inits[q.input[1]]), int(zp), zp.dtype.name
