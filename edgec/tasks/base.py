"""What a model kind owns: its data, its outputs, its metric and what an app needs to use it.

The pipeline, the manifest and `edgec run` ask the task; none of them tests the
model kind. A new kind is one new module plus one registry line in `__init__`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgec.errors import InputError

Feed = dict[str, np.ndarray]
Outputs = list[np.ndarray]  # one run's outputs, in graph order


@dataclass
class Feeds:
    calib: list[Feed]
    eval: list[Feed]
    labels: np.ndarray | None  # a labelled held-out split, when there is one
    calib_source: str
    eval_source: str
    bench: dict[str, Feed]  # named latency inputs
    prune_calib: list[Feed]  # the calibration samples and more of the same source, for pruning
    golden: list[Feed]  # the few inputs a bundle ships with their expected outputs
    golden_extra: dict[str, np.ndarray] | None = None  # what produced them (texts), for runners to check

    @property
    def example(self) -> Feed:
        return self.calib[0]


def rows(batch: dict[str, np.ndarray]) -> list[Feed]:
    n = len(next(iter(batch.values())))
    return [{k: v[i:i + 1] for k, v in batch.items()} for i in range(n)]


def torch_batches(feeds: list[Feed], size: int = 8) -> list[tuple[torch.Tensor, ...]]:
    """Feeds stacked `size` at a time; a batch with an attention mask is cut after its longest real
    row (right padding, so real rows are unchanged) and a pass computes nothing on padding."""
    out = []
    for start in range(0, len(feeds), size):
        batch = {k: np.concatenate([f[k] for f in feeds[start:start + size]]) for k in feeds[0]}
        if "attention_mask" in batch:
            width = max(int(batch["attention_mask"].sum(1).max()), 1)
            batch = {k: v[:, :width] for k, v in batch.items()}
        out.append(tuple(torch.from_numpy(v) for v in batch.values()))
    return out


class Task:
    name: str  # the manifest's task
    kind: str  # the model kind it serves ("text", "image")
    simulator_eval_samples: int  # held-out samples on a simulator: a default worth its cost
    # which of the toolchain's export jobs builds and measures this kind: one forward pass per sample by default
    export_job = "forward"

    def tokens(self, config, recipe) -> int:
        """How many tokens a token budget chooses among."""
        raise NotImplementedError

    def budget_size(self, config, recipe) -> int:
        """What `apply_token_budget` is told the model's size is (a text model's full sequence length,
        an image model's patch count)."""
        raise NotImplementedError

    def check(self, config, recipe) -> None:
        """Refuse settings this model cannot honour, before any work starts."""
        budget = recipe.token_budget
        if budget is None:
            return
        layers = config.num_hidden_layers
        if budget.layer >= layers:
            raise InputError(f"--token-layer {budget.layer} is past the last block: the model has blocks "
                             f"0..{layers - 1}")
        n = self.tokens(config, recipe)
        if isinstance(budget.budget, int) and budget.budget >= n:
            raise InputError(f"--token-budget {budget.budget} keeps every one of the model's {n} droppable tokens: "
                             f"give a count below {n} or a fraction")

    def attach(self, model) -> dict[str, torch.Tensor]:
        """Load what the task needs beside the weights (a tokenizer, a preprocessing spec); return a
        probe input on which the rebuilt module must match the original."""
        raise NotImplementedError

    def feeds(self, model, calib: Path | None, recipe) -> Feeds:
        raise NotImplementedError

    def output_names(self, module: torch.nn.Module) -> list[str]:
        raise NotImplementedError

    def metric_name(self, feeds: Feeds) -> str:
        raise NotImplementedError

    def metric(self, reference: list[Outputs], candidate: list[Outputs], feeds: Feeds) -> dict:
        raise NotImplementedError

    def bundle(self, model, recipe, output_names: list[str], work: Path) -> dict:
        """Write what an app needs beside the artifacts (a tokenizer); return the manifest's part."""
        raise NotImplementedError

    def user_input(self, bundle: Path, manifest: dict, text: str | None, image: Path | None) -> Feed:
        """`edgec run`'s feed from what the user typed or named."""
        raise NotImplementedError

    def describe(self, outputs: Outputs, feed: Feed, manifest: dict) -> list[str]:
        """What a person wants to see of one run's outputs."""
        raise NotImplementedError

    def agreement(self, expected: Outputs, got: Outputs, feed: Feed, manifest: dict) -> tuple[str, bool]:
        """How one run compares with a golden output: (what was measured, in words; whether it passes)."""
        raise NotImplementedError


def pool_size(recipe) -> int:
    """Calibration samples to read: pruning's statistics need more than quantization ranges."""
    pruning = recipe.prune is not None and recipe.prune.ratio > 0
    return max(recipe.calib_samples, recipe.prune_calib_samples if pruning else 0)
