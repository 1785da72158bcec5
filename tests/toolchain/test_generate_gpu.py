"""A decoder LM's static decode step as an IREE module, driven by the loop `edgec generate` runs, on the
software Vulkan device."""

import json

import pytest

from helpers import vulkan_skip_reason
from edgec.zoo.seeded import seeded_decoder_dir

pytestmark = pytest.mark.skipif(vulkan_skip_reason() is not None, reason=vulkan_skip_reason() or "")


def test_decoder_step_greedy_tokens_match_the_float_onnx(run_cli, tmp_path):
    """A seeded tiny Llama's chunked decode step, KV in and out: 32 greedy tokens on the software device."""
    from edgec.runtimes.llm import Sampling
    from edgec.toolchain.generate import generate, open_lm

    model = seeded_decoder_dir(tmp_path / "llama", "llama")
    out = tmp_path / "lm"
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"eval_samples": 2, "htp_eval_samples": 3, "bench_runs": 1,
                                  "compare_quantized_only": False, "context": 64, "gpu_arch": ["adreno"]}))
    code, _, err = run_cli("export", model, "--target", "gpu", "-o", out, "--recipe", recipe, "-q")
    assert code == 0, err
    tokens = {rt: generate(open_lm(str(out), rt), "And God said", 32, Sampling()).tokens
              for rt in ("iree-vulkan", "ort-cpu")}
    assert len(tokens["ort-cpu"]) == 32 and tokens["iree-vulkan"] == tokens["ort-cpu"]
    assert json.loads((out / "report.json").read_text())["perplexity"]["float"] > 1
