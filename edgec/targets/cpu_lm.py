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

    cfg, recipe = job.model.config, job.recipe
    ctx, weights = context(cfg, recipe), recipe.weights
    onnx, float_onnx, onnx_note = _genai(job, module, out_dir, ctx)
    pte_weights = PTE_WEIGHTS[weights]
    with job.progress.step(f"export ExecuTorch program, static KV cache of {ctx} ({pte_weights})"):
        pte_art = export_llm_pte(module, cfg, out_dir / "model.pte", ctx, weights=pte_weights,
                                 num_bos=job.task.generation_info(job.model, recipe)["num_bos"])
    # the float ONNX is built anyway: measured beside the shipped pair, it shows what quantization cost
    # (a float .pte would add a minute of lowering for the same float figures: bench/llm_decode_speed.py
    # compares the two programs)
    gguf, gguf_note = _gguf(job, module, out_dir)
    references = [float_onnx] if float_onnx and recipe.compare_quantized_only and weights != "float" else []
    engines = {"model.onnx": onnx_note,
               "model.pte": "ExecuTorch's TextLLMRunner(model.pte, tokenizer.json) reads the metadata methods; "
                            "the program keeps a static KV cache in mutable buffers written at cache_position",
               "model.gguf": gguf_note}
    parts = [f"{weights} ONNX for ONNX Runtime GenAI"] if onnx else []
    parts += [f"an ExecuTorch program ({pte_weights}, XNNPACK)"] + ([f"a {recipe.gguf} GGUF for llama.cpp"] if gguf else [])
    holds = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return Built([*onnx, pte_art, *gguf], {"holds": holds, "engines": engines, "weights": {
        "onnx": weights if onnx else None, "pte": pte_weights, "gguf": recipe.gguf if gguf else None}}, references)


def _genai(job: Build, module, out_dir: Path, ctx: int):
    """model.onnx (and genai_config.json) where GenAI's config can describe the decoder, with the float ONNX
    it was quantized from; else the reason, for the report (a pruned decoder whose layers keep different
    numbers of KV heads still ships its .pte and GGUF)."""
    from edgec.exporters.onnx_genai import export_genai, quantize_genai, refusal

    recipe, weights = job.recipe, job.recipe.weights
    if (why := refusal(module)) is not None:
        return [], None, f"not written: {why}"
    with job.progress.step(f"export ONNX for ONNX Runtime GenAI ({weights} weights, context {ctx})"):
        float_dir = job.scratch / "float-genai" if weights != "float" else out_dir
        float_onnx = export_genai(module, job.model.config, job.model.source_dir, float_dir, weights="float",
                                  context=ctx, threads=recipe.genai_threads)
        art = float_onnx if weights == "float" else quantize_genai(float_onnx, out_dir, weights)
    engine = art.manifest["engine"]
    note = "og.Model(bundle folder) reads genai_config.json beside it; " + (
        "GroupQueryAttention writes each step's keys and values into one KV buffer GenAI allocates for the context"
        if engine["graph"] == "fused" else
        f"the traced plain-op graph ({engine['why_plain']}): GenAI feeds the whole KV history in each step and "
        "takes back present = past + new")
    return [art], float_onnx, note


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
