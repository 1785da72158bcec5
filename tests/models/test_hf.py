"""from_hf: tiny seeded HF encoders rebuilt as TextEncoder / VisionEncoder, output for output."""

import pytest
import torch
import transformers

from edgec.errors import UnsupportedModelError
from edgec.models.encoder import TextEncoder, VisionEncoder
from edgec.models.hf import FAMILIES, check_equivalent, from_hf

TOL = 1e-5
SIZES = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TEXT = dict(vocab_size=100, **SIZES)
VIT = dict(image_size=16, patch_size=4, num_channels=3, num_labels=5, **SIZES)


def _text_inputs(pad_id: int) -> dict[str, torch.Tensor]:
    """Batch of 3 right-padded rows: 12, 7 and 3 real tokens."""
    ids = torch.randint(3, 100, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = (torch.arange(12)[None] < torch.tensor([[12], [7], [3]])).long()
    return {"input_ids": torch.where(mask.bool(), ids, pad_id), "attention_mask": mask}


def _seeded(cls, config):
    torch.manual_seed(0)
    return cls(config).eval()


TEXT_MODELS = {
    "bert": lambda: _seeded(transformers.BertModel, transformers.BertConfig(**TEXT)),
    "roberta": lambda: _seeded(transformers.RobertaModel,
                               transformers.RobertaConfig(pad_token_id=1, max_position_embeddings=40, **TEXT)),
    "xlm-roberta": lambda: _seeded(transformers.XLMRobertaModel,
                                   transformers.XLMRobertaConfig(pad_token_id=1, max_position_embeddings=40, **TEXT)),
    "distilbert": lambda: _seeded(transformers.DistilBertModel, transformers.DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=4, hidden_dim=64)),
}


def _assert_rows_match(hf, ours, inputs):
    assert check_equivalent(hf, ours, inputs) < TOL
    with torch.no_grad():
        want = hf(**inputs).last_hidden_state
        got = ours(inputs["input_ids"], inputs["attention_mask"])
    assert got.shape == want.shape
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], atol=TOL, rtol=0)
    assert want[real].abs().max() > 0.5  # LayerNorm output, not a degenerate zero


@pytest.mark.parametrize("name", sorted(TEXT_MODELS))
def test_text_families_rebuild_exactly_on_padded_inputs(name):
    hf = TEXT_MODELS[name]()
    ours = from_hf(hf)
    assert isinstance(ours, TextEncoder) and not ours.training
    assert [l.attn.heads for l in ours.layers] == [4, 4] and ours.layers[0].fc1.out_features == 64
    _assert_rows_match(hf, ours, _text_inputs(hf.config.pad_token_id or 0))


def test_roberta_positions_start_after_the_pad_id():
    hf = TEXT_MODELS["roberta"]()
    ours = from_hf(hf)
    assert ours.pos_offset == 2
    inputs = _text_inputs(1)
    ours.pos_offset = 0  # BERT's positions: the rebuild no longer matches
    assert check_equivalent(hf, ours, inputs) > 1e-2


@pytest.mark.parametrize("act", ["relu", "gelu_new", "gelu_pytorch_tanh"])
def test_bert_activations(act):
    hf = _seeded(transformers.BertModel, transformers.BertConfig(hidden_act=act, layer_norm_eps=1e-5, **TEXT))
    ours = from_hf(hf)
    assert ours.layers[0].act_name == act and ours.ln.eps == 1e-5
    _assert_rows_match(hf, ours, _text_inputs(0))


def test_task_head_models_are_rebuilt_from_their_encoder():
    mlm = _seeded(transformers.BertForMaskedLM, transformers.BertConfig(**TEXT))
    ours, inputs = from_hf(mlm), _text_inputs(0)
    with torch.no_grad():
        want = mlm.bert(**inputs).last_hidden_state
        got = ours(inputs["input_ids"], inputs["attention_mask"])
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], want[real], atol=TOL, rtol=0)


def test_xlm_roberta_task_head_model_is_rebuilt():
    mlm = _seeded(transformers.XLMRobertaForMaskedLM, transformers.XLMRobertaConfig(pad_token_id=1, **TEXT))
    ours, inputs = from_hf(mlm), _text_inputs(1)
    with torch.no_grad():
        want = mlm.roberta(**inputs).last_hidden_state
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(ours(*inputs.values())[real], want[real], atol=TOL, rtol=0)


