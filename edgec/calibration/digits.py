"""The scikit-learn digits data, split once for the whole project.

Training, calibration and evaluation all read the same fixed, disjoint splits
from here, so a quantized model is never calibrated or scored on images its
float weights were trained on.
"""

import functools

import numpy as np

SPLITS = {"train": (0, 1197), "calib": (1197, 1397), "test": (1397, 1797)}
MEAN = 0.5
STD = 0.5
SIZE = 16  # model resolution: the 8x8 scans upsampled, one token per pixel (256 patches)


def _resize(image: np.ndarray) -> np.ndarray:
    """Bilinear resize of one float image to SIZE x SIZE, PIL's resampler for arrays and files alike."""
    from PIL import Image

    im = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.asarray(im.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32)


@functools.cache
def _upsample_matrix(n: int) -> np.ndarray:
    """[SIZE, n]: the bilinear resize is separable, so R @ image @ R.T is PIL's result for a whole batch."""
    basis = np.zeros((n, n), dtype=np.float32)
    columns = []
    for j in range(n):
        basis[:, j] = 1.0
        columns.append(_resize(basis)[0])
        basis[:, j] = 0.0
    return np.stack(columns, axis=1)


def preprocess(images_0_to_16: np.ndarray) -> np.ndarray:
    """Map raw digits scans ([..., 8, 8], pixels 0..16) to the model's input: SIZE x SIZE in [-1, 1]."""
    x = np.asarray(images_0_to_16, dtype=np.float32) / 16.0
    r = _upsample_matrix(x.shape[-1])
    up = r @ x @ r.T
    return ((np.clip(up, 0.0, 1.0) - MEAN) / STD).astype(np.float32)


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (pixel_values float32 [N, 1, SIZE, SIZE], labels int64 [N]) for one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; valid: {', '.join(SPLITS)}")
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    start, stop = SPLITS[split]
    idx = order[start:stop]
    x = preprocess(data.images[idx]).reshape(-1, 1, SIZE, SIZE)
    return x, data.target[idx].astype(np.int64)
