"""Token budget: exact at a full budget, the top-K tokens by an independent reference, static shapes, the HTP."""

import math

import numpy as np
import onnx
import pytest
import torch

from edgec.models.encoder import TextEncoder, VisionEncoder
from edgec.passes.token_budget import TokenBudgetConfig, apply_token_budget

LAYERS = [{"heads": 4, "head_dim": 8, "intermediate": 64}, {"heads": 2, "head_dim": 8, "intermediate": 48},
          {"heads": 2, "head_dim": 8, "intermediate": 48}]
PATCHES, SEQ = 16, 16


def tiny_vit() -> VisionEncoder:
    torch.manual_seed(0)
    vit = VisionEncoder(channels=1, patch=2, image_size=8, hidden=32, layers=LAYERS, act="gelu",
                        eps=1e-6, num_labels=10).eval()
    with torch.no_grad():
        vit.pos.normal_(0.0, 0.5)
        vit.cls.normal_(0.0, 0.5)
    return vit


def tiny_bert() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(vocab=100, max_pos=32, type_vocab=2, hidden=32, layers=LAYERS, act="gelu",
                       eps=1e-12).eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def sentence(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n real tokens, right-padded to SEQ."""
    ids = torch.randint(1, 100, (1, SEQ), generator=torch.Generator().manual_seed(seed))
    mask = (torch.arange(SEQ) < n).to(torch.int64)[None]
    return ids.masked_fill(mask == 0, 0), mask


def capture(block: torch.nn.Module, what: str) -> list:
    """Records a block's positional inputs ("in") or its output ("out") on every call."""
    seen = []
    if what == "in":
        block.register_forward_pre_hook(lambda _m, args: seen.append(args))
    else:
        block.register_forward_hook(lambda _m, _args, out: seen.append(out))
    return seen


def reference_probs(model, layer: int, inputs: tuple, mask: torch.Tensor | None = None):
    """Block `layer`'s attention probabilities [heads, S, S] and output [S, H], from the canonical model."""
    block = model.layers[layer]
    attn_in, out = capture(block.attn, "in"), capture(block, "out")
    with torch.no_grad():
        model(*inputs)
    h, a = attn_in[0][0][0], block.attn
    q = a.q(h).view(-1, a.heads, a.head_dim).transpose(0, 1)
    k = a.k(h).view(-1, a.heads, a.head_dim).transpose(0, 1)
    scores = q @ k.transpose(1, 2) / math.sqrt(a.head_dim)
    if mask is not None:
        scores = scores + (1.0 - mask.float()) * model.mask_value
    return scores.softmax(-1).detach(), out[0][0].detach()


# --- config -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    {"budget": 0.0}, {"budget": 1.5}, {"budget": -0.2}, {"budget": 0}, {"budget": -3}, {"budget": True},
    {"budget": "0.5"}, {"budget": None}, {"budget": 0.5, "layer": -1}, {"budget": 0.5, "layer": 1.0},
    {"budget": 0.5, "layer": True}, {"budget": 0.5, "fuse_dropped": 1}, {"budget": 0.5, "score": "max"},
    {"budget": 0.5, "score": "auto"},
])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        TokenBudgetConfig(**kwargs)


def test_config_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        TokenBudgetConfig(0.5)
    cfg = TokenBudgetConfig(budget=0.5)
    with pytest.raises(AttributeError):
        cfg.budget = 0.25


@pytest.mark.parametrize("cfg", [TokenBudgetConfig(budget=0.5), TokenBudgetConfig(budget=3, layer=0, fuse_dropped=False,
                                                                                  score="cls")])
def test_config_round_trips(cfg):
    d = cfg.to_dict()
    assert TokenBudgetConfig.from_dict(d) == cfg
    assert type(TokenBudgetConfig.from_dict(d).budget) is type(cfg.budget)  # a count stays a count


def test_config_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match="unknown TokenBudgetConfig keys.*ratio"):
        TokenBudgetConfig.from_dict({"budget": 0.5, "ratio": 2})


