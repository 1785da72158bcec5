"""A target builds artifacts from a (compressed) torch module and says where each is verified.

The pipeline hands every target the same `Build` context and measures whatever
comes back on the runtimes each artifact names; a new target never edits it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgec.exporters.artifact import Artifact
from edgec.exporters.onnx_float import export_onnx
from edgec.progress import Progress
from edgec.tasks.base import Feed, Feeds, Task


@dataclass
class Built:
    """What one target build produced: its artifacts and its part of the report."""

    artifacts: list[Artifact]
    report: dict = field(default_factory=dict)
    references: list[Artifact] = field(default_factory=list)  # measured beside the artifacts, not shipped


def torch_inputs(feed: Feed) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(v) for v in feed.values())


@dataclass
class Build:
    """What a target may use: the loaded model, its task and data, the recipe, a scratch folder."""

    model: object  # toolchain.load.LoadedModel
    task: Task
    feeds: Feeds
    recipe: object  # toolchain.recipe.Recipe
    scratch: Path
    progress: Progress
    comparison: bool = False  # built only to be measured beside the shipped build: ship-only extras are skipped

    def float_onnx(self, module: torch.nn.Module, name: str) -> Artifact:
        """The plain float ONNX of `module` in the scratch folder: what quantizers and compilers read."""
        return export_onnx(module, self.feeds.example, self.task.output_names(module), self.scratch / name)

    def calib_tensors(self, limit: int | None = None) -> list[tuple[torch.Tensor, ...]]:
        return [torch_inputs(f) for f in self.feeds.calib[:limit]]


# recipe settings that one target alone applies: key -> (that target, the default)
TARGET_SETTINGS = {"gpu_api": ("gpu", "vulkan"), "gpu_arch": ("gpu", None), "precision": ("gpu", "fp32"),
                   "soc": ("npu", None)}


class Target:
    name: str
    description: str

    def check(self, recipe) -> None:
        """Refuse recipe settings this target would not apply, before any work starts."""
        from edgec.errors import InputError

        for key, (owner, default) in TARGET_SETTINGS.items():
            if owner != self.name and getattr(recipe, key) != default:
                raise InputError(f"'{key}' is a setting of the {owner} target: remove it or use --target {owner}")

    def build(self, job: Build, module: torch.nn.Module, out_dir: Path, float_onnx: Artifact) -> Built:
        """Write the artifacts for `module` into `out_dir`; `float_onnx` is its float graph."""
        raise NotImplementedError

    def build_lm(self, job: Build, module: torch.nn.Module, out_dir: Path) -> Built:
        """Write the artifacts of a decoder LM (`edgec.models.decoder.Decoder`) into `out_dir`."""
        from edgec.errors import InputError

        raise InputError(f"target '{self.name}' does not build language models: use --target cpu or npu")

