"""Structured pruning: the requested share goes, the smaller model runs, exports, and FLAP's pieces matter."""

import copy
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from helpers import randomise_norms

from edgec.exporters.onnx_float import export_onnx
from edgec.models.encoder import TextEncoder, VisionEncoder
from edgec.passes.prune import ConstantSublayer, PruneConfig, prune

HIDDEN, HEADS, HEAD_DIM, INTER = 32, 4, 8, 64
LAYERS = [{"heads": HEADS, "head_dim": HEAD_DIM, "intermediate": INTER}] * 2
HEAD_COST = 4 * HIDDEN * HEAD_DIM + 3 * HEAD_DIM
CHANNEL_COST = 2 * HIDDEN + 1


def tiny_bert() -> TextEncoder:
    torch.manual_seed(0)
    bert = TextEncoder(vocab=100, max_pos=16, type_vocab=2, hidden=HIDDEN, layers=LAYERS, act="gelu",
                       eps=1e-12).eval()
    randomise_norms(bert)
    return bert


def tiny_vit() -> VisionEncoder:
    torch.manual_seed(0)
    vit = VisionEncoder(channels=1, patch=2, image_size=8, hidden=HIDDEN, layers=LAYERS, act="gelu",
                        eps=1e-6, num_labels=10).eval()
    randomise_norms(vit)
    with torch.no_grad():
        vit.pos.normal_(0.0, 0.5)
    return vit


def bert_inputs(n: int, seed: int, pad_id: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 100, (2, 12), generator=g)
        mask = (torch.arange(12) < torch.randint(3, 12, (2, 1), generator=g)).to(torch.int64)
        out.append((ids.masked_fill(mask == 0, pad_id), mask))
    return out


def vit_inputs(n: int, seed: int) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 1, 8, 8, generator=g),) for _ in range(n)]


def max_error(a: torch.nn.Module, b: torch.nn.Module, inputs) -> float:
    with torch.no_grad():
        return max(float((a(*x) - b(*x)).abs().max()) for x in inputs)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prunable(model) -> int:
    return sum(n_params(m) for b in model.layers for m in (b.attn, b.fc1, b.fc2))


def test_ratio_zero_changes_nothing():
    for model, inputs in ((tiny_bert(), bert_inputs(3, 0)), (tiny_vit(), vit_inputs(3, 0))):
        res = prune(model, inputs, PruneConfig(ratio=0.0))
        assert not res.changed and res.params_after == res.params_before == n_params(model)
        assert res.removed_fraction == 0.0
        assert max_error(model, res.module, inputs) < 1e-6
        assert all(not l.heads_removed and not l.channels_removed for l in res.layers)


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.6])
@pytest.mark.parametrize("method", ["flap", "magnitude"])
def test_removes_the_requested_share_and_accounts_for_it(ratio, method):
    bert = tiny_bert()
    res = prune(bert, bert_inputs(4, 0), PruneConfig(ratio=ratio, method=method))
    # the closest prefix of the ranking: off by at most half the largest structure
    assert abs(res.removed_fraction - ratio) * res.prunable_before <= HEAD_COST / 2
    removed = sum(HEAD_COST * len(l.heads_removed) + CHANNEL_COST * len(l.channels_removed) for l in res.layers)
    assert res.prunable_before - res.prunable_after == removed == res.params_before - res.params_after
    assert res.params_after == n_params(res.module) and res.params_before == n_params(bert)
    for l, block, orig in zip(res.layers, res.module.layers, bert.layers):
        a = block.attn
        assert l.params_before == n_params(orig) and l.params_after == n_params(block)
        assert l.params_before - l.params_after == HEAD_COST * len(l.heads_removed) + CHANNEL_COST * len(
            l.channels_removed)
        assert len(l.heads_kept) >= 1 and len(l.channels_kept) >= 1
        assert sorted(l.heads_kept + l.heads_removed) == list(range(HEADS))
        assert a.heads == len(l.heads_kept)
        assert a.q.weight.shape == a.k.weight.shape == a.v.weight.shape == (a.heads * HEAD_DIM, HIDDEN)
        assert a.o.weight.shape == (HIDDEN, a.heads * HEAD_DIM)
        assert block.fc1.weight.shape == (len(l.channels_kept), HIDDEN)
        assert block.fc2.weight.shape == (HIDDEN, len(l.channels_kept))
        assert l.bias_compensated == (method == "flap" and bool(l.heads_removed or l.channels_removed))


