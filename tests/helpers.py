"""Small builders shared by tests: realistic LayerNorms and right-padded text feeds."""

import numpy as np
import torch


def randomise_norms(model: torch.nn.Module) -> None:
    """Constructors leave LayerNorms at identity; real checkpoints do not."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)


def padded_feeds(lengths, seq: int, seed: int = 0, vocab: int = 100) -> list[dict[str, np.ndarray]]:
    """Right-padded int64 [1, seq] inputs with the given numbers of real tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        mask = (np.arange(seq) < n).astype(np.int64)[None]
        out.append({"input_ids": rng.integers(1, vocab, (1, seq)).astype(np.int64) * mask, "attention_mask": mask})
    return out
