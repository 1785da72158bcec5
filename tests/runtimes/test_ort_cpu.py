"""ORT on the CPU runs float models as given and turns a bad path into a BackendError."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgec.errors import BackendError
from edgec.runtimes import ort_cpu


def _linear_relu(path, w, b):
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")],
        "linear_relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, path)


def test_runs_a_float_model(tmp_path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    _linear_relu(tmp_path / "m.onnx", w, b)
    session = ort_cpu.load(tmp_path / "m.onnx", threads=1)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    (y,) = session.run({"x": x})
    assert session.input_names == ["x"] and session.output_names == ["y"]
    np.testing.assert_allclose(y, np.maximum(x @ w + b, 0), rtol=1e-5, atol=1e-6)


def test_missing_file_is_a_backend_error(tmp_path):
    with pytest.raises(BackendError, match="not found"):
        ort_cpu.load(tmp_path / "absent.onnx")


def test_corrupt_file_is_a_backend_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(BackendError, match="cannot load"):
        ort_cpu.load(tmp_path / "bad.onnx")
