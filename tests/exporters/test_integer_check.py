"""check_integer_only: QDQ graphs pass, float islands and coarse weights are named."""

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edgec.calibration.plan import PrecisionPlan
from edgec.exporters.integer_check import check_integer_only
from edgec.exporters.onnx_float import export_onnx
from edgec.exporters.onnx_qdq import quantize_qdq
from edgec.models.encoder import TextEncoder

K, N = 8, 4  # MatMul weight [K, N]: N output channels


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def _q(x, y, prefix, zp_dtype=np.uint16):
    """Q (scale, zero point) then DQ: `x` float -> `y` float on the integer grid."""
    inits = [_init(f"{prefix}_scale", np.float32(0.01)), _init(f"{prefix}_zp", zp_dtype(0))]
    nodes = [helper.make_node("QuantizeLinear", [x, f"{prefix}_scale", f"{prefix}_zp"], [f"{prefix}_q"],
                              name=f"{prefix}_Q"),
             helper.make_node("DequantizeLinear", [f"{prefix}_q", f"{prefix}_scale", f"{prefix}_zp"], [y],
                              name=f"{prefix}_DQ")]
    return nodes, inits


def _weight_dq(scale_shape=(N,), axis=1, dtype=np.int8, name="w"):
    """An integer weight [K, N] dequantized with a scale of `scale_shape` along `axis`."""
    rng = np.random.default_rng(0)
    w = rng.integers(-100, 100, (K, N)).astype(dtype)
    scale = np.full(scale_shape, 0.02, np.float32)
    inits = [_init(f"{name}_q", w), _init(f"{name}_scale", scale),
             _init(f"{name}_zp", np.zeros(scale_shape, dtype))]
    attrs = {"axis": axis} if scale_shape != () else {}
    node = helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zp"], [f"{name}_dq"],
                            name=f"{name}_DQ", **attrs)
    return [node], inits


def _model(nodes, inits, inputs=None, out="out", out_shape=(2, N)):
    inputs = inputs or [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                                                                  list(out_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model


def _qdq_matmul(weight=None, weight_inits=None, mm_name="mm"):
    """x -> Q(uint16) -> DQ -> MatMul(weight) -> Q(uint16) -> DQ -> out."""
    xin, xin_inits = _q("x", "x_dq", "x")
    if weight is None:
        weight, weight_inits = _weight_dq()
    yq, y_inits = _q("y", "out", "y")
    mm = helper.make_node("MatMul", ["x_dq", weight[-1].output[0] if weight else "w"], ["y"], name=mm_name)
    return _model([*xin, *weight, mm, *yq], [*xin_inits, *weight_inits, *y_inits])


def _refused(check) -> list[tuple[str, str, str]]:
    """(node, op, reason) of each violation of a graph that must not pass."""
    assert check.integer_only is False and check.to_dict()["integer_only"] is False
    return [(v["node"], v["op"], v["reason"]) for v in check.violations]


NOT_PER_CHANNEL = "weights are not int8 per output channel"


def test_qdq_matmul_with_per_channel_int8_weights_passes():
    check = check_integer_only(_qdq_matmul())
    assert check.integer_only, check.violations
    assert check.violations == [] and check.compute_nodes == 1
    assert check.to_dict()["integer_only"] is True


def test_float_weight_initializer_fails_and_names_the_node():
    w = _init("w", np.ones((K, N), np.float32))
    check = check_integer_only(_qdq_matmul(weight=[], weight_inits=[w], mm_name="fc_float"))
    assert _refused(check) == [
        ("fc_float", "MatMul", "float input 'w' comes from a float initializer, not from DequantizeLinear")]


def test_float_output_that_is_not_requantized_fails():
    xin, inits = _q("x", "x_dq", "x")
    relu = helper.make_node("Relu", ["x_dq"], ["out"], name="relu_out")
    check = check_integer_only(_model([*xin, relu], inits, out_shape=(2, K)))
    assert _refused(check) == [("relu_out", "Relu", "float output 'out' is not quantized right away")]


def test_float_output_read_by_a_float_op_fails_at_both_ends():
    xin, inits = _q("x", "x_dq", "x")
    yq, y_inits = _q("r2", "out", "y")
    nodes = [*xin, helper.make_node("Relu", ["x_dq"], ["r1"], name="relu1"),
             helper.make_node("Relu", ["r1"], ["r2"], name="relu2"), *yq]
    check = check_integer_only(_model(nodes, inits + y_inits, out_shape=(2, K)))
    assert _refused(check) == [("relu1", "Relu", "float output 'r1' is not quantized right away"),
                               ("relu2", "Relu", "float input 'r1' comes from Relu, not from DequantizeLinear")]


def test_per_tensor_int8_weights_fail():
    weight, inits = _weight_dq(scale_shape=())
    check = check_integer_only(_qdq_matmul(weight, inits))
    assert _refused(check) == [("mm", "MatMul", NOT_PER_CHANNEL)]


def test_uint8_weights_fail():
    weight, inits = _weight_dq(dtype=np.uint8)
    check = check_integer_only(_qdq_matmul(weight, inits))
    assert _refused(check) == [("mm", "MatMul", NOT_PER_CHANNEL)]


def test_per_tensor_weights_with_a_one_element_scale_fail():
    weight, inits = _weight_dq(scale_shape=(1,), axis=1)
    check = check_integer_only(_qdq_matmul(weight, inits))
    assert _refused(check) == [("mm", "MatMul", NOT_PER_CHANNEL)]


def test_weights_quantized_along_the_reduction_axis_fail():
    weight, inits = _weight_dq(scale_shape=(K,), axis=0)
    check = check_integer_only(_qdq_matmul(weight, inits))
    assert _refused(check) == [("mm", "MatMul", NOT_PER_CHANNEL)]


def test_int16_quantized_tensors_are_listed():
    xin, x_inits = _q("x", "x_dq", "x", zp_dtype=np.uint16)
    weight, w_inits = _weight_dq()
    yq, y_inits = _q("y", "out", "y", zp_dtype=np.uint8)
    mm = helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"], name="mm")
    check = check_integer_only(_model([*xin, *weight, mm, *yq], x_inits + w_inits + y_inits))
    assert check.integer_only
    assert check.int16_tensors == ["x"]  # "y" is uint8
    assert check.to_dict()["int16_tensors"] == 1


def _ids_input():
    return [helper.make_tensor_value_info("ids", TensorProto.INT64, [2, K])]


def test_integer_input_cast_then_quantized_passes():
    xin, inits = _q("ids_f", "ids_dq", "x")
    yq, y_inits = _q("r", "out", "y")
    nodes = [helper.make_node("Cast", ["ids"], ["ids_f"], name="cast_ids", to=TensorProto.FLOAT), *xin,
             helper.make_node("Relu", ["ids_dq"], ["r"], name="relu"), *yq]
    check = check_integer_only(_model(nodes, inits + y_inits, inputs=_ids_input(), out_shape=(2, K)))
    assert check.integer_only, check.violations
    assert check.compute_nodes == 2  # the Cast and the Relu


def test_integer_input_cast_read_by_a_float_op_fails():
    yq, y_inits = _q("r", "out", "y")
    nodes = [helper.make_node("Cast", ["ids"], ["ids_f"], name="cast_ids", to=TensorProto.FLOAT),
             helper.make_node("Relu", ["ids_f"], ["r"], name="relu"), *yq]
    check = check_integer_only(_model(nodes, y_inits, inputs=_ids_input(), out_shape=(2, K)))
    assert _refused(check) == [("cast_ids", "Cast", "float output 'ids_f' is not quantized right away"),
                               ("relu", "Relu", "float input 'ids_f' comes from Cast, not from DequantizeLinear")]


def test_float_graph_input_read_by_a_compute_op_fails():
    yq, y_inits = _q("r", "out", "y")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), *yq]
    check = check_integer_only(_model(nodes, y_inits, out_shape=(2, K)))
    assert _refused(check) == [("relu", "Relu", "float input 'x' comes from a graph input, not from DequantizeLinear")]


