"""QNN context binaries for each known SoC, compiled from a tiny QDQ graph and run on the HTP simulator."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgec.exporters.qnn_context import SOCS, soc_names
from edgec.targets.npu import compile_context


class _Calibration(CalibrationDataReader):
    def __init__(self, batches):
        self._batches = iter(batches)

    def get_next(self):
        return next(self._batches, None)


@pytest.fixture(scope="module")
def qdq_mlp(tmp_path_factory):
    """x[4, 8] -> MatMul -> Relu -> MatMul -> y[4, 4], uint8 activations, int8 per-channel weights."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.5, n)
               for n, s in (("w1", (8, 16)), ("w2", (16, 4)))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    root = tmp_path_factory.mktemp("ctx")
    onnx.save(model, root / "mlp.onnx")
    calib = _Calibration([{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(16)])
    quantize_static(str(root / "mlp.onnx"), str(root / "model.onnx"), calib, quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    return root / "model.onnx"


def _feeds(n=3):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(n)]


def test_each_known_soc_gets_a_context_of_its_own_htp_generation(qdq_mlp, tmp_path):
    (tmp_path / "scratch").mkdir()
    for soc in SOCS.values():
        ctx = compile_context(qdq_mlp, soc, tmp_path, tmp_path / "scratch", _feeds())
        name = f"model.qnn-{soc.name.lower()}"
        assert (ctx.path.name, ctx.binary.name) == (f"{name}.onnx", f"{name}.bin") and not ctx.not_run
        assert ctx.max_abs_diff == 0.0 and 0 < ctx.load_seconds and 0 < ctx.compile_seconds
        # the QNN SDK writes its target into the binary: the table's ids and generations are its own
        assert f"soc_type={soc.name};arch={soc.htp_arch}".encode() in ctx.binary.read_bytes()
        (node,) = onnx.load(ctx.path).graph.node
        attrs = {a.name: a for a in node.attribute}
        assert node.op_type == "EPContext" and attrs["ep_cache_context"].s.decode() == ctx.binary.name
        assert attrs["embed_mode"].i == 0 and ctx.qnn_sdk == attrs["ep_sdk_version"].s.decode().lstrip("v")
    assert not list(tmp_path.glob("*_qnn.bin"))  # ORT's own names stay in scratch


def test_a_context_the_simulator_cannot_run_is_still_written_and_says_why(qdq_mlp, tmp_path):
    unrunnable = [{"x": np.zeros((4, 9), np.float32)}]  # the compiled graph refuses to run on it
    ctx = compile_context(qdq_mlp, SOCS["sm8750"], tmp_path, tmp_path, unrunnable)
    assert ctx.not_run.startswith("compiled, not run: the HTP simulator here cannot run HTP v79 (")
    assert ctx.path.is_file() and ctx.binary.stat().st_size > 0
    assert ctx.load_seconds is None and ctx.max_abs_diff is None


@pytest.mark.parametrize("given, expected", [("SM8650", ("sm8650",)), (["sm8750", " SM8550", "sm8750"],
                                                                        ("sm8750", "sm8550"))])
def test_soc_names_are_lower_case_each_once_in_order(given, expected):
    assert soc_names(given) == expected


@pytest.mark.parametrize("given, match", [(["sm8650", "sd888"], "unknown SoC 'sd888': choose from sm8350"),
                                          ([], "at least one"), ([""], "at least one")])
def test_bad_soc_names_are_value_errors(given, match):
    with pytest.raises(ValueError, match=match):
        soc_names(given)
