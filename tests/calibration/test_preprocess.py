"""The manifest's preprocessing spec reproduces the model's own image processor."""

import numpy as np
import pytest
from PIL import Image
from transformers import ViTImageProcessor

from edgec.calibration.preprocess import preprocess_file, spec_from_hf
from edgec.errors import InputError


def test_spec_matches_hf_vit_processor(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "x.png")
    processor = ViTImageProcessor(size={"height": 24, "width": 24}, image_mean=[0.4, 0.5, 0.6],
                                  image_std=[0.2, 0.25, 0.3])
    spec = spec_from_hf(processor, 3)
    assert spec == {"color": "RGB", "size": [24, 24], "resample": "bilinear", "rescale": 1 / 255,
                    "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
    ours = preprocess_file(spec, tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as im:
        theirs = processor(images=im, return_tensors="np")["pixel_values"][0]
    assert ours.shape == theirs.shape == (3, 24, 24)
    # HF resizes 8-bit pixels and rounds, edgec resizes floats: at most a pixel level apart
    assert np.abs(ours - theirs).max() < 1.5 / 255 / 0.2


def test_center_crop_processor_is_refused():
    processor = ViTImageProcessor(size={"shortest_edge": 24}, do_center_crop=True)
    with pytest.raises(InputError, match="shortest edge"):
        spec_from_hf(processor, 3)
