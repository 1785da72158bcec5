"""Every decoder family on every engine: a seeded bfloat16 checkpoint of transformers' own class, rebuilt and
exported, gives transformers' greedy tokens on the float artifacts; the npu graph runs whole on the HTP.

One parametrized test per engine; the families switch their own features on (edgec.zoo.seeded.FAMILY_CONFIGS),
with sliding windows shorter than the generated text where the family has them. The suite runs the families
that between them carry every feature (Llama and Qwen2 have tests of their own; Qwen3's per-head norms and
Mistral's window are Gemma 3's too); `python -m bench.llm_families` runs all of them on every engine.
"""

import json

import numpy as np
import pytest
import torch
import transformers
from helpers import hf_greedy, vulkan_skip_reason
from tokenizers import Tokenizer

from edgec.models.hf_decoder import from_hf_decoder
from edgec.runtimes.llm import Sampling
from edgec.zoo.seeded import seeded_decoder_dir

FAMILIES = ["llama3", "gemma2", "gemma3_text", "phi3", "smollm3", "granite", "olmo2"]
# the families whose graphs hold ops the others' do not (tanh caps, GeGLU, q/k norms, NoPE, windows, two
# RoPE tables): the ones an ExecuTorch lowering can meet for the first time; the rest differ in constants
NEW_OPS = ["gemma2", "gemma3_text", "olmo2"]  # SmolLM3's NoPE only leaves RoPE out
WINDOWS = {"mistral": {"sliding_window": 12}, "gemma3_text": {"sliding_window": 8}, "gemma2": {"sliding_window": 16}}
CONTEXT, NEW = 64, 32
PROMPT = "And God said, Let there be light"


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """name -> (HF dir saved in bfloat16, transformers model in float32, canonical module, prompt ids, greedy)."""
    root, built = tmp_path_factory.mktemp("families"), {}

    def get(name):
        if name not in built:
            src = seeded_decoder_dir(root / name, name, dtype=torch.bfloat16, max_position_embeddings=CONTEXT,
                                     **WINDOWS.get(name, {}))
            assert json.loads((src / "config.json").read_text())["dtype"] == "bfloat16"
            hf = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32,
                                                                   attn_implementation="eager").eval()
            ids = Tokenizer.from_file(str(src / "tokenizer.json")).encode(PROMPT).ids
            built[name] = src, hf, from_hf_decoder(hf), ids, hf_greedy(hf, ids, NEW)
        return built[name]
    return get


@pytest.fixture(scope="module")
def genai(family, tmp_path_factory):
    """name -> the float GenAI bundle folder (shared by the GenAI and tiered tests)."""
    from edgec.exporters.onnx_genai import export_genai

    root, built = tmp_path_factory.mktemp("genai"), {}

    def get(name):
        if name not in built:
            src, hf, module, _, _ = family(name)
            export_genai(module, hf.config, src, root / name, context=CONTEXT)
            built[name] = root / name
        return built[name]
    return get


def _greedy(lm, ids) -> list[int]:
    return lm.generate(ids, NEW, Sampling()).tokens


@pytest.mark.parametrize("name", FAMILIES)
def test_ort_genai(family, genai, name):
    from edgec.runtimes.ort_genai import load_lm

    src, hf, module, ids, want = family(name)
    assert _greedy(load_lm(genai(name)), ids) == want


@pytest.mark.parametrize("name", NEW_OPS)
def test_executorch(family, name, tmp_path):
    from edgec.exporters.executorch_llm import export_llm_pte
    from edgec.runtimes.executorch_llm import load_lm

    src, hf, module, ids, want = family(name)
    export_llm_pte(module, hf.config, tmp_path / "model.pte", CONTEXT)
    assert _greedy(load_lm(tmp_path / "model.pte", src / "tokenizer.json"), ids) == want


@pytest.mark.parametrize("name", FAMILIES)
def test_ort_tiered(family, genai, name, tmp_path):
    """The GenAI graph cut at its attention cores; attention (scale, soft cap, window) runs in the cache."""
    from edgec.exporters.onnx_stages import cut_stages
    from edgec.runtimes.kv_tiers import KVOptions
    from edgec.runtimes.tiered_lm import load_lm

    src, hf, module, ids, want = family(name)
    cut_stages(genai(name) / "model.onnx", json.loads((genai(name) / "genai_config.json").read_text()),
               tmp_path / "stages", module.attention())
    lm = load_lm(tmp_path / "stages", src / "tokenizer.json", {"kv": KVOptions(chunk=8)})
    assert _greedy(lm, ids) == want


@pytest.mark.parametrize("name", FAMILIES)
def test_qnn_htp(family, name, tmp_path):
    """The A16W8 graph runs whole on the simulated HTP and generates; its float twin, on the same host loop
    under ORT CPU, gives transformers' tokens."""
    from edgec.exporters.onnx_decoder_npu import export_float_decoder
    from edgec.runtimes import htp_llm
    from edgec.targets.npu_lm import export_decoder_npu

    src, hf, module, ids, want = family(name)
    ctx = min(CONTEXT, module.max_pos)  # LongRoPE's static table serves its original length
    contract = export_float_decoder(module, tmp_path / "float.onnx", ctx, 16)
    float_lm = htp_llm.load_lm(tmp_path / "float.onnx", src / "tokenizer.json", contract, runtime="ort-cpu")
    assert _greedy(float_lm, ids) == want
    calib = [np.asarray(Tokenizer.from_file(str(src / "tokenizer.json")).encode(t).ids[:ctx])
             for t in ("In the beginning God created the heaven and the earth.", PROMPT * 4)]
    art, contract = export_decoder_npu(module, tmp_path / "model.onnx", ctx, 16, calib)
    assert contract["checks"]["htp"]["runs_fully"] and contract["checks"]["htp"]["fraction"] == 1.0, \
        contract["checks"]["htp"]
    got = _greedy(htp_llm.load_lm(art.path, src / "tokenizer.json", contract), ids)
    assert len(got) == NEW


@pytest.mark.skipif(vulkan_skip_reason() is not None, reason=vulkan_skip_reason() or "")
@pytest.mark.parametrize("name", ["gemma2", "gemma3_text"])  # caps, GeGLU, q/k norms, windows, two RoPEs
def test_iree_vulkan(family, name, tmp_path):
    """The float chunked graph compiled for the software Vulkan device, driven by the same host loop."""
    from edgec.exporters.iree import SOFTWARE_VULKAN, compile_module, import_onnx
    from edgec.exporters.onnx_decoder_npu import export_float_decoder
    from edgec.runtimes import iree_gpu

    src, hf, module, ids, want = family(name)
    contract = export_float_decoder(module, tmp_path / "model.onnx", CONTEXT, 16)
    tags = {"edgec.api": "vulkan", "edgec.arch": SOFTWARE_VULKAN, "edgec.export": name}
    import_onnx(tmp_path / "model.onnx").write(tmp_path / "model.mlirbc", tags)
    mod = compile_module(tmp_path / "model.mlirbc", tmp_path / "model.vmfb", "vulkan", SOFTWARE_VULKAN, "fp32")
    assert _greedy(iree_gpu.load_lm(mod.path, src / "tokenizer.json", contract), ids) == want