def _vit(**extra):
    return _seeded(transformers.ViTForImageClassification, transformers.ViTConfig(**VIT, **extra))


def test_vit_classifier_rebuilds_exactly():
    hf = _vit()
    ours = from_hf(hf)
    assert isinstance(ours, VisionEncoder) and ours.head.out_features == 5
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert check_equivalent(hf, ours, {"pixel_values": pixels}) < TOL
    with torch.no_grad():
        want, got = hf(pixel_values=pixels).logits, ours(pixels)
    torch.testing.assert_close(got, want, atol=TOL, rtol=0)
    assert (want[0] - want[1]).abs().max() > 1e-3  # the images are told apart


def test_vit_without_a_classification_head_is_unsupported():
    hf = _seeded(transformers.ViTModel, transformers.ViTConfig(**VIT))
    with pytest.raises(UnsupportedModelError, match="classification head"):
        from_hf(hf)


def test_vit_without_qkv_bias_rebuilds_with_zero_qkv_biases():
    hf = _vit(qkv_bias=False)
    assert not any(n.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for n, _ in hf.named_parameters())
    ours = from_hf(hf)
    for layer in ours.layers:
        for proj in (layer.attn.q, layer.attn.k, layer.attn.v):
            assert proj.bias.shape == (32,) and not proj.bias.any()
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert check_equivalent(hf, ours, {"pixel_values": pixels}) < TOL
    with torch.no_grad():
        want = hf(pixel_values=pixels).logits
    assert (want[0] - want[1]).abs().max() > 1e-3  # the images are told apart


def test_unsupported_model_type_lists_the_supported_families():
    gpt2 = _seeded(transformers.GPT2Model, transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=1, n_head=4, bos_token_id=0, eos_token_id=0))
    with pytest.raises(UnsupportedModelError, match="'gpt2' is not supported") as err:
        from_hf(gpt2)
    assert all(name in str(err.value) for name in FAMILIES)


def test_unsupported_activation_raises():
    hf = _seeded(transformers.BertModel, transformers.BertConfig(hidden_act="silu", **TEXT))
    with pytest.raises(UnsupportedModelError, match=r"activation 'silu'.*gelu"):
        from_hf(hf)


def _tiny_text_encoder():
    torch.manual_seed(0)
    return TextEncoder(vocab=100, max_pos=64, type_vocab=2, hidden=32,
                       layers=[{"heads": 4, "head_dim": 8, "intermediate": 64}] * 2, act="gelu", eps=1e-12).eval()


def test_padded_positions_do_not_reach_real_rows():
    module = _tiny_text_encoder()
    inputs = _text_inputs(0)
    other = dict(inputs, input_ids=torch.where(inputs["attention_mask"].bool(), inputs["input_ids"], 57))
    with torch.no_grad():
        a, b = module(*inputs.values()), module(*other.values())
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(a[real], b[real], atol=1e-6, rtol=0)
    assert (a[~real] - b[~real]).abs().max() > 1e-2  # the padded rows themselves did change


def test_vision_encoder_batch_of_three_equals_three_batches_of_one():
    module = from_hf(_vit())
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        batched = module(pixels)
        single = torch.cat([module(pixels[i:i + 1]) for i in range(3)])
    assert batched.shape == (3, 5)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["bert", "distilbert", "vit"])
def test_load_into_hf_writes_edited_canonical_weights_back(name):
    from edgec.models.hf import load_into_hf

    if name == "vit":
        hf = _seeded(transformers.ViTForImageClassification, transformers.ViTConfig(**VIT))
        inputs = {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))}
    else:
        hf = TEXT_MODELS[name]()
        inputs = _text_inputs(hf.config.pad_token_id or 0)
    ours = from_hf(hf)
    with torch.no_grad():
        for pname, p in ours.named_parameters():
            if not (name == "distilbert" and pname == "segment.weight"):  # a family without token types
                p.add_(0.05 * torch.randn_like(p))
    assert check_equivalent(hf, ours, inputs) > 1e-3  # the edit shows before it is written back
    load_into_hf(ours, hf)
    assert check_equivalent(hf, ours, inputs) < TOL
    if name == "distilbert":  # no token-type embeddings to write a trained one into
        with torch.no_grad():
            ours.segment.weight.add_(1.0)
        with pytest.raises(ValueError, match="no place for"):
            load_into_hf(ours, hf)
