"""The decode bound: bytes a token reads per artifact format, and the machine's read bandwidth."""

import pytest
import torch
import transformers

from edgec.exporters.onnx_genai import export_genai, quantize_genai
from edgec.models.hf_decoder import from_hf_decoder
from edgec.toolchain import decode_bound as db
from edgec.zoo.seeded import seeded_decoder_dir


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("bound")
    src = seeded_decoder_dir(root / "llama", "llama")
    hf = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    return root, src, hf, from_hf_decoder(hf)


def _read_floats(module) -> int:
    """Every weight a token reads in float32: all but the token table; zero biases are not stored."""
    return 4 * sum(p.numel() for name, p in module.named_parameters()
                   if name != "embed.weight" and not (name.endswith(".bias") and not p.detach().any()))


@pytest.mark.parametrize("graph", ["fused", "plain"])
def test_onnx_reads_every_weight_but_the_token_table(model, graph):
    root, src, hf, module = model
    art = export_genai(module, hf.config, src, root / graph, graph=graph)
    got = db.weight_bytes_per_token(art.path, "onnx")
    want = _read_floats(module)
    if graph == "plain":  # the traced graph keeps the zero biases
        want += 4 * sum(p.numel() for n, p in module.named_parameters() if n.endswith(".bias") and not p.detach().any())
    assert abs(got - want) <= 0.01 * want  # constants of the graph (shapes, scalars) aside
    int4 = quantize_genai(art, root / f"{graph}-int4", "int4")
    assert db.weight_bytes_per_token(int4.path, "onnx") < 0.2 * got  # 4 bits and a scale per 32


def test_gguf_reads_every_tensor_but_an_untied_token_table(model):
    pytest.importorskip("llama_cpp", reason="llama.cpp is not installed: pip install -e '.[llama]'")
    from edgec.exporters.gguf import export_gguf

    root, src, hf, module = model
    art = export_gguf(module, hf.config, src, root / "model.gguf", "F32")
    assert abs(db.weight_bytes_per_token(art.path, "gguf") - _read_floats(module)) <= 0.01 * _read_floats(module)


def test_kv_and_fraction(model):
    module = model[3]
    per_position = sum(2 * b.attn.kv_heads * b.attn.head_dim for b in module.layers)
    assert db.kv_bytes_per_token(module, 10, 4) == 40 * per_position
    # eager torch reads the float weights; llama.cpp keeps its KV cache in f16
    assert db.bytes_per_token(module, "llama-cpp", 10) == db.torch_weight_bytes(module) + 20 * per_position
    assert db.fraction(100.0, 10**6, 10**9) == pytest.approx(0.1)


def test_read_bandwidth_is_a_memory_speed():
    threads = torch.get_num_threads()
    bandwidth = db.read_bandwidth(1)
    assert 1e8 < bandwidth < 1e12  # bytes/s: between an old phone's and a GPU's
    assert torch.get_num_threads() == threads  # the caller's setting is left as it was
