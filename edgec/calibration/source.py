"""Pick calibration data from what the user named: nothing (built-in), a folder of images, or a text file."""

from pathlib import Path
from typing import Callable

import numpy as np

from edgec.calibration.images import read_image_folder
from edgec.calibration.text import builtin_sentences, read_text_samples
from edgec.errors import InputError

TEXT_SUFFIXES = (".txt", ".jsonl")


def _check(path: Path | None, samples: int) -> Path | None:
    if samples < 1:
        raise InputError(f"calibration sample count {samples} is too small: give at least 1")
    if path is not None and not Path(path).exists():
        raise InputError(f"calibration path {path} does not exist: check the path")
    return None if path is None else Path(path)


def calibration_texts(path: Path | None, samples: int) -> list[str]:
    """The first `samples` texts from `path`, or from the built-in calibration sentences when None."""
    path = _check(path, samples)
    if path is None:
        return builtin_sentences("calib")[:samples]
    if path.is_dir():
        raise InputError(f"calibration path {path} is a folder, but this model takes text: give a .txt or .jsonl file")
    if path.suffix.lower() not in TEXT_SUFFIXES:
        raise InputError(f"calibration file {path} is not .txt or .jsonl: give one sample per line in either")
    return read_text_samples(path)[:samples]


def calibration_images(path: Path | None, samples: int, preprocess: Callable[[Path], np.ndarray]) -> np.ndarray | None:
    """The first `samples` images from the folder `path`; None when no path, so the zoo's own split is used."""
    path = _check(path, samples)
    if path is None:
        return None
    if not path.is_dir():
        raise InputError(f"calibration path {path} is not a folder, but this model takes images: give a folder of images")
    return read_image_folder(path, preprocess, limit=samples)
