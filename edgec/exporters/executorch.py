"""ExecuTorch `.pte` export for XNNPACK, float or int8 through PT2E.

The default int8 scheme is XNNPACK's dynamic one: int8 weights per output
channel, activations of linear layers quantized per call from their actual
range. Transformers keep their accuracy with it (no static ranges to break on
residual-stream outliers) and it needs no calibration set.

Embedding tables are not linear layers and PT2E leaves them float, yet a
vocabulary table is often the largest tensor of a text model. With `quantize`
they are stored int8 per row (weight-only: int8 values and one float scale per
row, torchao's `IntxWeightOnlyConfig` with `PerAxis(0)` as in ExecuTorch's LLM
embedding flow) and dequantized at lookup: the int8 rows and their scales are
gathered with the portable `embedding` kernel, converted and multiplied, so the
program needs no kernel beyond those every ExecuTorch runtime links. A table is
quantized only where the graph reads it solely through its own module's
lookup; a table whose `.weight` is sliced, indexed or shared with another layer
stays float.
"""

import contextlib
from pathlib import Path

import torch
from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
from executorch.backends.xnnpack.partition.config.generic_node_configs import PermuteConfig, SliceCopyConfig
from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
    XNNPACKQuantizer, get_symmetric_quantization_config)
from executorch.exir import ExecutorchProgramManager, to_edge_transform_and_lower
from torchao.quantization import IntxWeightOnlyConfig, quantize_
from torchao.quantization.granularity import PerAxis
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

from edgec.errors import ExportError
from edgec.exporters.artifact import Artifact
from edgec.exporters.atomic import write_atomic

Inputs = tuple[torch.Tensor, ...]


def export_pte(module: torch.nn.Module, example_inputs: Inputs, out_path: Path,
               calib_inputs: list[Inputs] | None = None, quantize: bool = True) -> Artifact:
    """Export `module` with static shapes to an XNNPACK `.pte` at `out_path`.

    `calib_inputs` feed the quantization observers; None calibrates on
    `example_inputs`, which is enough for dynamic activations. The module is
    exported in eval mode and its training flag restored afterwards. With
    `quantize`, linear layers get dynamic int8 and nn.Embedding tables int8 per
    row; `module` itself is left unchanged.
    """
    if calib_inputs is not None and not calib_inputs:
        raise ExportError("calib_inputs is empty; pass at least one input tuple, "
                          "or None to calibrate on example_inputs")
    out_path = Path(out_path)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            program = _export(module, example_inputs)
            if quantize:
                tables = _lookup_only_embeddings(module, program)
                if tables:
                    with _int8_embeddings(module, tables):
                        program = _export(module, example_inputs)
                program = _quantize(program, example_inputs, calib_inputs or [example_inputs])
        lowered = _lower(program, type(module).__name__)
        program_bytes = lowered.to_executorch()
        write_atomic(out_path, lambda tmp: _write(program_bytes, tmp))
    finally:
        module.train(was_training)
    return Artifact(out_path, "pte", "executorch")


def _lower(program: torch.export.ExportedProgram, name: str) -> ExecutorchProgramManager:
    """XNNPACK lowering. A graph with a data-dependent Gather between blocks (text token dropping)
    can make the partitioner merge unrelated layout ops (the next block's q/k permutes, a slice)
    across the Gather into one partition with a dependency cycle; then those two op kinds stay on
    the portable kernels, which costs a few copies and leaves every GEMM delegated."""
    try:
        return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    except (AssertionError, RuntimeError) as e:  # the partitioner's own invariant checks
        if "dependency cycles" not in str(e):
            raise ExportError(f"ExecuTorch's XNNPACK partitioner cannot lower {name} ({_first_line(e)})") from e
    configs = [c for c in ALL_PARTITIONER_CONFIGS if c not in (PermuteConfig, SliceCopyConfig)]
    try:
        return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner(configs=configs)])
    except (AssertionError, RuntimeError) as e:  # the partitioner's own invariant checks
        raise ExportError(f"ExecuTorch's XNNPACK partitioner cannot lower {name} ({_first_line(e)}); "
                          "export it without the pass that added the data-dependent gather for the .pte") from e


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _export(module: torch.nn.Module, inputs: Inputs) -> torch.export.ExportedProgram:
    """torch.export with static shapes; a model that cannot be traced is the user's to fix."""
    try:
        return torch.export.export(module, tuple(inputs))
    except Exception as e:  # torch.export raises many unrelated types for untraceable code
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"torch.export failed on {type(module).__name__}: {first}; "
                          "make forward traceable with static shapes "
                          "(no data-dependent Python control flow)") from e


