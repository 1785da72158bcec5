"""The simulated HTP runs a QDQ graph whole, and coverage() names what it rejects."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgec.errors import BackendError
from edgec.runtimes import qnn_htp
from edgec.runtimes.htp_rewrites import FALLBACK, rewrite_for

RNG_SEED = 0


class _Calibration(CalibrationDataReader):
    def __init__(self, batches):
        self._batches = iter(batches)

    def get_next(self):
        return next(self._batches, None)


def _save(path, nodes, inputs, outputs, initializers=(), opset=17):
    graph = helper.make_graph(nodes, path.stem, inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _quantize(float_path, activations=QuantType.QUInt8, extra_options=None):
    """QDQ with int8 per-channel weights, calibrated on 16 batches of N(0, 1)."""
    rng = np.random.default_rng(RNG_SEED)
    batches = [{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(16)]
    out = float_path.with_name(float_path.stem + "_qdq.onnx")
    quantize_static(str(float_path), str(out), _Calibration(batches), quant_format=QuantFormat.QDQ,
                    activation_type=activations, weight_type=QuantType.QInt8, per_channel=True,
                    extra_options=extra_options or {})
    return out


def _x(shape=(4, 8)):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))


def _y(shape=(4, 4)):
    return helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))


@pytest.fixture(scope="module")
def qdq_mlp(tmp_path_factory):
    rng = np.random.default_rng(RNG_SEED)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32) * 0.5, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32) * 0.5, "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    path = tmp_path_factory.mktemp("htp") / "mlp.onnx"
    return _quantize(_save(path, nodes, [_x()], [_y()], [w1, w2]))


def _unfused_session(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_qdq_mlp_runs_whole_on_the_htp_and_matches_ort_cpu(qdq_mlp):
    # the QDQ graph's own arithmetic (DQ, float op, Q), not ORT's fused uint8 kernels, which saturate
    # on x86 without VNNI and would make the reference machine-dependent
    htp, cpu = qnn_htp.load(qdq_mlp), _unfused_session(qdq_mlp)
    y_scale = next(float(numpy_helper.to_array(t)) for t in onnx.load(qdq_mlp).graph.initializer
                   if t.name == "y_scale")
    rng = np.random.default_rng(1)
    worst = 0.0
    for _ in range(20):
        x = rng.standard_normal((4, 8)).astype(np.float32)
        (a,), (b,) = htp.run({"x": x}), cpu.run(None, {"x": x})
        assert np.abs(b).max() > 10 * y_scale  # a real signal, not a clipped zero
        worst = max(worst, float(np.abs(a - b).max()))
    # Both outputs sit on the same uint8 grid; the HTP requantizes with its own
    # fixed-point multipliers, so a value at a rounding edge moves one step, and
    # one step in the hidden layer can move the output one more. Measured: 1-2
    # steps over 5 seeds x 50 inputs.
    assert worst <= 2 * y_scale + 1e-6


def test_sessions_for_two_htp_generations_take_turns(qdq_mlp, tmp_path):
    """The simulator runs the generation of the session created last; an older session of another one
    (QNN error 1100 when run as it is) is created again before it runs, and gives the same outputs."""
    x = {"x": np.random.default_rng(2).standard_normal((4, 8)).astype(np.float32)}
    default = qnn_htp.load(qdq_mlp)  # v68
    (first,) = default.run(x)
    done = qnn_htp.compile_context(qdq_mlp, tmp_path / "ctx.onnx", soc_model=57, htp_arch=75, feeds=[x])
    v75 = qnn_htp.load(done.path)
    (ctx,) = v75.run(x)
    np.testing.assert_array_equal(ctx, done.outputs[0][0])
    np.testing.assert_array_equal(default.run(x)[0], first)
    np.testing.assert_array_equal(v75.run(x)[0], ctx)


def test_coverage_judges_as_v68_after_a_session_for_a_newer_htp(qdq_mlp, qdq_gelu, tmp_path):
    """A session for SM8650 leaves its op checks to later sessions that name no SoC (the v75 HTP builds the
    Gelu v68 cannot); edgec's then name SM8350, so coverage gives a fresh process's verdict."""
    x = {"x": np.ones((4, 8), np.float32)}
    qnn_htp.compile_context(qdq_mlp, tmp_path / "ctx.onnx", soc_model=57, htp_arch=75, feeds=[x])
    assert not qnn_htp.coverage(qdq_gelu).runs_fully


def test_coverage_of_the_qdq_mlp_is_complete(qdq_mlp):
    cov = qnn_htp.coverage(qdq_mlp)
    graph_nodes = [n for n in onnx.load(qdq_mlp).graph.node if n.op_type != "Constant"]
    assert cov.total_nodes == len(graph_nodes) and cov.total_nodes > 3  # Q/DQ counted
    assert (cov.htp_nodes, cov.fraction, cov.runs_fully, cov.unsupported) == (cov.total_nodes, 1.0, True, [])
    assert cov.to_dict()["fraction"] == 1.0 and cov.error is None


def test_unnamed_nodes_get_names_of_their_own(qdq_mlp, tmp_path):
    model = onnx.load(qdq_mlp)
    for node in model.graph.node:
        node.name = ""
    onnx.save(model, tmp_path / "unnamed.onnx")
    cov = qnn_htp.coverage(tmp_path / "unnamed.onnx")
    assert cov.fraction == 1.0 and cov.runs_fully


@pytest.fixture(scope="module")
def qdq_erf(tmp_path_factory):
    """A QDQ MatMul feeding a float Erf: the QNN EP has no Erf at all."""
    w = numpy_helper.from_array(np.random.default_rng(RNG_SEED).standard_normal((8, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
             helper.make_node("Erf", ["m"], ["y"], name="erf_1")]
    path = tmp_path_factory.mktemp("htp") / "erf.onnx"
    return _quantize(_save(path, nodes, [_x()], [_y()], [w]))


def test_coverage_names_the_rejected_erf(qdq_erf):
    cov = qnn_htp.coverage(qdq_erf)
    assert 0 < cov.fraction < 1 and not cov.runs_fully
    assert cov.htp_nodes == cov.total_nodes - 1
    (erf,) = cov.unsupported
    assert (erf.name, erf.op_type) == ("erf_1", "Erf")
    assert "not supported by QNN EP" in erf.reason
    assert "sigmoid" in erf.rewrite
    assert "fallback" in cov.error


def test_load_refuses_a_graph_that_does_not_run_whole(qdq_erf):
    with pytest.raises(BackendError, match=r"does not run fully on the HTP.*coverage\(\)"):
        qnn_htp.load(qdq_erf)


@pytest.fixture(scope="module")
def qdq_gelu(tmp_path_factory):
    w = numpy_helper.from_array(np.random.default_rng(RNG_SEED).standard_normal((8, 4)).astype(np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
             helper.make_node("Gelu", ["m"], ["y"], name="gelu_1")]
    path = _save(tmp_path_factory.mktemp("gelu") / "gelu.onnx", nodes, [_x()], [_y()], [w], opset=20)
    return _quantize(path, QuantType.QUInt16, {"ForceQuantizeNoInputCheck": True})


def test_a_graph_that_validates_but_fails_finalisation_is_not_complete(qdq_gelu):
    """Every node of the QDQ Gelu passes validation; the HTP cannot build QNN_Gelu."""
    cov = qnn_htp.coverage(qdq_gelu)
    assert not cov.runs_fully and "finalize" in cov.error
    assert cov.fraction < 1
    (gelu,) = cov.unsupported
    assert (gelu.name, gelu.op_type) == ("gelu_1", "Gelu")
    assert "finalisation could not create" in gelu.reason and "sigmoid" in gelu.rewrite


def test_dynamic_shapes_and_int64_casts_are_rejected_with_their_fixes(tmp_path):
    relu = _save(tmp_path / "dyn.onnx", [helper.make_node("Relu", ["x"], ["y"], name="r")],
                 [_x(("n", 8))], [_y(("n", 8))])
    cast = _save(tmp_path / "cast.onnx", [helper.make_node("Cast", ["x"], ["y"], name="c", to=TensorProto.INT64)],
                 [_x()], [helper.make_tensor_value_info("y", TensorProto.INT64, [4, 8])])
    (r,) = qnn_htp.coverage(relu).unsupported
    (c,) = qnn_htp.coverage(cast).unsupported
    assert r.reason == "Cannot get shape" and "static shape" in r.rewrite
    assert (c.name, c.op_type) == ("c", "Cast") and "int32" in c.rewrite


@pytest.mark.parametrize("call", [qnn_htp.load, qnn_htp.coverage])
def test_missing_or_corrupt_model_is_a_backend_error(call, tmp_path):
    with pytest.raises(BackendError, match="not found"):
        call(tmp_path / "absent.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(BackendError, match="cannot load"):
        call(tmp_path / "bad.onnx")


@pytest.mark.parametrize("op, context, expected", [
    ("GatherND", "Failed to create GatherND node. | dtypes: float int64 float", "flattened indices"),
    ("SkipLayerNormalization", "Operators of type `SkipLayerNormalization` are not supported", "plain ONNX"),
    ("MatMul", "Failed to add fused Matmul node. | dtypes: int16 float", "int8"),
    ("Softmax", "Cannot get shape | dtypes: float float", "static shape"),
    ("TopK", "some new reason | dtypes: float", FALLBACK),
])
def test_rewrite_table(op, context, expected):
    assert expected in rewrite_for(op, context)
