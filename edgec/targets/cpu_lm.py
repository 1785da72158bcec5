"""`cpu` for a decoder LM: ONNX for ONNX Runtime GenAI, a static-cache ExecuTorch program and a GGUF file
for llama.cpp.

The shipped ONNX and .pte are quantized (recipe `weights`: int4 by default, MatMulNBits
weight-only in the ONNX, 8-bit dynamic activations with 4-bit grouped weights
in the `.pte`; int8 means 8-bit weights in both); the float ONNX they start from is measured beside them, so the
report can say what quantization cost and bought.
"""

from __future__ import annotations

from pathlib import Path

from edgec.targets.base import Build, Built
from edgec.tasks.generation import context

PTE_WEIGHTS = {"int4": "8da4w", "int8": "8da8w", "float": "float"}


def build_cpu_lm(job: Build, module, out_dir: Path) -> Built:
    from edgec.exporters.executorch_llm import export_llm_pte
    from edgec.exporters.onnx_genai import export_genai, quantize_genai

    cfg, recipe = job.model.config, job.recipe
    ctx, weights = context(cfg, recipe), recipe.weights
    compare = recipe.compare_quantized_only and weights != "float"
    with job.progress.step(f"export ONNX for ONNX Runtime GenAI ({weights} weights, context {ctx})"):
        float_dir = job.scratch / "float-genai" if weights != "float" else out_dir
        float_onnx = export_genai(module, cfg, job.model.source_dir, float_dir, weights="float", context=ctx,
                                  threads=recipe.genai_threads)
        onnx_art = float_onnx if weights == "float" else quantize_genai(float_onnx, out_dir, weights)
    pte_weights = PTE_WEIGHTS[weights]
    with job.progress.step(f"export ExecuTorch program, static KV cache of {ctx} ({pte_weights})"):
        pte_art = export_llm_pte(module, cfg, out_dir / "model.pte", ctx, weights=pte_weights,
                                 num_bos=job.task.generation_info(job.model, recipe)["num_bos"])
    # the float ONNX is built anyway: measured beside the shipped pair, it shows what quantization cost
    # (a float .pte would add a minute of lowering for the same float figures: bench/llm_decode_speed.py
    # compares the two programs)
    gguf, gguf_note = _gguf(job, module, out_dir)
    references = [float_onnx] if compare else []
    engines = {"model.onnx": "og.Model(bundle folder) reads genai_config.json beside it; GenAI feeds the "
                             "whole KV history in each step and takes back present = past + new",
               "model.pte": "ExecuTorch's TextLLMRunner(model.pte, tokenizer.json) reads the metadata methods; "
                            "the program keeps a static KV cache in mutable buffers written at cache_position"}
    engines["model.gguf"] = gguf_note
    holds = (f"{weights} ONNX for ONNX Runtime GenAI, an ExecuTorch program ({pte_weights}, XNNPACK)"
             + (f" and a {recipe.gguf} GGUF for llama.cpp" if gguf else ""))
    return Built([onnx_art, pte_art, *gguf], {"holds": holds, "engines": engines, "weights": {
        "onnx": weights, "pte": pte_weights, "gguf": recipe.gguf if gguf else None}}, references)


def _gguf(job: Build, module, out_dir: Path):
    """model.gguf where llama.cpp has an architecture for the model and is installed; else the reason, for
    the report (the other artifacts do not depend on it)."""
    from edgec.errors import EdgecError
    from edgec.exporters.gguf import export_gguf

    quant = job.recipe.gguf
    if quant is None:
        return [], "not written: the recipe's gguf is null"
    try:
        with job.progress.step(f"export GGUF for llama.cpp ({quant}, quantized by llama.cpp)"):
            art = export_gguf(module, job.model.config, job.model.source_dir, out_dir / "model.gguf", quant)
    except EdgecError as e:  # llama.cpp is not installed, or none of its architectures computes this model
        return [], f"not written: {e}"
    return [art], (f"llama.cpp (llama-cpp-python's Llama, or llama-cli -m model.gguf): architecture "
                   f"{art.manifest['engine']['architecture']}, {quant}, tokenizer embedded")
