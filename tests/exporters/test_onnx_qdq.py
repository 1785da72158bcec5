"""Float ONNX export and QDQ quantization of a tiny TextEncoder, checked on ORT CPU and the HTP."""

import numpy as np
from helpers import padded_feeds
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgec.calibration.plan import PrecisionPlan
from edgec.errors import ExportError
from edgec.exporters.onnx_float import export_onnx
from edgec.exporters.onnx_qdq import quantize_qdq
from edgec.models.encoder import TextEncoder
from edgec.runtimes import ort_cpu, qnn_htp

SEQ = 16


def _encoder():
    torch.manual_seed(0)
    return TextEncoder(vocab=100, max_pos=64, type_vocab=2, hidden=32,
                       layers=[{"heads": 4, "head_dim": 8, "intermediate": 64}] * 2, act="gelu", eps=1e-12).eval()


CALIB = padded_feeds([11, 16, 5, 9, 14, 7, 12, 3], SEQ, seed=0)
HELD_OUT = padded_feeds([10, 16, 4, 13], SEQ, seed=1)


def _cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _real(feed, y):
    return y[feed["attention_mask"].astype(bool)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("qdq")
    module = _encoder()
    float_art = export_onnx(module, CALIB[0], ["last_hidden_state"], out / "float.onnx")
    result = quantize_qdq(float_art.path, out / "qdq.onnx", CALIB, PrecisionPlan())
    return module, float_art, result


def test_float_export_matches_eager(exported):
    module, float_art, _ = exported
    assert (float_art.format, float_art.runtime) == ("onnx", "ort-cpu")
    model = onnx.load(float_art.path)
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    session = ort_cpu.load(float_art.path)
    for feed in HELD_OUT:  # other lengths than the traced example: the mask is an input, not a constant
        (got,) = session.run(feed)
        with torch.no_grad():
            want = module(*(torch.from_numpy(v) for v in feed.values())).numpy()
        assert got.shape == (1, SEQ, 32)
        np.testing.assert_allclose(_real(feed, got), _real(feed, want), atol=1e-4, rtol=0)


def test_export_leaves_only_the_artifacts(exported):
    _, float_art, result = exported
    assert sorted(p.name for p in float_art.path.parent.iterdir()) == ["float.onnx", "qdq.onnx"]
    assert (result.artifact.format, result.artifact.runtime) == ("onnx-qdq", "qnn-htp")


def _matmul_weights(model):
    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        dq = producer.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            out.append((inits[dq.input[0]], numpy_helper.to_array(inits[dq.input[1]]), axis))
    return out


def test_matmul_weights_are_int8_per_output_channel(exported):
    model = onnx.load(exported[2].artifact.path)
    weights = _matmul_weights(model)
    assert len(weights) == 2 * 6  # q, k, v, o, fc1, fc2 per layer
    for w, scale, axis in weights:
        assert w.data_type == onnx.TensorProto.INT8
        assert axis == len(w.dims) - 1
        assert scale.shape == (w.dims[-1],) and (scale > 0).all()
        assert np.unique(scale).size > 1  # a scale per channel, not one broadcast
    assert not any(i.data_type == onnx.TensorProto.FLOAT and len(i.dims) == 2 for i in model.graph.initializer)


def test_activations_are_uint16_and_every_float_tensor_was_observed(exported):
    _, float_art, result = exported
    model = onnx.load(result.artifact.path)
    zps = {i.name: i.data_type for i in model.graph.initializer}
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    q_types = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            q_types.setdefault(producer.get(n.input[0]), set()).add(zps[n.input[2]])
    assert q_types.pop("Gather") == {onnx.TensorProto.UINT8}  # a row of the uint8 table keeps its type
    assert set.union(*q_types.values()) == {onnx.TensorProto.UINT16}
    assert len(q_types) >= 6  # Add, MatMul, Softmax, LayerNormalization, Gelu, Cast, ...
    n_float = sum(1 for n in onnx.load(float_art.path).graph.node if n.op_type != "Constant")
    assert 0 < sum(result.observers.values()) <= n_float
    assert set(result.observers) <= {"minmax", "percentile", "mse"}


def test_qdq_output_is_close_to_float(exported):
    _, float_art, result = exported
    ref, qdq = ort_cpu.load(float_art.path), ort_cpu.load(result.artifact.path)
    for feed in HELD_OUT:
        (want,), (got,) = ref.run(feed), qdq.run(feed)
        assert _cosine(_real(feed, got), _real(feed, want)) >= 0.99
        assert not np.allclose(got, want, atol=1e-6)  # really quantized


def test_qdq_runs_whole_on_the_htp_and_agrees_with_ort_cpu(exported):
    path = exported[2].artifact.path
    htp, cpu = qnn_htp.load(path), ort_cpu.load(path)
    for feed in HELD_OUT[:2]:
        (a,), (b,) = htp.run(feed), cpu.run(feed)
        assert a.shape == b.shape == (1, SEQ, 32)
        assert _cosine(_real(feed, a), _real(feed, b)) >= 0.99


def test_uint8_plan_quantizes_activations_to_uint8(exported, tmp_path):
    float_art = exported[1]
    result = quantize_qdq(float_art.path, tmp_path / "qdq8.onnx", CALIB[:4], PrecisionPlan(activations="uint8"))
    model = onnx.load(result.artifact.path)
    zps = {i.name: i.data_type for i in model.graph.initializer}
    assert {zps[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"} == {onnx.TensorProto.UINT8}


def test_empty_calibration_set_raises(exported, tmp_path):
    with pytest.raises(ExportError, match="no calibration samples"):
        quantize_qdq(exported[1].path, tmp_path / "qdq.onnx", [], PrecisionPlan())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kw, match", [
    ({"activations": "int4"}, r"activations must be one of .*got 'int4'"),
    ({"observer": "kl"}, r"observer must be one of .*got 'kl'"),
    ({"weights": "int4"}, "only int8 weights and uint8 embedding tables"),
    ({"embeddings": "int8"}, "only int8 weights and uint8 embedding tables")])
def test_plan_rejects_unsupported_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        PrecisionPlan(**kw)


def test_plan_round_trips_and_is_frozen():
    for plan in (PrecisionPlan(), PrecisionPlan(activations="uint8", observer="percentile")):
        assert PrecisionPlan.from_dict(plan.to_dict()) == plan
    assert PrecisionPlan().to_dict() == {"activations": "uint16", "weights": "int8", "embeddings": "uint8",
                                         "observer": "auto"}
    with pytest.raises(TypeError):
        PrecisionPlan("uint8")  # keyword-only
    with pytest.raises(AttributeError):
        PrecisionPlan().observer = "minmax"