def _check_onnx(module, feeds: dict[str, np.ndarray], output: str, tmp_path) -> None:
    path = tmp_path / "pruned.onnx"
    export_onnx(module, feeds, [output], path)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    with torch.no_grad():
        ref = module(*(torch.from_numpy(v) for v in feeds.values())).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_pruned_text_encoder_exports_and_matches_eager(tmp_path):
    res = prune(tiny_bert(), bert_inputs(4, 0), PruneConfig(ratio=0.4))
    assert res.changed and any(l.heads_removed for l in res.layers)
    mask = (np.arange(12) < 7).astype(np.int64)[None]  # partly padded, or the tracer may drop the mask
    ids = np.random.default_rng(0).integers(1, 100, (1, 12)) * mask
    _check_onnx(res.module, {"input_ids": ids, "attention_mask": mask}, "last_hidden_state", tmp_path)


def test_pruned_vision_encoder_exports_and_matches_eager(tmp_path):
    res = prune(tiny_vit(), vit_inputs(4, 0), PruneConfig(ratio=0.4, refit=True))
    assert res.changed and all(l.refit for l in res.layers)
    pixels = np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32)
    _check_onnx(res.module, {"pixel_values": pixels}, "logits", tmp_path)


def _constant_head(model, layer: int, head: int, scale: float = 10.0) -> None:
    """Head `head` of `layer` attends to anything but always outputs v's bias: its o input never fluctuates."""
    attn = model.layers[layer].attn
    rows = slice(head * HEAD_DIM, (head + 1) * HEAD_DIM)
    with torch.no_grad():
        attn.v.weight[rows] = 0.0
        attn.v.bias[rows] = 1.0
        attn.o.weight[:, rows] *= scale  # and the largest weights of all heads


@pytest.mark.parametrize("allocation,score", [("per_param", "output"), ("per_param", "local"),
                                              ("standardised", "local")])
def test_flap_drops_a_heavy_constant_head_that_magnitude_keeps(allocation, score):
    vit = tiny_vit()
    _constant_head(vit, layer=0, head=2)
    calib, held_out = vit_inputs(4, 0), vit_inputs(2, 1)
    ratio = HEAD_COST / prunable(vit)  # one head's worth
    flap = prune(vit, calib, PruneConfig(ratio=ratio, allocation=allocation, score=score))
    mag = prune(vit, calib, PruneConfig(ratio=ratio, method="magnitude", allocation=allocation))
    assert flap.layers[0].heads_removed == (2,) and not flap.layers[1].heads_removed
    assert 2 not in mag.layers[0].heads_removed
    # a constant input is all mean: bias compensation makes its removal exact
    assert max_error(vit, flap.module, held_out) < 1e-4
    assert max_error(vit, mag.module, held_out) > 1e-2


def test_bias_compensation_restores_the_mean_of_pruned_channels():
    vit = tiny_vit()
    planted = list(range(16))
    with torch.no_grad():  # 16 channels of layer 1 sit near gelu(4) = 4 whatever the input
        vit.layers[1].fc1.weight[planted] *= 0.01
        vit.layers[1].fc1.bias[planted] = 4.0
    calib, held_out = vit_inputs(4, 0), vit_inputs(2, 1)
    res = prune(vit, calib, PruneConfig(ratio=16 * CHANNEL_COST / prunable(vit), refit=False, score="local"))
    assert set(res.layers[1].channels_removed) == set(planted)
    assert res.layers[1].bias_compensated
    uncompensated = copy.deepcopy(res.module)
    with torch.no_grad():
        uncompensated.layers[1].fc2.bias.copy_(vit.layers[1].fc2.bias)
    with_comp, without = max_error(vit, res.module, held_out), max_error(vit, uncompensated, held_out)
    assert without > 0.5 and with_comp < without / 20, (with_comp, without)


def test_refit_reduces_the_error_of_the_same_pruning():
    vit, calib, held_out = tiny_vit(), vit_inputs(8, 0), vit_inputs(4, 1)
    plain = prune(vit, calib, PruneConfig(ratio=0.5, refit=False, steps=1))  # one step: the same choice
    refit = prune(vit, calib, PruneConfig(ratio=0.5, refit=True, steps=1))
    assert [l.channels_removed for l in refit.layers] == [l.channels_removed for l in plain.layers]
    assert max_error(vit, refit.module, held_out) < 0.8 * max_error(vit, plain.module, held_out)