# ExecuTorch 1.5.1's PT2E_INT8_DYNAMIC_PER_CHANNEL recipe gives these linears bit for bit, but its tables stay float
# (BigVocab 1,037,568 vs 286,336 B; torchao ones lack a kernel) and a partition cycle fails it (token budget, int8).
def _quantize(program: torch.export.ExportedProgram, example_inputs: Inputs,
              calib_inputs: list[Inputs]) -> torch.export.ExportedProgram:
    """PT2E int8: insert observers, calibrate, fold to quantize/dequantize pairs, re-export."""
    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    prepared = prepare_pt2e(program.module(), XNNPACKQuantizer().set_global(config))
    for inputs in calib_inputs:
        prepared(*inputs)
    return torch.export.export(convert_pt2e(prepared), tuple(example_inputs))


class _Int8Embedding(torch.nn.Module):
    """Weight-only int8 lookup table: int8 rows and one scale per row, dequantized per lookup."""

    def __init__(self, table: torch.nn.Embedding):
        super().__init__()
        qdata, scale = _int8_rows(table)
        self.register_buffer("qweight", qdata)
        self.register_buffer("scale", scale)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        rows = torch.nn.functional.embedding(indices, self.qweight)
        return rows.to(self.scale.dtype) * torch.nn.functional.embedding(indices, self.scale)


def _int8_rows(table: torch.nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row through torchao, on a copy so `table` keeps its float weight."""
    probe = torch.nn.Embedding.from_pretrained(table.weight.detach(), freeze=True)
    quantize_(probe, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)),
              filter_fn=lambda m, _: isinstance(m, torch.nn.Embedding))
    weight = probe.weight
    if not hasattr(weight, "qdata") or bool(weight.zero_point.any()):
        raise ExportError(f"torchao returned no symmetric int8 table ({type(weight).__name__}); "
                          "export with quantize=False or pin a torchao with IntxWeightOnlyConfig v2")
    return weight.qdata.contiguous(), weight.scale.reshape(-1, 1).to(table.weight.dtype).contiguous()


def _lookup_only_embeddings(module: torch.nn.Module,
                            program: torch.export.ExportedProgram) -> list[str]:
    """Names of the nn.Embedding children whose weight `program` reads only through their own lookup.

    A weight that is also sliced or indexed directly (position tables taken by
    `.weight[:n]`), passed to another op, or tied to another layer keeps its
    float tensor: replacing it would change or duplicate what those readers see.
    """
    param_of = program.graph_signature.inputs_to_parameters
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    tables = []
    for name, child in module.named_modules():
        if (not name or type(child) is not torch.nn.Embedding or child.max_norm is not None
                or not child.weight.dtype.is_floating_point):
            continue
        nodes = [placeholders[p] for p, target in param_of.items() if target == f"{name}.weight"]
        if len(nodes) == 1 and nodes[0].users and all(
                _is_own_lookup(user, nodes[0], name) for user in nodes[0].users):
            tables.append(name)
    return tables


def _is_own_lookup(node: torch.fx.Node, weight: torch.fx.Node, name: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    innermost = list(stack.values())[-1][0] if stack else None
    return (node.target == torch.ops.aten.embedding.default and node.args[0] is weight
            and weight not in node.args[1:] and innermost == name)


@contextlib.contextmanager
def _int8_embeddings(module: torch.nn.Module, names: list[str]):
    """Swap the named tables for `_Int8Embedding`s while the block runs, then put the originals back."""
    swapped = []
    try:
        for name in names:
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name)
            original = getattr(parent, attr)
            setattr(parent, attr, _Int8Embedding(original))
            swapped.append((parent, attr, original))
        yield
    finally:
        for parent, attr, original in reversed(swapped):
            setattr(parent, attr, original)


def _write(program: ExecutorchProgramManager, path: str) -> None:
    with open(path, "wb") as f:
        program.write_to_file(f)
