from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import ViTForImageClassification

import edgec.zoo
from edgec.calibration.digits import SIZE, load_digits_split, preprocess
from edgec.calibration.preprocess import preprocess_file, spec_for

ZOO_VIT = Path(edgec.zoo.__file__).parent / "vit-digits"
SIZES = {"train": 1197, "calib": 200, "test": 400}


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


@pytest.mark.parametrize("split", list(SIZES))
def test_split_shapes_dtypes_and_range(split):
    x, y = load_digits_split(split)
    assert x.shape == (SIZES[split], 1, SIZE, SIZE) and x.dtype == np.float32
    assert y.shape == (SIZES[split],) and y.dtype == np.int64
    assert x.min() == -1.0 and x.max() == 1.0
    assert set(np.unique(y)) == set(range(10))


def test_splits_are_disjoint_and_cover_the_dataset():
    from sklearn.datasets import load_digits

    images = preprocess(load_digits().images)
    all_rows = {r.tobytes() for r in images.reshape(len(images), -1)}
    parts = [_rows(load_digits_split(s)[0]) for s in SIZES]
    # all 1797 digits images are distinct, so equal content means the same sample
    assert len(all_rows) == 1797 and set.union(*parts) == all_rows
    train, calib, test = parts
    assert not (train & test) and not (calib & test) and not (train & calib)


def test_splits_are_deterministic():
    x1, y1 = load_digits_split("calib")
    x2, y2 = load_digits_split("calib")
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_bad_split_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="train, calib, test"):
        load_digits_split("validation")


def test_image_file_matches_array_preprocessing(tmp_path):
    raw = np.zeros((8, 8), dtype=np.uint8)
    raw[2:6, 3] = 255
    Image.fromarray(raw).save(tmp_path / "one.png")
    config = ViTForImageClassification.config_class.from_pretrained(ZOO_VIT)
    x = preprocess_file(spec_for(ZOO_VIT, config), tmp_path / "one.png")  # the spec a bundle ships
    assert x.shape == (1, SIZE, SIZE) and x.dtype == np.float32
    np.testing.assert_allclose(x[0], preprocess(raw / 255.0 * 16), atol=1e-6)


@torch.no_grad()
def test_shipped_vit_digits_reaches_95_percent_on_test():
    model = ViTForImageClassification.from_pretrained(ZOO_VIT).eval()
    x, y = load_digits_split("test")
    pred = model(pixel_values=torch.from_numpy(x)).logits.argmax(-1).numpy()
    assert (pred == y).mean() >= 0.95
