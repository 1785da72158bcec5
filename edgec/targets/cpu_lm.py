"""`cpu` for a decoder LM: ONNX for ONNX Runtime GenAI and a static-cache ExecuTorch program.

The shipped pair is quantized (recipe `weights`: int4 by default, MatMulNBits
weight-only in the ONNX, 8-bit dynamic activations with 4-bit grouped weights
in the `.pte`); float twins are built beside them, in the scratch folder, so
the report can say what quantization cost and bought.
"""

from __future__ import annotations

from pathlib import Path

from edgec.targets.base import Build, Built
from edgec.tasks.generation import context

PTE_WEIGHTS = {"int4": "8da4w", "int8": "8da4w", "float": "float"}


def build_cpu_lm(job: Build, module, out_dir: Path) -> Built:
    from edgec.exporters.executorch_llm import export_llm_pte
    from edgec.exporters.onnx_genai import export_genai

    cfg, recipe = job.model.config, job.recipe
    ctx, weights = context(cfg, recipe), recipe.weights
    with job.progress.step(f"export ONNX for ONNX Runtime GenAI ({weights} weights)"):
        onnx_art = export_genai(module, cfg, job.model.source_dir, out_dir, weights=weights, context=ctx)
    pte_weights = PTE_WEIGHTS[weights]
    with job.progress.step(f"export ExecuTorch program, static KV cache of {ctx} ({pte_weights})"):
        pte_art = export_llm_pte(module, cfg, out_dir / "model.pte", ctx, weights=pte_weights)
    references = []
    if recipe.compare_quantized_only and weights != "float":
        with job.progress.step("export the float twins for comparison"):
            references = [export_genai(module, cfg, job.model.source_dir, job.scratch / "float-genai",
                                       weights="float", context=ctx),
                          export_llm_pte(module, cfg, job.scratch / "float.pte", ctx, weights="float")]
    return Built([onnx_art, pte_art], {"weights": {"onnx": weights, "pte": pte_weights}}, references)
