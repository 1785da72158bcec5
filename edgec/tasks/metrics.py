"""Accuracy metrics against the float model, on held-out data."""

from __future__ import annotations

import numpy as np


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean over tokens: the sentence embedding all-MiniLM-L6-v2 is trained for."""
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
