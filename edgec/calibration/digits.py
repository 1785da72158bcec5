"""The scikit-learn digits data, split once for the whole project.

Training, calibration and evaluation all read the same fixed, disjoint splits
from here, so a quantized model is never calibrated or scored on images its
float weights were trained on.
"""

from pathlib import Path

import numpy as np

SPLITS = {"train": (0, 1197), "calib": (1197, 1397), "test": (1397, 1797)}
MEAN = 0.5
STD = 0.5


def preprocess(images_0_to_16: np.ndarray) -> np.ndarray:
    """Map raw digits pixels (0..16) to the [-1, 1] range the model was trained on."""
    x = np.asarray(images_0_to_16, dtype=np.float32) / 16.0
    return (x - MEAN) / STD


def preprocess_image_file(path) -> np.ndarray:
    """Load a PNG/JPEG as a [1, 8, 8] model input, for folders of user calibration images."""
    from PIL import Image

    with Image.open(Path(path)) as im:
        im = im.convert("L").resize((8, 8), Image.Resampling.BILINEAR)
        x = np.asarray(im, dtype=np.float32) / 255.0
    return ((x - MEAN) / STD)[None]


def load_digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Return (pixel_values float32 [N, 1, 8, 8], labels int64 [N]) for one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; valid: {', '.join(SPLITS)}")
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    start, stop = SPLITS[split]
    idx = order[start:stop]
    x = preprocess(data.images[idx]).reshape(-1, 1, 8, 8)
    return x, data.target[idx].astype(np.int64)