def test_unnamed_float_matmul_after_an_unnamed_input_cast_fails():
    xin, inits = _q("ids_f", "x_dq", "x")
    yq, y_inits = _q("y", "out", "y")
    nodes = [helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT), *xin,
             helper.make_node("MatMul", ["x_dq", "w"], ["y"]), *yq]
    w = _init("w", np.ones((K, N), np.float32))
    check = check_integer_only(_model(nodes, [*inits, w, *y_inits], inputs=_ids_input()))
    # the MatMul alone: the unnamed Cast is still the exempt input boundary
    assert _refused(check) == [
        ("", "MatMul", "float input 'w' comes from a float initializer, not from DequantizeLinear")]


def test_a_quantized_text_encoder_is_integer_only(tmp_path):
    torch.manual_seed(0)
    module = TextEncoder(vocab=100, max_pos=64, type_vocab=2, hidden=32,
                         layers=[{"heads": 4, "head_dim": 8, "intermediate": 64}] * 2, act="gelu", eps=1e-12)
    rng = np.random.default_rng(0)

    def feed(n):
        mask = (np.arange(16) < n).astype(np.int64)[None]
        return {"input_ids": rng.integers(1, 100, (1, 16)) * mask, "attention_mask": mask}

    feeds = [feed(n) for n in (11, 5, 16, 8)]
    export_onnx(module, feeds[0], ["last_hidden_state"], tmp_path / "float.onnx")
    float_check = check_integer_only(onnx.load(tmp_path / "float.onnx"))
    found = _refused(float_check)
    float_weights = {node for node, op, reason in found if op == "MatMul" and "a float initializer" in reason}
    assert len(float_weights) == 2 * 6  # q, k, v, o, fc1, fc2 per layer
    assert ("/word/Gather", "Gather",
            "float input 'word.weight' comes from a float initializer, not from DequantizeLinear") in found
    quantize_qdq(tmp_path / "float.onnx", tmp_path / "qdq.onnx", feeds, PrecisionPlan())
    check = check_integer_only(onnx.load(tmp_path / "qdq.onnx"))
    assert check.integer_only, check.violations[:5]
    assert check.compute_nodes > 20  # 2 layers of attention, LayerNorm and MLP
    assert len(check.int16_tensors) > 20  # uint16 activations
