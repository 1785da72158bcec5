import numpy as np
import pytest
from PIL import Image

from edgec.calibration.images import read_image_folder
from edgec.errors import InputError


def gray_8x8(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), dtype=np.float32)[None] / 255.0


def write_png(path, value):
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def test_folder_of_pngs_stacks_sorted(tmp_path):
    write_png(tmp_path / "b.png", 255)
    write_png(tmp_path / "a.png", 0)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub").mkdir()
    write_png(tmp_path / "sub" / "c.png", 128)
    x = read_image_folder(tmp_path, gray_8x8)
    assert x.shape == (2, 1, 8, 8) and x.dtype == np.float32
    assert x[0].max() == 0.0 and x[1].min() == 1.0
    assert read_image_folder(tmp_path, gray_8x8, limit=1).shape == (1, 1, 8, 8)


def test_empty_folder(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="has no images"):
        read_image_folder(tmp_path, gray_8x8)


def test_unreadable_image_is_named(tmp_path):
    write_png(tmp_path / "a.png", 0)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"broken\.png"):
        read_image_folder(tmp_path, gray_8x8)