def test_kept_counts():
    assert [TokenBudgetConfig(budget=b).kept(16) for b in (1.0, 0.75, 0.5, 0.25, 0.01)] == [16, 12, 8, 4, 1]
    assert TokenBudgetConfig(budget=0.5).kept(7) == 4  # half rounds up
    assert TokenBudgetConfig(budget=5).kept(16) == 5
    with pytest.raises(ValueError, match="exceeds"):
        TokenBudgetConfig(budget=17).kept(16)


def test_apply_rejects_mismatches():
    with pytest.raises(ValueError, match="blocks 0..2"):
        apply_token_budget(tiny_vit(), TokenBudgetConfig(budget=0.5, layer=3))
    with pytest.raises(ValueError, match="16 patches"):
        apply_token_budget(tiny_vit(), TokenBudgetConfig(budget=0.5), 9)
    with pytest.raises(ValueError, match="sequence length"):
        apply_token_budget(tiny_bert(), TokenBudgetConfig(budget=0.5))
    with pytest.raises(TypeError, match="VisionEncoder or TextEncoder"):
        apply_token_budget(torch.nn.Linear(2, 2), TokenBudgetConfig(budget=0.5))


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_a_block_asked_for_probabilities_computes_the_same_output(kind):
    """Token dropping scores with the block's own forward, so the deciding block is the canonical one."""
    model = tiny_vit() if kind == "vit" else tiny_bert()
    inputs = (images(1, seed=4),) if kind == "vit" else sentence(9, seed=4)
    block_in = capture(model.layers[1], "in")
    probs, out = reference_probs(model, 1, inputs, None if kind == "vit" else inputs[1][0])
    with torch.no_grad():
        got, got_probs = model.layers[1](*block_in[0], return_probs=True)
    assert torch.equal(got[0], out)
    torch.testing.assert_close(got_probs[0], probs, rtol=1e-6, atol=1e-6)


# --- vision -----------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [1.0, PATCHES])
def test_full_budget_changes_nothing(budget):
    vit = tiny_vit()
    result = apply_token_budget(vit, TokenBudgetConfig(budget=budget, layer=0))
    assert not result.changed and result.kept == result.total == PATCHES
    with torch.no_grad():
        torch.testing.assert_close(result.module(images(4)), vit(images(4)), rtol=0, atol=1e-5)


def test_leaves_the_input_module_untouched():
    vit = tiny_vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    result = apply_token_budget(vit, TokenBudgetConfig(budget=0.5))
    with torch.no_grad():
        result.module(images(1))
    assert result.module.encoder is not vit
    for k, v in vit.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("layer,budget,fuse", [(0, 0.5, True), (1, 0.25, False), (1, 5, True)])
def test_keeps_the_top_k_cls_attended_patches_in_order(layer, budget, fuse):
    vit = tiny_vit()
    result = apply_token_budget(vit, TokenBudgetConfig(budget=budget, layer=layer, fuse_dropped=fuse, score="cls"))
    k = result.kept
    assert k == TokenBudgetConfig(budget=budget).kept(PATCHES) and result.tokens_after == 1 + k + fuse
    x = images(1, seed=3)
    probs, out = reference_probs(vit, layer, (x,))
    cls_attn = probs[:, 0, 1:].mean(0)  # the CLS query over the patches, mean over heads
    order = torch.argsort(cls_attn, descending=True, stable=True)
    assert cls_attn[order[k - 1]] > cls_attn[order[k]]  # no tie at the boundary on this input
    chosen = torch.sort(order[:k]).values
    later = capture(result.module.encoder.layers[layer + 1], "in")
    with torch.no_grad():
        result.module(x)
    seen = later[0][0][0]
    assert seen.shape == (1 + k + fuse, 32)
    torch.testing.assert_close(seen[0], out[0], rtol=1e-5, atol=1e-5)  # CLS first
    torch.testing.assert_close(seen[1:1 + k], out[1 + chosen], rtol=1e-5, atol=1e-5)
    if fuse:  # EViT: CLS-attention-weighted mean of the dropped patches
        dropped = torch.sort(order[k:]).values
        w = cls_attn[dropped] / cls_attn[dropped].sum()
        torch.testing.assert_close(seen[-1], w @ out[1 + dropped], rtol=1e-5, atol=1e-5)


