"""Retraining-free structured pruning (FLAP): one entry point for every model kind the toolchain builds."""

from __future__ import annotations

import torch
from torch import nn

from edgec.models.decoder import Decoder
from edgec.passes.prune.config import LayerPrune, PruneConfig, PruneResult
from edgec.passes.prune.decoder import prune_decoder
from edgec.passes.prune.encoder import prune_encoder
from edgec.passes.prune.surgery import ConstantSublayer

__all__ = ["ConstantSublayer", "LayerPrune", "PruneConfig", "PruneResult", "prune", "prune_decoder", "prune_encoder"]


def prune(module: nn.Module, calib_inputs: list[tuple[torch.Tensor, ...]], config: PruneConfig) -> PruneResult:
    """Return a pruned deep copy of `module` (eval mode) and what was removed in each layer.

    `calib_inputs` are positional argument tuples for `module`'s forward; a forward argument
    named `attention_mask` selects the real tokens. A `Decoder` loses whole KV groups, an encoder
    heads; both lose MLP channels.
    """
    driver = prune_decoder if isinstance(module, Decoder) else prune_encoder
    return driver(module, calib_inputs, config)
