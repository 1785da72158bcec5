"""Precision plans: which tensors a target keeps in which integer type.

Calibration statistics are target-independent; a plan turns them into types.
The HTP runs 16-bit activations with 8-bit weights (A16W8) natively, which is
what keeps BERT's residual-stream outliers and the softmax/LayerNorm/GELU
outputs accurate: 8-bit activations everywhere measured at pooled cosine
0.40-0.84 on MiniLM.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgec.config import ConfigDict

ACTIVATION_TYPES = ("uint8", "uint16")
OBSERVERS = ("minmax", "percentile", "mse", "auto")


@dataclass(frozen=True, kw_only=True)
class PrecisionPlan(ConfigDict):
    activations: str = "uint16"
    weights: str = "int8"  # symmetric, per output channel for MatMul/Gemm/Conv
    embeddings: str = "uint8"  # lookup tables: per-tensor, 8-bit keeps them small
    observer: str = "auto"

    def __post_init__(self):
        if self.activations not in ACTIVATION_TYPES:
            raise ValueError(f"activations must be one of {ACTIVATION_TYPES}, got {self.activations!r}")
        if self.observer not in OBSERVERS:
            raise ValueError(f"observer must be one of {OBSERVERS}, got {self.observer!r}")
        if self.weights != "int8" or self.embeddings != "uint8":
            raise ValueError("only int8 weights and uint8 embedding tables are supported")

    @property
    def why_16bit(self) -> str:
        return ("activations are 16-bit so the residual stream's outlier channels and the "
                "softmax/LayerNorm/GELU outputs keep their precision; weights stay 8-bit")