def test_received_score_and_batches():
    vit = tiny_vit()
    result = apply_token_budget(vit, TokenBudgetConfig(budget=0.5, layer=0, score="received", fuse_dropped=False))
    x = images(3, seed=5)
    probs, out = reference_probs(vit, 0, (x[:1],))
    chosen = torch.sort(torch.argsort(probs[:, :, 1:].mean((0, 1)), descending=True)[:8]).values
    later = capture(result.module.encoder.layers[1], "in")
    with torch.no_grad():
        batched = result.module(x)
        one_by_one = torch.cat([result.module(x[i:i + 1]) for i in range(3)])
    torch.testing.assert_close(later[0][0][0, 1:], out[1 + chosen], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_graph_is_static_and_runs_whole_on_the_htp(tmp_path):
    from edgec.calibration.plan import PrecisionPlan
    from edgec.exporters.onnx_float import export_onnx
    from edgec.exporters.onnx_qdq import quantize_qdq
    from edgec.runtimes import ort_cpu, qnn_htp

    vit = tiny_vit()
    result = apply_token_budget(vit, TokenBudgetConfig(budget=0.5, layer=0))
    feeds = [{"pixel_values": images(1, seed=s).numpy()} for s in range(8)]
    float_path = tmp_path / "float.onnx"
    export_onnx(result.module, feeds[0], ["logits"], float_path)
    model = onnx.shape_inference.infer_shapes(onnx.load(float_path))
    ops = {n.op_type for n in model.graph.node}
    assert {"TopK", "Gather"} <= ops
    for v in [*model.graph.value_info, *model.graph.output]:  # every shape is a fixed number
        assert all(d.HasField("dim_value") for d in v.type.tensor_type.shape.dim), v.name
    later = [v for v in model.graph.value_info if v.name.startswith("/layers.1/")]
    token_dims = {v.type.tensor_type.shape.dim[1].dim_value for v in later
                  if len(v.type.tensor_type.shape.dim) == 3 and v.type.tensor_type.shape.dim[2].dim_value == 32}
    assert token_dims == {1 + 8 + 1}  # CLS + K kept + fused
    with torch.no_grad():
        ref = result.module(torch.from_numpy(feeds[1]["pixel_values"])).numpy()
    np.testing.assert_allclose(ort_cpu.load(float_path, threads=1).run(feeds[1])[0], ref, rtol=1e-4, atol=1e-4)

    qdq_path = tmp_path / "qdq.onnx"
    quantize_qdq(float_path, qdq_path, feeds, PrecisionPlan())
    cov = qnn_htp.coverage(qdq_path)
    assert cov.fraction == 1.0 and cov.runs_fully and not cov.unsupported, cov.to_dict()


# --- text -------------------------------------------------------------------------------------

def test_text_full_budget_changes_nothing():
    bert = tiny_bert()
    result = apply_token_budget(bert, TokenBudgetConfig(budget=1.0, layer=0), SEQ)
    ids, mask = sentence(11)
    with torch.no_grad():
        torch.testing.assert_close(result.module(ids, mask), bert(ids, mask), rtol=0, atol=1e-5)


@pytest.mark.parametrize("fuse,score", [(True, "received"), (False, "received"), (True, "cls")])
def test_text_keeps_specials_and_the_most_attended_tokens(fuse, score):
    bert = tiny_bert()
    result = apply_token_budget(bert, TokenBudgetConfig(budget=0.25, layer=0, fuse_dropped=fuse, score=score), SEQ)
    k, n = result.kept, 12
    assert (k, result.total, result.tokens_after) == (4, SEQ - 2, 2 + 4 + fuse)
    ids, mask = sentence(n, seed=1)
    probs, out = reference_probs(bert, 0, (ids, mask), mask[0])
    if score == "received":
        received = probs.mean(0)[:n, :n].mean(0)  # mean over heads and the real queries
    else:
        received = probs.mean(0)[0, :n]  # the [CLS] query, mean over heads
    inner = torch.argsort(received[1:n - 1], descending=True)[:k] + 1  # never the specials
    chosen = torch.sort(torch.cat([torch.tensor([0, n - 1]), inner])).values
    later = capture(result.module.encoder.layers[1], "in")
    with torch.no_grad():
        hidden, kept_mask = result.module(ids, mask)
    assert hidden.shape == (1, 2 + k + fuse, 32) and kept_mask.shape == (1, 2 + k + fuse)
    assert kept_mask.tolist() == [[1.0] * (2 + k + fuse)]
    x_in, mask_add = later[0]
    torch.testing.assert_close(x_in[0, :2 + k], out[chosen], rtol=1e-5, atol=1e-5)
    if fuse:
        dropped = torch.tensor([i for i in range(n) if i not in chosen.tolist()])
        w = received[dropped] / received[dropped].sum()
        torch.testing.assert_close(x_in[0, -1], w @ out[dropped], rtol=1e-5, atol=1e-5)
    assert not mask_add.any()


def test_text_short_sentence_keeps_every_real_token_and_masks_padding():
    bert = tiny_bert()
    result = apply_token_budget(bert, TokenBudgetConfig(budget=0.5, layer=0), SEQ)  # 2 + 7 (+1) rows
    ids, mask = sentence(5, seed=2)
    later = capture(result.module.encoder.layers[1], "in")
    with torch.no_grad():
        hidden, kept_mask = result.module(ids, mask)
        full = bert(ids, mask)
    # all 5 real tokens first, then padding; nothing real was dropped, so the fused row is masked
    assert kept_mask.tolist() == [[1.0] * 5 + [0.0] * 4 + [0.0]]
    _, out = reference_probs(bert, 0, (ids, mask), mask[0])
    torch.testing.assert_close(later[0][0][0, :5], out[:5], rtol=1e-5, atol=1e-5)
    # later blocks see the same real tokens, so the real rows match the full model
    torch.testing.assert_close(hidden[0, :5], full[0, :5], rtol=1e-4, atol=1e-4)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_text_qdq_runs_whole_on_the_htp_and_masks_an_empty_fused_row(tmp_path):
    from edgec.calibration.plan import PrecisionPlan
    from edgec.exporters.onnx_float import export_onnx
    from edgec.exporters.onnx_qdq import quantize_qdq
    from edgec.runtimes import qnn_htp

    result = apply_token_budget(tiny_bert(), TokenBudgetConfig(budget=0.5, layer=0), SEQ)  # 2 + 7 + 1 rows
    feeds = [dict(zip(("input_ids", "attention_mask"), (t.numpy() for t in sentence(n, seed=n))))
             for n in (9, 16, 12, 5, 16, 14)]
    float_path, qdq_path = tmp_path / "float.onnx", tmp_path / "qdq.onnx"
    export_onnx(result.module, feeds[0], ["last_hidden_state", "kept_mask"], float_path)
    quantize_qdq(float_path, qdq_path, feeds, PrecisionPlan())
    cov = qnn_htp.coverage(qdq_path)
    assert cov.fraction == 1.0 and cov.runs_fully, cov.to_dict()
    htp = qnn_htp.load(qdq_path)
    # 9 real tokens fit in 2 + 7 rows: nothing real is dropped and the fused row stays masked
    np.testing.assert_allclose(htp.run(feeds[0])[1], [[1.0] * 9 + [0.0]], atol=1e-3)
    np.testing.assert_allclose(htp.run(feeds[1])[1], [[1.0] * 10], atol=1e-3)
