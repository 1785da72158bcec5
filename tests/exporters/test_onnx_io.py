"""onnx_io: what an app feeds a QDQ artifact and how it reads the output."""

import numpy as np
from helpers import padded_feeds
import pytest
import torch

from edgec.calibration.plan import PrecisionPlan
from edgec.exporters.onnx_float import export_onnx
from edgec.exporters.onnx_io import onnx_io
from edgec.exporters.onnx_qdq import quantize_qdq
from edgec.models.encoder import TextEncoder
from edgec.runtimes import ort_cpu

SEQ = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest")
    torch.manual_seed(0)
    module = TextEncoder(vocab=100, max_pos=64, type_vocab=2, hidden=32,
                         layers=[{"heads": 4, "head_dim": 8, "intermediate": 64}] * 2, act="gelu", eps=1e-12)
    feeds = padded_feeds([11, 16, 5, 9, 14, 7, 12, 3], SEQ)
    float_art = export_onnx(module, feeds[0], ["last_hidden_state"], out / "float.onnx")
    qdq = quantize_qdq(float_art.path, out / "qdq.onnx", feeds, PrecisionPlan()).artifact
    return float_art.path, qdq.path, feeds


def test_qdq_inputs_are_int64_token_ids_without_quantization(models):
    io = onnx_io(models[1])
    assert io["inputs"] == [
        {"name": "input_ids", "dtype": "int64", "shape": [1, SEQ], "quantization": None},
        {"name": "attention_mask", "dtype": "int64", "shape": [1, SEQ], "quantization": None},
    ]


def test_qdq_output_has_uint16_quantization_that_matches_the_output(models):
    (out,) = onnx_io(models[1])["outputs"]
    assert (out["name"], out["dtype"], out["shape"]) == ("last_hidden_state", "float32", [1, SEQ, 32])
    q = out["quantization"]
    assert q["dtype"] == "uint16" and q["scale"] > 0 and 0 <= q["zero_point"] < 2 ** 16
    # every output value lies on the grid the manifest describes
    (y,) = ort_cpu.load(models[1]).run(models[2][0])
    steps = y / q["scale"] + q["zero_point"]
    assert np.abs(steps - np.round(steps)).max() < 1e-2
    assert steps.min() >= -0.5 and steps.max() <= 2 ** 16 - 0.5


def test_float_model_has_no_quantization(models):
    io = onnx_io(models[0])
    assert [i["quantization"] for i in io["inputs"] + io["outputs"]] == [None, None, None]
    assert io["outputs"][0]["dtype"] == "float32"
