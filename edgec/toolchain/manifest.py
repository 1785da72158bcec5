"""manifest.json: what an app needs to feed an artifact and read its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgec.exporters.artifact import Artifact


def _quant(node: onnx.NodeProto | None, inits: dict) -> dict | None:
    if node is None or len(node.input) < 3 or node.input[1] not in inits:
        return None
    scale = numpy_helper.to_array(inits[node.input[1]])
    zp = numpy_helper.to_array(inits[node.input[2]])
    return {"scale": float(scale.ravel()[0]), "zero_point": int(zp.ravel()[0]), "dtype": str(zp.dtype)}


def onnx_io(path: Path) -> dict:
    """Names, dtypes, static shapes, and the Q/DQ parameters at the graph boundary."""
    model = onnx.load(path, load_external_data=False)
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    q_of = {n.input[0]: n for n in g.node if n.op_type == "QuantizeLinear"}
    dq_to = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}

    def spec(v: onnx.ValueInfoProto, quant) -> dict:
        t = v.type.tensor_type
        return {"name": v.name,
                "dtype": str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type))),
                "shape": [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim],
                "quantization": quant}
    return {"inputs": [spec(v, _quant(q_of.get(v.name), inits)) for v in g.input],
            "outputs": [spec(v, _quant(dq_to.get(v.name), inits)) for v in g.output]}


def build_manifest(model, target: str, artifacts: list[Artifact], root: Path, seq_len: int,
                   tokenizer_files: list[str]) -> dict:
    entries = []
    onnx_spec = None
    for a in artifacts:
        entry = a.to_dict(root)
        if a.format.startswith("onnx"):
            onnx_spec = onnx_io(a.path)
            entry.update(onnx_spec)
        elif onnx_spec is not None:  # the .pte takes the same tensors in the same order
            entry.update({"inputs": [{**i, "quantization": None} for i in onnx_spec["inputs"]],
                          "outputs": [{**o, "quantization": None} for o in onnx_spec["outputs"][:1]]})
        entries.append(entry)
    manifest = {"model": model.name, "architecture": model.config.model_type, "target": target,
                "task": "feature-extraction" if model.kind == "text" else "image-classification",
                "artifacts": entries}
    if model.kind == "text":
        manifest["tokenizer"] = {"files": tokenizer_files, "max_length": seq_len, "padding": "right",
                                 "pad_token_id": model.tokenizer.pad_token_id,
                                 "pooling": "mean over attention_mask"}
    else:
        labels = getattr(model.config, "id2label", None) or {}
        manifest["labels"] = {str(k): v for k, v in labels.items()}
    return manifest
