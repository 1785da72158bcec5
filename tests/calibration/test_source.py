import numpy as np
import pytest
from PIL import Image

from edgec.calibration.source import calibration_images, calibration_texts
from edgec.calibration.text import builtin_sentences
from edgec.errors import InputError


def ones(path):
    return np.ones((1, 8, 8), dtype=np.float32)


def test_texts_default_to_builtin_prefix():
    assert calibration_texts(None, 5) == builtin_sentences("calib")[:5]


def test_texts_from_txt_and_jsonl_are_capped(tmp_path):
    txt = tmp_path / "s.txt"
    txt.write_text("one\ntwo\nthree\n")
    jsonl = tmp_path / "s.jsonl"
    jsonl.write_text('{"text": "one"}\n{"text": "two"}\n')
    assert calibration_texts(txt, 2) == ["one", "two"]
    assert calibration_texts(jsonl, 10) == ["one", "two"]


def test_texts_reject_other_inputs(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("a,b\n")
    with pytest.raises(InputError, match=r"s\.csv is not \.txt or \.jsonl"):
        calibration_texts(csv, 4)
    with pytest.raises(InputError, match="is a folder"):
        calibration_texts(tmp_path, 4)
    with pytest.raises(InputError, match=r"gone\.txt does not exist"):
        calibration_texts(tmp_path / "gone.txt", 4)
    with pytest.raises(InputError, match="at least 1"):
        calibration_texts(None, 0)


def test_images_default_to_none_and_folder_is_capped(tmp_path):
    assert calibration_images(None, 8, ones) is None
    for i in range(3):
        Image.new("L", (8, 8)).save(tmp_path / f"{i}.png")
    assert calibration_images(tmp_path, 2, ones).shape == (2, 1, 8, 8)


def test_images_reject_files_and_bad_counts(tmp_path):
    txt = tmp_path / "s.txt"
    txt.write_text("one\n")
    with pytest.raises(InputError, match="is not a folder"):
        calibration_images(txt, 2, ones)
    with pytest.raises(InputError, match="at least 1"):
        calibration_images(tmp_path, 0, ones)
