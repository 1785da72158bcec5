"""IREE modules (`.vmfb`) for GPUs, compiled from a plain, standard-op ONNX graph.

One MLIR import serves every architecture. Each module carries, in its entry
function's `iree.reflection`, the API and architecture it was compiled for, the
export it came from and its I/O names and dtypes: the runtime refuses a module
for another GPU (a real-GPU module "runs" on the software device and returns
garbage) and maps a named feed onto the positional entry point.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgec.errors import ExportError, InputError
from edgec.exporters.atomic import write_atomic

APIS = ("vulkan", "cuda")
SOFTWARE_VULKAN = "llvmpipe"  # Mesa's lavapipe: the Vulkan device every Linux machine can have
# phone GPUs first (Qualcomm Adreno, Arm Mali Valhall), then desktop AMD RDNA3 and NVIDIA Ampere
DEFAULT_ARCHS = {"vulkan": ("adreno", "valhall", "rdna3", "ampere"), "cuda": ("sm_80", "sm_89")}
# IREE 3.13 generates CUDA code up to sm_89 ("missing GPU target" for sm_90 and newer); the PTX of an
# older architecture runs on newer GPUs, compiled by the driver on first load
CUDA_ARCHS = (75, 80, 86, 89)


def cuda_arch_for(capability: int) -> str:
    """The newest architecture IREE compiles for that a GPU of `capability` (90 for sm_90) runs."""
    return f"sm_{max((a for a in CUDA_ARCHS if a <= capability), default=CUDA_ARCHS[0])}"
INSTALL = "pip install 'edgec[gpu]' (IREE's compiler and runtime)"


def require_iree() -> None:
    try:
        import iree.compiler  # noqa: F401
        import iree.runtime  # noqa: F401
    except ImportError:
        raise InputError(f"--target gpu needs IREE, which is not installed: {INSTALL}") from None


@dataclass(frozen=True)
class Module:
    """One compiled module and what its manifest entry says."""

    path: Path
    api: str
    arch: str
    precision: str
    seconds: float

    def to_dict(self) -> dict:
        return {"api": self.api, "arch": self.arch, "precision": self.precision,
                "iree_runtime": iree_version(), "compile_seconds": self.seconds}


def iree_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("iree-base-runtime")
    except metadata.PackageNotFoundError:
        return None


def module_name(api: str, arch: str) -> str:
    return f"model.{api}-{arch}.vmfb"


def gpu_ready(onnx_path: Path) -> None:
    """Rewrite, in place, what IREE 3.13's SPIR-V code generation cannot take.

    A Gather of one constant index (a ViT's class token) fused with the
    LayerNorm after it fails to compile for every Vulkan target ("failed to
    legalize memref.alloc"); the equivalent Slice + Squeeze compiles.
    """
    from onnx import helper, numpy_helper

    model = onnx.load(onnx_path)
    g = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in g.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    nodes, changed = [], False
    for n in g.node:
        index = consts.get(n.input[1]) if n.op_type == "Gather" else None
        if index is None or index.ndim != 0 or n.input[0] in consts:
            nodes.append(n)
            continue
        i, axis = int(index), next((a.i for a in n.attribute if a.name == "axis"), 0)
        p = n.name or n.output[0]
        end = i + 1 if i != -1 else np.iinfo(np.int64).max
        g.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), f"{p}/{k}")
                              for k, v in (("starts", i), ("ends", end), ("axes", axis))])
        nodes += [helper.make_node("Slice", [n.input[0], f"{p}/starts", f"{p}/ends", f"{p}/axes"], [f"{p}/row"],
                                   name=f"{p}/Slice"),
                  helper.make_node("Squeeze", [f"{p}/row", f"{p}/axes"], [n.output[0]], name=f"{p}/Squeeze")]
        changed = True
    if changed:
        used = {x for n in nodes for x in n.input} | {o.name for o in g.output}
        nodes = [n for n in nodes if n.op_type != "Constant" or n.output[0] in used]  # the old indices
        kept = [t for t in g.initializer if t.name in used]
        del g.node[:], g.initializer[:]
        g.node.extend(nodes)
        g.initializer.extend(kept)
        write_atomic(onnx_path, lambda tmp: onnx.save(model, tmp))


@dataclass
class Imported:
    """One graph imported to MLIR, written once per module with that module's tags."""

    context: object  # iree.compiler.ir.Context
    module: object  # its builtin.module operation
    io: dict

    @property
    def entry(self) -> str:
        """The function an app calls (the ONNX graph's name)."""
        return next(str(op.attributes["sym_name"]).strip('"') for op in self.module.regions[0].blocks[0].operations
                    if op.operation.name == "func.func")

    def write(self, mlir_path: Path, tags: dict[str, str]) -> None:
        """MLIR bytecode at `mlir_path`, the entry function's `iree.reflection` set to `tags` and the I/O."""
        from iree.compiler import ir

        with self.context:
            attrs = {k: ir.StringAttr.get(v) for k, v in {**tags, "edgec.io": json.dumps(self.io)}.items()}
            for op in self.module.regions[0].blocks[0].operations:
                if op.operation.name == "func.func":
                    op.attributes["iree.reflection"] = ir.DictAttr.get(attrs)
        with open(mlir_path, "wb") as f:
            self.module.write_bytecode(f)


def import_onnx(onnx_path: Path) -> Imported:
    """ONNX -> MLIR (torch-mlir's ONNX importer), once for every architecture.

    Shapes are inferred first: without them the importer leaves Gemm and friends unlegalized.
    """
    from iree.compiler import ir
    from iree.compiler.extras import onnx_importer

    model = onnx.shape_inference.infer_shapes(onnx.load(onnx_path), data_prop=True)
    graph = model.graph
    io = {"inputs": [[v.name, _dtype(v)] for v in graph.input],
          "outputs": [[v.name, _dtype(v)] for v in graph.output]}
    context = ir.Context()
    info = onnx_importer.ModelInfo(model)
    module = info.create_module(context=context).operation
    try:
        onnx_importer.NodeImporter.define_function(info.main_graph, module).import_all()
        module.verify()
    except Exception as e:  # the importer's own error types and MLIR diagnostics
        raise ExportError(f"IREE cannot import {onnx_path.name} ({_first_line(e)}): the GPU route takes "
                          "standard ONNX ops only") from e
    return Imported(context, module, io)


def compile_module(mlir_path: Path, out_path: Path, api: str, arch: str, precision: str) -> Module:
    """One `.vmfb` for `api`/`arch`; an architecture the compiler does not know is the user's to fix."""
    import iree.compiler.tools as tools

    flags = ["--iree-hal-target-device=vulkan", f"--iree-vulkan-target={arch}"] if api == "vulkan" else \
        ["--iree-hal-target-device=cuda", f"--iree-cuda-target={arch}"]
    t0 = time.perf_counter()
    try:
        binary = tools.compile_file(str(mlir_path), input_type="onnx", target_backends=[], extra_args=flags)
    except tools.CompilerToolError as e:
        text = str(e)
        if f"unknown {api} target '{arch.lower()}'" in text.lower():
            raise InputError(f"IREE does not know the {api} architecture '{arch}': give --gpu-arch names "
                             f"IREE takes (e.g. {', '.join(DEFAULT_ARCHS[api])})") from None
        if "missing GPU target" in text:
            raise InputError(f"IREE {iree_version()} has no code generation for {api} {arch}: give an older "
                             f"--gpu-arch (e.g. {DEFAULT_ARCHS[api][-1]}); its code runs on newer GPUs") from None
        raise ExportError(f"IREE cannot compile the graph for {api} {arch} ({_diagnostic(text)})") from None
    write_atomic(out_path, lambda tmp: Path(tmp).write_bytes(binary))
    return Module(out_path, api, arch, precision, round(time.perf_counter() - t0, 1))


def _dtype(value: onnx.ValueInfoProto) -> str:
    return str(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))


def _diagnostic(text: str) -> str:
    """The compiler's first `error:` line, else its first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if "error:" in line), lines[0] if lines else "no message")[:300]


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
