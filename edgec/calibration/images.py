"""Image calibration data: a folder of image files, each preprocessed by the model's own function."""

from pathlib import Path
from typing import Callable

import numpy as np

from edgec.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def read_image_folder(path: Path, preprocess: Callable[[Path], np.ndarray], limit: int | None = None) -> np.ndarray:
    """Stack `preprocess(file)` ([C, H, W]) over the folder's images, sorted by name, into [N, C, H, W] float32.

    `limit` keeps the first files before preprocessing, so a large folder is not decoded in full.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"image folder {path} does not exist: check the path")
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"image folder {path} has no images: add .png, .jpg, .jpeg or .bmp files")
    arrays = []
    for f in files[:limit]:
        try:
            arrays.append(np.asarray(preprocess(f), dtype=np.float32))
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for broken files
            raise InputError(f"cannot read image {f}: replace or remove it ({e})") from None
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1 or arrays[0].ndim != 3:
        raise InputError(f"images in {path} preprocess to shapes {sorted(shapes)}: each must give one [C, H, W] array")
    return np.stack(arrays)
