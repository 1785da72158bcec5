"""export_cpu_int8: ORT fuses the attention, the int8 model is smaller and stays close to eager."""

import numpy as np
import onnx
import pytest
import torch

from edgec.errors import ExportError
from edgec.exporters.onnx_cpu import export_cpu_int8, op_counts
from edgec.exporters.onnx_float import export_onnx
from edgec.models.encoder import TextEncoder, VisionEncoder
from edgec.runtimes import ort_cpu

SEQ, HIDDEN, HEADS = 32, 64, 4


def tiny_text() -> TextEncoder:
    torch.manual_seed(0)
    layers = [{"heads": HEADS, "head_dim": HIDDEN // HEADS, "intermediate": 128}] * 2
    return TextEncoder(vocab=100, max_pos=SEQ, type_vocab=2, hidden=HIDDEN, layers=layers,
                       act="gelu", eps=1e-12).eval()


def tiny_vit() -> VisionEncoder:
    torch.manual_seed(0)
    layers = [{"heads": HEADS, "head_dim": HIDDEN // HEADS, "intermediate": 128}] * 2
    return VisionEncoder(channels=1, patch=2, image_size=8, hidden=HIDDEN, layers=layers,
                         act="gelu", eps=1e-12, num_labels=10).eval()


def text_inputs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = (np.arange(SEQ) < n).astype(np.int64)[None]
    return {"input_ids": rng.integers(1, 100, (1, SEQ)) * mask, "attention_mask": mask}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel(), b.ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_text_int8_is_fused_smaller_and_close_to_eager(tmp_path):
    enc = tiny_text()
    art = export_cpu_int8(enc, text_inputs(9), tmp_path / "int8.onnx", HEADS, HIDDEN)
    ops = op_counts(onnx.load(str(art.path)))
    assert ops["QAttention"] == 2 and ops["Softmax"] == 0
    assert ops["SkipLayerNormalization"] == 4 and ops["BiasGelu"] == 2
    assert art.bytes < export_onnx(enc, text_inputs(9), ["last_hidden_state"], tmp_path / "float.onnx", opset=17, fold=False).bytes
    session = ort_cpu.load(art.path, threads=1)
    for n in (5, 20):  # the exported graph is not tied to the example's length
        feeds = text_inputs(n, seed=n)
        (out,) = session.run(feeds)
        with torch.no_grad():
            ref = enc(*(torch.from_numpy(v) for v in feeds.values())).numpy()
        assert cosine(out[0, :n], ref[0, :n]) >= 0.98
        assert not out[0, n:].any()


def test_vision_int8_exports_and_matches_eager(tmp_path):
    vit = tiny_vit()
    x = np.random.default_rng(0).standard_normal((8, 1, 8, 8)).astype(np.float32)
    art = export_cpu_int8(vit, {"pixel_values": x[:1]}, tmp_path / "vit.onnx", HEADS, HIDDEN)
    assert art.bytes < export_onnx(vit, {"pixel_values": x[:1]}, ["logits"], tmp_path / "float.onnx", opset=17, fold=False).bytes
    session = ort_cpu.load(art.path, threads=1)
    out = np.concatenate([session.run({"pixel_values": x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        ref = vit(torch.from_numpy(x)).numpy()
    assert cosine(out, ref) >= 0.98
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.75


def test_missed_attention_fusion_is_an_export_error(tmp_path, monkeypatch):
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    real = optimizer.optimize_model

    def without_attention(*args, **kwargs):
        options = FusionOptions("bert")
        options.enable_attention = False
        return real(*args, optimization_options=options, **kwargs)

    monkeypatch.setattr(optimizer, "optimize_model", without_attention)
    out = tmp_path / "int8.onnx"
    with pytest.raises(ExportError, match="fused 0 of 2 attention blocks"):
        export_cpu_int8(tiny_text(), text_inputs(9), out, HEADS, HIDDEN)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_other_modules_export_as_plain_int8(tmp_path):
    """Fusion is required only where it is known to apply (text encoders); others still get int8 MatMuls."""
    lin = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    art = export_cpu_int8(lin, {"x": x}, tmp_path / "m.onnx", 1, 64, output_names=["y"])
    model = onnx.load(art.path)
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in model.graph.node)
    y = ort_cpu.load(art.path).run({"x": x})[0]
    ref = lin(torch.from_numpy(x)).detach().numpy()
    assert np.abs(y - ref).max() < 0.05 * np.abs(ref).max()
