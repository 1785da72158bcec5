"""Decoder pruning: whole KV groups and MLP channels go, the smaller Llama runs, exports and runs on the HTP."""

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import transformers

from edgec.calibration.plan import PrecisionPlan
from edgec.errors import InputError, UnsupportedModelError
from edgec.exporters.onnx_float import export_onnx
from edgec.exporters.onnx_qdq import quantize_qdq
from edgec.models.decoder import Decoder
from edgec.models.hf_decoder import from_hf_decoder
from edgec.passes.prune import PruneConfig, prune, prune_decoder
from edgec.runtimes import ort_cpu, qnn_htp

HIDDEN, HEADS, KV_HEADS, INTER, SEQ, VOCAB = 64, 4, 2, 128, 16, 128
G, HEAD_DIM = HEADS // KV_HEADS, HIDDEN // HEADS
GROUP_COST = (2 * G + 2) * HIDDEN * HEAD_DIM + (G + 2) * HEAD_DIM  # q, k, v rows and biases, o columns
CHANNEL_COST = 3 * HIDDEN + 2  # gate and up rows and biases, a down column


def tiny_llama() -> Decoder:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=2,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, max_position_embeddings=64,
        attn_implementation="eager")
    torch.manual_seed(0)
    model = from_hf_decoder(transformers.LlamaForCausalLM(config).eval())
    with torch.no_grad():  # HF initialises norms to one and biases to zero: make them matter
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", ".bias")):
                p.add_(0.1 * torch.randn_like(p))
    return model


def ids(n: int, seed: int) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (1, SEQ), generator=g),) for _ in range(n)]


def max_error(a: torch.nn.Module, b: torch.nn.Module, inputs) -> float:
    with torch.no_grad():
        return max(float((a(*x) - b(*x)).abs().max()) for x in inputs)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def prunable(model: Decoder) -> int:
    return sum(n_params(m) for b in model.layers for m in (b.attn, b.gate, b.up, b.down))


@pytest.fixture(scope="module")
def llama() -> Decoder:
    return tiny_llama()


@pytest.mark.parametrize("method", ["flap", "magnitude"])
def test_ratio_zero_changes_nothing(llama, method):
    calib = ids(3, 0)
    res = prune(llama, calib, PruneConfig(ratio=0.0, method=method))
    assert not res.changed and res.params_after == res.params_before == n_params(llama)
    assert res.removed_fraction == 0.0 and max_error(llama, res.module, calib) == 0.0
    assert all(not l.heads_removed and not l.channels_removed for l in res.layers)


