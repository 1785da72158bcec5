"""The ONNX the gpu target compiles from: fp16 inside with float32 at the boundary, and the class-token
Gather rewritten to Slice + Squeeze, both equivalent on ONNX Runtime (no IREE needed)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest


@pytest.fixture(scope="module")
def vit():
    from edgec.toolchain.load import inspect, load
    from edgec.toolchain.recipe import Recipe

    model = load(inspect("vit-digits"))
    feeds = model.task.feeds(model, None, Recipe(eval_samples=16))
    return model, feeds


def _export(module, feeds, path):
    from edgec.exporters.onnx_float import export_onnx

    return export_onnx(module, feeds.example, ["logits"], path).path


def _run(path, feeds):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, f)[0] for f in feeds.eval])


def test_fp16_graph_keeps_float32_inputs_and_outputs(vit, tmp_path):
    from edgec.targets.gpu import _Half

    model, feeds = vit
    full = _export(model.module, feeds, tmp_path / "f.onnx")
    half = _export(_Half(model.module), feeds, tmp_path / "h.onnx")
    g = onnx.load(half).graph
    f32 = onnx.TensorProto.FLOAT
    assert [v.type.tensor_type.elem_type for v in (*g.input, *g.output)] == [f32, f32]
    big = [t for t in g.initializer if np.prod(t.dims) >= 64]
    assert big and all(t.data_type == onnx.TensorProto.FLOAT16 for t in big)
    a, b = _run(full, feeds), _run(half, feeds)
    assert (a.argmax(1) == b.argmax(1)).all() and 0 < np.abs(a - b).max() < 0.1


def test_class_token_gather_becomes_an_equivalent_slice(vit, tmp_path):
    from edgec.exporters.iree import gpu_ready

    model, feeds = vit
    path = _export(model.module, feeds, tmp_path / "m.onnx")
    before = _run(path, feeds)
    gpu_ready(path)
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert "Gather" not in ops and "Slice" in ops and "Squeeze" in ops
    np.testing.assert_array_equal(_run(path, feeds), before)
