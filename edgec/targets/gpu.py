"""`gpu`: IREE modules for Vulkan (phones, desktops) or CUDA GPUs, compiled from a plain ONNX graph.

The bundle ships the standard-op ONNX it compiles from and one `.vmfb` per
architecture. Each export is verified where this machine can: the same graph
compiled for Mesa's software Vulkan device (`llvmpipe`) runs and is measured
against float; modules for real GPUs are compiled, and run only where such a
GPU is present. Integer ids are 32-bit (phone GPUs have no 64-bit integers);
with fp16 the weights and activations are half precision inside and the
inputs and outputs keep their dtypes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from edgec.errors import InputError
from edgec.exporters.artifact import Artifact
from edgec.targets.base import Build, Built, Target

INT8_NOTE = ("int8 is not offered: the int8 encoder did not compile for Vulkan in over ten minutes with "
             "IREE 3.13; fp16 is the compact GPU precision")


class Gpu(Target):
    name = "gpu"
    description = "IREE modules (.vmfb) for Vulkan or CUDA GPUs, from a plain float ONNX graph"

    def check(self, recipe) -> None:
        from edgec.exporters.iree import require_iree

        require_iree()
        super().check(recipe)
        for key in ("plan", "smooth"):
            if getattr(recipe, key) is not None:
                raise InputError(f"the recipe sets '{key}', which only the npu target's static quantization "
                                 "uses: remove it from the recipe or use --target npu")

    def build(self, job: Build, module: torch.nn.Module, out_dir: Path, float_onnx: Artifact) -> Built:
        from edgec.exporters.iree import gpu_ready
        from edgec.exporters.onnx_float import export_onnx

        precision = job.recipe.precision
        with job.progress.step(f"export the {precision} ONNX the GPU modules compile from"):
            feeds = {k: v.astype(np.int32) if v.dtype.kind in "iu" else v for k, v in job.feeds.example.items()}
            graph = export_onnx(_Half(module) if precision == "fp16" else module, feeds,
                                job.task.output_names(module), out_dir / "model.onnx")
            gpu_ready(graph.path)
        return compile_for_gpus(job, graph, out_dir, {})

    def build_lm(self, job: Build, module: torch.nn.Module, out_dir: Path) -> Built:
        from edgec.exporters.onnx_decoder_npu import export_float_decoder
        from edgec.tasks.generation import context

        if job.recipe.precision != "fp32":
            raise InputError("language models go to the GPU in fp32 only: drop --precision fp16")
        ctx = context(job.model.config, job.recipe)
        chunk = job.recipe.prefill_chunk or min(32, ctx)
        with job.progress.step(f"export the static decoder step (context {ctx}, chunk {chunk}) as float ONNX"):
            contract = export_float_decoder(module, out_dir / "model.onnx", ctx, chunk)
        contract["host_loop"] = contract["host_loop"].replace("edgec.runtimes.htp_llm", "the chunked host loop "
                                                              "(edgec.runtimes.htp_llm.ChunkedLM)")
        graph = Artifact(out_dir / "model.onnx", "onnx", "ort-cpu", manifest={"engine": contract})
        built = compile_for_gpus(job, graph, out_dir, {"engine": contract})
        built.report["engines"] = {a.path.name: contract["host_loop"] for a in built.artifacts}
        built.report["holds"] = "float IREE modules of the static decoder step, driven by a host loop"
        return built


class _Half(torch.nn.Module):
    """fp16 weights and activations inside; float inputs and outputs stay float32 for the caller."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = copy.deepcopy(module).half().eval()

    def forward(self, *args):
        out = self.inner(*(a.half() if a.is_floating_point() else a for a in args))
        if isinstance(out, (tuple, list)):
            return tuple(o.float() for o in out)
        return out.float()


def compile_for_gpus(job: Build, graph: Artifact, out_dir: Path, extra: dict) -> Built:
    """The software-Vulkan module plus one per requested architecture; each verified where a device runs it."""
    from edgec.exporters.artifact import sha256
    from edgec.exporters.iree import DEFAULT_ARCHS, SOFTWARE_VULKAN, compile_module, import_onnx, module_name
    from edgec.exporters.onnx_io import onnx_io
    from edgec.runtimes import iree_gpu

    api, precision = job.recipe.gpu_api, job.recipe.precision
    archs = list(dict.fromkeys(job.recipe.gpu_arch or DEFAULT_ARCHS[api]))
    wanted = [("vulkan", SOFTWARE_VULKAN)] + [(api, a) for a in archs if (api, a) != ("vulkan", SOFTWARE_VULKAN)]
    export_id = sha256(graph.path)[:16]
    io = onnx_io(graph.path)
    mlir = job.scratch / "gpu-model.mlirbc"
    with job.progress.step("import the graph into IREE"):
        imported = import_onnx(graph.path)
    verified, unverified, rows = [], [], []
    for module_api, arch in wanted:
        with job.progress.step(f"compile for {module_api} {arch} (IREE)"):
            imported.write(mlir, {"edgec.api": module_api, "edgec.arch": arch, "edgec.export": export_id})
            mod = compile_module(mlir, out_dir / module_name(module_api, arch), module_api, arch, precision)
        found = iree_gpu.devices(module_api)
        device = next((d for d in found if iree_gpu.runs_on(module_api, arch, d)), None)
        if arch == SOFTWARE_VULKAN and not iree_gpu.vulkan_is_software():
            device = None  # beside a real GPU, a software device's times would read as GPU speed
        manifest = {**extra, **io, "gpu": {**mod.to_dict(), "entry": imported.entry, "export": export_id}}
        if device is not None:
            status = f"verified on iree-{module_api} ({device.name})"
            verified.append(Artifact(mod.path, "vmfb", f"iree-{module_api}", manifest=manifest))
        else:
            status = (f"compiled, not run: no {module_api} {arch} GPU here" if found or module_api == "cuda" else
                      f"compiled, not run: no {module_api} device here (install mesa-vulkan-drivers for the "
                      "software one)")
            unverified.append(Artifact(mod.path, "vmfb", f"iree-{module_api}", not_run=status, manifest=manifest))
        rows.append({"path": mod.path.name, **mod.to_dict(), "bytes": mod.path.stat().st_size, "status": status})
    graph = Artifact(graph.path, graph.format, "ort-cpu", manifest={**extra, **graph.manifest})
    note = ("fp16 weights and activations inside the graph; inputs and outputs keep their dtypes (float32 "
            "floats, int32 ids)") if precision == "fp16" else "fp32 throughout; integer ids are int32"
    devices = {a: [d.name for d in iree_gpu.devices(a)] for a in dict.fromkeys(m for m, _ in wanted)}
    report = {"gpu": {"api": api, "precision": precision, "export": export_id, "precision_note": note,
                      "int8": INT8_NOTE, "devices": devices, "modules": rows},
              "calibration": {"source": "none needed: float modules"}}
    return Built([*verified, graph, *unverified], report)