@pytest.mark.parametrize("allocation", ["per_param", "standardised"])
@pytest.mark.parametrize("method", ["flap", "magnitude"])
def test_removes_the_requested_share_in_whole_kv_groups(llama, method, allocation):
    res = prune(llama, ids(4, 0), PruneConfig(ratio=0.3, method=method, allocation=allocation, mlp_block=1))
    assert abs(res.removed_fraction - 0.3) * res.prunable_before <= GROUP_COST / 2
    groups_removed = sum(len(l.heads_removed) for l in res.layers) // G
    removed = GROUP_COST * groups_removed + CHANNEL_COST * sum(len(l.channels_removed) for l in res.layers)
    assert res.prunable_before - res.prunable_after == removed == res.params_before - res.params_after
    assert res.params_after == n_params(res.module) and res.prunable_after == prunable(res.module)
    assert sum(l.params_before - l.params_after for l in res.layers) == removed
    for l, block in zip(res.layers, res.module.layers):
        a = block.attn
        assert a.heads == len(l.heads_kept) >= G and a.heads % a.kv_heads == 0 and a.heads // a.kv_heads == G
        assert sorted(l.heads_kept + l.heads_removed) == list(range(HEADS))
        for h in l.heads_removed:  # a removed query head takes its whole group along
            assert set(range(h // G * G, h // G * G + G)) <= set(l.heads_removed)
        assert a.q.weight.shape == a.o.weight.T.shape == (a.heads * HEAD_DIM, HIDDEN)
        assert a.k.weight.shape == a.v.weight.shape == (a.kv_heads * HEAD_DIM, HIDDEN)
        n = len(l.channels_kept)
        assert n >= 1 and block.gate.weight.shape == block.up.weight.shape == (n, HIDDEN)
        assert block.down.weight.shape == (HIDDEN, n) and block.gate.bias.shape == (n,)
        assert l.bias_compensated == (method == "flap")
        assert bool(l.notes) == bool(l.heads_removed)
    assert any(l.channels_removed for l in res.layers)
    if allocation == "standardised":  # here every layer's worst group is below the mean: groups go
        assert groups_removed >= 1


@pytest.mark.parametrize("config", [PruneConfig(ratio=0.3, method="magnitude"),
                                    PruneConfig(ratio=0.3, allocation="standardised")])
def test_pruned_decoder_exports_and_ort_matches_eager(llama, config, tmp_path):
    res = prune(llama, ids(4, 0), config)
    assert any(l.heads_removed for l in res.layers)
    feeds = {"input_ids": ids(1, 7)[0][0].numpy()}
    export_onnx(res.module, feeds, ["logits"], tmp_path / "pruned.onnx")
    got = ort_cpu.load(tmp_path / "pruned.onnx").run(feeds)[0]
    with torch.no_grad():
        want = res.module(torch.from_numpy(feeds["input_ids"])).numpy()
    assert want.shape == (1, SEQ, VOCAB) and np.abs(want).max() > 0.1
    assert np.abs(got - want).max() < 1e-3  # measured: about 1e-7


def test_pruned_decoder_runs_whole_on_the_htp(llama, tmp_path):
    calib = ids(4, 0)
    res = prune(llama, calib, PruneConfig(ratio=0.3, method="magnitude"))
    assert [(l.attn.heads, l.attn.kv_heads) for l in res.module.layers] == [(4, 2), (2, 1)]  # layers differ
    feeds = [{"input_ids": x.numpy()} for (x,) in calib]
    export_onnx(res.module, feeds[0], ["logits"], tmp_path / "float.onnx")
    quantize_qdq(tmp_path / "float.onnx", tmp_path / "qdq.onnx", feeds, PrecisionPlan())
    cov = qnn_htp.coverage(tmp_path / "qdq.onnx")
    assert cov.runs_fully and cov.fraction == 1.0 and not cov.unsupported, cov.to_dict()
    (got,) = qnn_htp.load(tmp_path / "qdq.onnx").run(feeds[0])
    with torch.no_grad():
        want = res.module(calib[0][0]).numpy()
    assert np.abs(got - want).max() < 0.05  # A16W8; measured 0.01 against logits up to 0.6


def _constant_group(model: Decoder, layer: int, group: int, scale: float = 10.0) -> None:
    """KV group `group` of `layer` outputs v's bias whatever it attends to: o's input never fluctuates
    there. Its o columns get the largest weights of all."""
    attn = model.layers[layer].attn
    with torch.no_grad():
        attn.v.weight[group * HEAD_DIM:(group + 1) * HEAD_DIM] = 0.0
        attn.v.bias[group * HEAD_DIM:(group + 1) * HEAD_DIM] = 1.0
        attn.o.weight[:, group * G * HEAD_DIM:(group + 1) * G * HEAD_DIM] *= scale


@pytest.mark.parametrize("score", ["output", "local"])
def test_flap_drops_a_heavy_constant_group_that_magnitude_keeps(score):
    llama = tiny_llama()
    _constant_group(llama, layer=0, group=1)
    calib, held_out = ids(4, 0), ids(2, 1)
    ratio = GROUP_COST / prunable(llama)  # one group's worth
    flap = prune(llama, calib, PruneConfig(ratio=ratio, score=score))
    mag = prune(llama, calib, PruneConfig(ratio=ratio, method="magnitude"))
    assert flap.layers[0].heads_removed == (2, 3) and not flap.layers[1].heads_removed
    assert "KV groups [1] removed" in flap.layers[0].notes[0]
    assert (flap.module.layers[0].attn.heads, flap.module.layers[0].attn.kv_heads) == (2, 1)
    assert not set(mag.layers[0].heads_removed) & {2, 3}
    # a constant input is all mean: bias compensation makes the removal exact (measured 1.5e-7);
    # magnitude spends the same parameters elsewhere and loses signal (measured 7e-4)
    flap_error, mag_error = max_error(llama, flap.module, held_out), max_error(llama, mag.module, held_out)
    assert flap_error < 1e-5 and mag_error > 100 * flap_error, (flap_error, mag_error)


def test_bias_compensation_restores_the_mean_of_pruned_channels():
    llama = tiny_llama()
    planted = list(range(16))
    with torch.no_grad():  # 16 SwiGLU channels of layer 1 sit at silu(4) * 4 = 15.7 whatever the input
        for lin in (llama.layers[1].gate, llama.layers[1].up):
            lin.weight[planted] = 0.0
            lin.bias[planted] = 4.0
    calib, held_out = ids(4, 0), ids(2, 1)
    res = prune(llama, calib, PruneConfig(ratio=16 * CHANNEL_COST / prunable(llama), mlp_block=1))
    assert set(res.layers[1].channels_removed) == set(planted) and res.layers[1].bias_compensated
    uncompensated = copy.deepcopy(res.module)
    with torch.no_grad():
        uncompensated.layers[1].down.bias.copy_(llama.layers[1].down.bias)
    with_comp, without = max_error(llama, res.module, held_out), max_error(llama, uncompensated, held_out)
    assert without > 0.1 and with_comp < without / 100, (with_comp, without)


def test_steps_rescore_the_model_each_step_leaves(llama):
    calib, config = ids(4, 0), PruneConfig(ratio=0.3, score="output", steps=2, mlp_block=1)
    two = prune(llama, calib, config)
    half = prune(llama, calib, replace(config, ratio=0.15, steps=1))
    before, after = half.prunable_before, half.prunable_after
    rest = prune(half.module, calib, replace(config, ratio=(0.3 * before - (before - after)) / after, steps=1))
    got, want = two.module.state_dict(), rest.module.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert two.steps_used == two.to_dict()["steps_used"] == 2
    one = prune(llama, calib, replace(config, steps=1))
    assert [l.channels_removed for l in one.layers] != [l.channels_removed for l in two.layers]


def test_the_result_records_the_score_and_steps_used(llama):
    calib = ids(4, 0)
    res = {score: prune(llama, calib, PruneConfig(ratio=0.3, score=score, steps=1)) for score in ("output", "local")}
    assert [l.channels_removed for l in res["output"].layers] != [l.channels_removed for l in res["local"].layers]
    for score, r in res.items():
        assert (r.score_used, r.steps_used) == (score, 1) and r.to_dict()["score_used"] == score
        assert f"{score} score, 1 step," in r.explain()[0]
    mag = prune(llama, calib, PruneConfig(ratio=0.3, method="magnitude"))  # score and steps are flap's
    assert (mag.score_used, mag.steps_used) == ("magnitude", 1)
    nothing = prune(llama, calib, PruneConfig(ratio=0.0))
    assert (nothing.score_used, nothing.steps_used) == (None, 0)


def test_prune_dispatches_a_decoder_and_leaves_the_input_untouched(llama):
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    calib, config = ids(4, 0), PruneConfig(ratio=0.5, allocation="standardised")
    via_prune, direct = prune(llama, calib, config), prune_decoder(llama, calib, config)
    assert isinstance(via_prune.module, Decoder) and via_prune.to_dict() == direct.to_dict()
    assert all(torch.equal(before[k], v) for k, v in llama.state_dict().items())
    assert [(l.attn.heads, l.attn.kv_heads) for l in llama.layers] == [(HEADS, KV_HEADS)] * 2
    d = json.loads(json.dumps(via_prune.to_dict()))
    assert d["config"] == config.to_dict() and len(via_prune.explain()) >= 1 + len(via_prune.layers)


def test_refuses_what_it_cannot_do(llama):
    with pytest.raises(InputError, match="calibration"):
        prune(llama, [], PruneConfig(ratio=0.3))
    assert prune(llama, [], PruneConfig(ratio=0.3, method="magnitude")).changed
    for config in (PruneConfig(ratio=0.3, refit=True), PruneConfig(ratio=0.3, prune_layers=True)):
        with pytest.raises(InputError, match="decoders"):
            prune(llama, ids(2, 0), config)
    with pytest.raises(UnsupportedModelError, match="from_hf_decoder"):
        prune_decoder(torch.nn.Linear(4, 4), [], PruneConfig(ratio=0.3, method="magnitude"))


def test_mlp_widths_stay_multiples_of_the_quantization_block(llama):
    """A down projection of 503 inputs cannot be stored in blocks of 32: llama.cpp keeps it 16-bit and the
    pruned file grows. Kept channels round up to the block, the highest-scored of the chosen staying."""
    result = prune(llama, ids(4, 0), PruneConfig(ratio=0.3))
    widths = [b.down.in_features for b in result.module.layers]
    assert all(w % 32 == 0 for w in widths) and min(widths) < INTER
    # within half a KV group, and half a block of MLP channels per layer
    assert abs(result.removed_fraction - 0.3) * result.prunable_before <= GROUP_COST / 2 + 16 * CHANNEL_COST * 2
    assert all(len(l.channels_kept) == w for l, w in zip(result.layers, widths))
