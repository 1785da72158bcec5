"""`cpu`: int8 ONNX for ONNX Runtime's CPU kernels and an int8 ExecuTorch program for XNNPACK."""

from __future__ import annotations

from pathlib import Path

import torch

from edgec.errors import InputError
from edgec.exporters.artifact import Artifact
from edgec.targets.base import Build, Built, Target, torch_inputs


class Cpu(Target):
    name = "cpu"
    description = ("int8 ONNX for ONNX Runtime CPU (padding-free, fused attention) and an "
                   "int8 ExecuTorch program for XNNPACK")

    def check(self, recipe) -> None:
        super().check(recipe)
        # both artifacts quantize activations per call: no static plan, no smoothing to apply
        for key in ("plan", "smooth"):
            if getattr(recipe, key) is not None:
                raise InputError(f"the recipe sets '{key}', which only the npu target's static quantization "
                                 f"uses: remove it from the recipe or use --target npu")

    def build(self, job: Build, module: torch.nn.Module, out_dir: Path, float_onnx: Artifact) -> Built:
        from edgec.exporters.executorch import export_pte
        from edgec.exporters.onnx_cpu import export_cpu_int8, graph_note

        cfg = job.model.config
        with job.progress.step("export int8 ONNX for ORT CPU"):
            art = export_cpu_int8(module, job.feeds.example, out_dir / "model.onnx",
                                  num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size,
                                  output_names=job.task.output_names(module))
        with job.progress.step("export int8 ExecuTorch program (XNNPACK)"):
            pte = export_pte(module, torch_inputs(job.feeds.example), out_dir / "model.pte",
                             job.calib_tensors(4))
        return Built([art, pte], {"calibration": {"source": "none needed: int8 weights, activations "
                                                            "quantized per call"},
                                  "graph": graph_note(module)})

    def build_lm(self, job: Build, module: torch.nn.Module, out_dir: Path) -> Built:
        from edgec.targets.cpu_lm import build_cpu_lm

        return build_cpu_lm(job, module, out_dir)
