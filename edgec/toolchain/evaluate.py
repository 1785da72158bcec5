"""Accuracy metrics against the float model, on held-out data."""

from __future__ import annotations

import numpy as np

from edgec.toolchain.data import Feed


def pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Masked mean over tokens: the sentence embedding all-MiniLM-L6-v2 is trained for."""
    m = mask[..., None].astype(np.float32)
    return (hidden * m).sum(1) / np.maximum(m.sum(1), 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))


Outputs = list[np.ndarray]  # one run's outputs, in graph order


def sentence_embedding(outputs: Outputs, feed: Feed) -> np.ndarray:
    """Pool over the model's own kept-token mask when it has one (token dropping), else the input mask."""
    mask = outputs[1] if len(outputs) > 1 else feed["attention_mask"]
    return pooled(outputs[0], mask)


def text_metric(reference: list[Outputs], candidate: list[Outputs], feeds: list[Feed]) -> dict:
    cs = [cosine(sentence_embedding(r, f), sentence_embedding(c, f))
          for r, c, f in zip(reference, candidate, feeds)]
    return {"value": float(np.mean(cs)), "min": float(np.min(cs)), "samples": len(cs)}


def image_metric(reference: list[Outputs], candidate: list[Outputs], labels: np.ndarray | None) -> dict:
    ref = np.array([r[0].argmax() for r in reference])
    got = np.array([c[0].argmax() for c in candidate])
    if labels is None:  # no labels: how often the quantized model agrees with float
        return {"value": float((ref == got).mean()), "samples": len(got)}
    return {"value": float((got == labels[:len(got)]).mean()), "samples": len(got)}