def test_refit_is_on_by_default_for_flap_only():
    vit, calib = tiny_vit(), vit_inputs(4, 0)
    assert PruneConfig(ratio=0.3).refits and not PruneConfig(ratio=0.3, method="magnitude").refits
    assert not PruneConfig(ratio=0.3, refit=False).refits
    assert all(l.refit for l in prune(vit, calib, PruneConfig(ratio=0.3)).layers)
    assert not any(l.refit for l in prune(vit, calib, PruneConfig(ratio=0.3, method="magnitude")).layers)
    assert not any(l.refit for l in prune(vit, calib, PruneConfig(ratio=0.3, refit=False)).layers)


def test_padding_does_not_enter_the_statistics():
    bert = tiny_bert()
    a = prune(bert, bert_inputs(4, 0, pad_id=0), PruneConfig(ratio=0.3))
    b = prune(bert, bert_inputs(4, 0, pad_id=57), PruneConfig(ratio=0.3))
    assert a.to_dict() == b.to_dict()
    for (name, p), q in zip(a.module.named_parameters(), b.module.parameters()):
        torch.testing.assert_close(p, q, msg=name)


def test_prune_layers_drops_a_pre_ln_sublayer_but_not_a_post_ln_one(tmp_path):
    vit = tiny_vit()
    for head in range(HEADS):
        _constant_head(vit, layer=1, head=head, scale=1.0)
    calib = vit_inputs(4, 0)
    res = prune(vit, calib, PruneConfig(ratio=4 * HEAD_COST / prunable(vit), prune_layers=True))
    assert res.layers[1].attn_removed and res.layers[1].heads_removed == tuple(range(HEADS))
    assert isinstance(res.module.layers[1].attn, ConstantSublayer)
    assert max_error(vit, res.module, vit_inputs(2, 1)) < 1e-4
    pixels = np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32)
    _check_onnx(res.module, {"pixel_values": pixels}, "logits", tmp_path)
    kept = prune(vit, calib, PruneConfig(ratio=4 * HEAD_COST / prunable(vit)))
    assert len(kept.layers[1].heads_kept) == 1  # without prune_layers a layer keeps one head

    bert = tiny_bert()
    res = prune(bert, bert_inputs(4, 0), PruneConfig(ratio=0.9, prune_layers=True))
    assert all(len(l.heads_kept) >= 1 and len(l.channels_kept) >= 1 for l in res.layers)
    for l in res.layers:  # each layer says why it kept a last head or channel
        assert any("post-LN" in n for n in l.notes) == (len(l.heads_kept) == 1 or len(l.channels_kept) == 1)
    assert any(l.notes for l in res.layers)


def test_input_module_is_untouched():
    bert = tiny_bert()
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    prune(bert, bert_inputs(4, 0), PruneConfig(ratio=0.5, refit=True))
    after = bert.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [l.attn.heads for l in bert.layers] == [HEADS, HEADS]


def test_result_is_data():
    res = prune(tiny_bert(), bert_inputs(4, 0), PruneConfig(ratio=0.3))
    d = json.loads(json.dumps(res.to_dict()))
    assert d["config"] == PruneConfig(ratio=0.3).to_dict()
    assert d["layers"][0]["heads_kept"] == list(res.layers[0].heads_kept)
    lines = res.explain()
    assert f"{100 * res.removed_fraction:.1f}% removed" in lines[0]
    assert len(lines) == 1 + len(res.layers) and lines[1].startswith("layer 0:")


@pytest.mark.parametrize("bad", [dict(ratio=1.0), dict(ratio=-0.1), dict(ratio="0.3"), dict(ratio=True),
                                 dict(ratio=0.3, method="random"), dict(ratio=0.3, allocation="uniform"),
                                 dict(ratio=0.3, prune_layers=1), dict(ratio=0.3, refit=1),
                                 dict(ratio=0.3, method="magnitude", refit=True)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        PruneConfig(**bad)


def test_config_round_trips_and_is_keyword_only():
    config = PruneConfig(ratio=0.25, method="magnitude", prune_layers=True, allocation="standardised")
    assert PruneConfig.from_dict(config.to_dict()) == config
    assert PruneConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown"):
        PruneConfig.from_dict({"ratio": 0.2, "amount": 3})
    with pytest.raises(TypeError):
        PruneConfig(0.3)
