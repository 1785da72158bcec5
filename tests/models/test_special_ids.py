"""Special ids as a Hugging Face directory states them: every end id, and how many BOS ids a prompt takes."""

import json
from types import SimpleNamespace

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from edgec.errors import InputError
from edgec.models.special_ids import eos_ids, num_bos


def _tokenizer(template: bool) -> Tokenizer:
    tok = Tokenizer(models.WordLevel({"<s>": 0, "</s>": 1, "a": 2, "<unk>": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if template:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return tok


def test_end_ids_come_from_config_and_generation_config(tmp_path):
    """Instruct models list their end-of-turn ids in generation_config.json only."""
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, 107]}))
    assert eos_ids(SimpleNamespace(eos_token_id=1), tmp_path) == [1, 107]
    assert eos_ids(SimpleNamespace(eos_token_id=[5, 1]), tmp_path) == [5, 1, 107]
    assert eos_ids(SimpleNamespace(eos_token_id=None), tmp_path / "nowhere") == []


def test_a_broken_generation_config_is_one_line(tmp_path):
    (tmp_path / "generation_config.json").write_text("{not json")
    with pytest.raises(InputError, match="generation_config.json is not valid JSON"):
        eos_ids(SimpleNamespace(eos_token_id=1), tmp_path)


@pytest.mark.parametrize("template,add_bos,want", [(True, None, 1), (False, True, 1), (False, None, 0),
                                                   (False, False, 0)])
def test_num_bos_follows_the_template_or_tokenizer_config(tmp_path, template, add_bos, want):
    if add_bos is not None:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": add_bos}))
    assert num_bos(_tokenizer(template), SimpleNamespace(bos_token_id=0), tmp_path) == want


def test_no_bos_id_means_no_bos(tmp_path):
    assert num_bos(_tokenizer(True), SimpleNamespace(bos_token_id=None), tmp_path) == 0
