"""What pruning is asked to do and what it did: the settings, and a result that is plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from torch import nn

METHODS = ("flap", "magnitude")
ALLOCATIONS = ("per_param", "standardised")
SCORES = ("output", "local")


# Measured on MiniLM at ratio 0.3 with the 160 built-in calibration sentences, pooled cosine to
# float on the 160 held-out ones (bench/prune_minilm.py): the paper's ranking 0.74; local score
# per parameter 0.89, with the o/fc2 refit 0.939; output score with the full refit 0.950, in 3
# steps 0.952 (5 steps: 0.949). With 32 sentences (~600 tokens) everything is 0.01-0.02 lower,
# hence the pipeline's larger pruning calibration set. Tried and dropped: sentence fragments added
# to the calibration text, sentence-length weighting of the refit, per-sentence (pooled) instead of
# per-token output scores, more random projections, and ranking by the least-squares (OBS) removal
# error: none beat the noise of about +-0.002.
@dataclass(frozen=True, kw_only=True)
class PruneConfig:
    ratio: float  # fraction of the prunable parameters to remove, in [0, 1)
    method: str = "flap"  # "flap" (fluctuation, bias compensation) or "magnitude" (weight norms only)
    prune_layers: bool = False  # let a pre-LN encoder block lose a whole attention or MLP sublayer
    allocation: str = "per_param"  # global ranking: "per_param" or the paper's "standardised"
    refit: bool | None = None  # least-squares refit of the kept linear layers; None: on for flap encoders
    # flap: fluctuation seen at the model output ("output") or at the layer ("local", the paper's)
    score: str = "output"
    steps: int = 3  # flap: reach the ratio in this many equal steps, re-scoring the model each one leaves
    # decoders: MLP widths stay multiples of this (4-bit formats store rows in blocks of 32; 1: any width)
    mlp_block: int = 32

    def __post_init__(self):
        real = isinstance(self.ratio, (int, float)) and not isinstance(self.ratio, bool)
        if not real or not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.allocation not in ALLOCATIONS:
            raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}")
        if not isinstance(self.prune_layers, bool):
            raise ValueError(f"prune_layers must be a bool, got {self.prune_layers!r}")
        if self.refit is not None and not isinstance(self.refit, bool):
            raise ValueError(f"refit must be a bool or None, got {self.refit!r}")
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {self.score!r}")
        if type(self.steps) is not int or self.steps < 1:
            raise ValueError(f"steps must be an int >= 1, got {self.steps!r}")
        if type(self.mlp_block) is not int or self.mlp_block < 1:
            raise ValueError(f"mlp_block must be an int >= 1, got {self.mlp_block!r}")
        if self.refit and self.method != "flap":
            raise ValueError("refit needs calibration statistics: use it with method='flap'")

    @property
    def refits(self) -> bool:
        """Whether an encoder's kept linear layers are refit: `refit`, or by default for flap."""
        return self.method == "flap" if self.refit is None else self.refit

    @property
    def rounds(self) -> int:
        """Scoring rounds a driver really runs, so a result reports no steps it skipped: none at ratio 0,
        one for magnitude (weight norms do not change when other structures go)."""
        return 0 if self.ratio == 0 else self.steps if self.method == "flap" else 1

    @property
    def ranked_by(self) -> str | None:
        """What really ranks the structures (magnitude ignores `score`); None when nothing is scored."""
        return None if self.ratio == 0 else self.score if self.method == "flap" else "magnitude"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PruneConfig":
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise ValueError(f"unknown PruneConfig keys {sorted(set(d) - known)}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class LayerPrune:
    layer: int
    heads_kept: tuple[int, ...]
    heads_removed: tuple[int, ...]
    channels_kept: tuple[int, ...]
    channels_removed: tuple[int, ...]
    bias_compensated: bool
    refit: bool = False
    attn_removed: bool = False  # the whole attention sublayer became a constant
    mlp_removed: bool = False
    notes: tuple[str, ...] = ()
    params_before: int = 0  # the block's parameters
    params_after: int = 0


@dataclass
class PruneResult:
    module: nn.Module
    config: PruneConfig
    params_before: int
    params_after: int
    prunable_before: int
    prunable_after: int
    layers: list[LayerPrune] = field(default_factory=list)
    # what the driver actually did, which a config alone does not say (magnitude scores nothing, ratio 0 no step)
    score_used: str | None = None  # "output", "local", "magnitude", or None: nothing scored
    steps_used: int = 0

    @property
    def changed(self) -> bool:
        return self.params_after != self.params_before

    @property
    def removed_fraction(self) -> float:
        """Fraction of the prunable parameters removed."""
        return 1.0 - self.prunable_after / self.prunable_before if self.prunable_before else 0.0

    def to_dict(self) -> dict:
        layers = [{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(l).items()} for l in self.layers]
        return {"config": self.config.to_dict(), "score_used": self.score_used, "steps_used": self.steps_used,
                "params_before": self.params_before, "params_after": self.params_after,
                "prunable_before": self.prunable_before, "prunable_after": self.prunable_after,
                "removed_fraction": self.removed_fraction, "layers": layers}

    def explain(self) -> list[str]:
        c = self.config
        n = self.steps_used
        how = f"{self.score_used} score, {n} step{'s' * (n != 1)}, " if n else ""
        lines = [f"{c.method} pruning, ratio {c.ratio:g}, {how}{c.allocation} allocation: prunable parameters "
                 f"{self.prunable_before:,} -> {self.prunable_after:,} ({100 * self.removed_fraction:.1f}% "
                 f"removed); all parameters {self.params_before:,} -> {self.params_after:,}"]
        for l in self.layers:
            n_h, n_c = len(l.heads_kept) + len(l.heads_removed), len(l.channels_kept) + len(l.channels_removed)
            attn = "attention removed" if l.attn_removed else f"heads {len(l.heads_kept)}/{n_h} kept"
            attn += f" (removed {list(l.heads_removed)})" if l.heads_removed and not l.attn_removed else ""
            mlp = "MLP removed" if l.mlp_removed else f"MLP channels {len(l.channels_kept)}/{n_c} kept"
            done = [s for s, on in (("bias compensated", l.bias_compensated), ("refit", l.refit)) if on]
            lines.append(f"layer {l.layer}: {attn}; {mlp}; {l.params_before - l.params_after:,} parameters removed"
                         + "".join(f"; {s}" for s in done))
            lines += [f"layer {l.layer}: {note}" for note in l.notes]
        return lines
