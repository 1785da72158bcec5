"""Smoothing: the same function in float, flatter activations at every smoothed site."""

import pytest
import torch
from helpers import randomise_norms

from edgec.models.encoder import TextEncoder, VisionEncoder
from edgec.passes.smooth import SmoothConfig, smooth

LAYERS = [{"heads": 4, "head_dim": 8, "intermediate": 64}, {"heads": 2, "head_dim": 8, "intermediate": 48}]
OUTLIER = 5  # the planted channel


def tiny_vit() -> VisionEncoder:
    torch.manual_seed(0)
    vit = VisionEncoder(channels=1, patch=2, image_size=8, hidden=32, layers=LAYERS, act="gelu",
                        eps=1e-6, num_labels=10).eval()
    randomise_norms(vit)
    with torch.no_grad():
        vit.pos.normal_(0.0, 0.5)
        vit.layers[0].ln1.weight[OUTLIER] *= 50  # q/k/v of layer 0 see one huge input channel
        vit.layers[1].ln2.weight[OUTLIER] *= 50  # and so does fc1 of layer 1
    return vit


def tiny_bert() -> TextEncoder:
    torch.manual_seed(0)
    bert = TextEncoder(vocab=100, max_pos=32, type_vocab=2, hidden=32, layers=LAYERS, act="gelu",
                       eps=1e-12).eval()
    randomise_norms(bert)
    with torch.no_grad():
        bert.layers[0].attn.v.weight[OUTLIER] *= 50  # one context channel of layer 0 is an outlier
    return bert


def vit_inputs(n: int, seed: int) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(2, 1, 8, 8, generator=g),) for _ in range(n)]


def bert_inputs(n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 100, (2, 12), generator=g)
        mask = (torch.arange(12) < torch.randint(3, 13, (2, 1), generator=g)).to(torch.int64)
        out.append((ids.masked_fill(mask == 0, 0), mask))
    return out


def input_absmax(model: torch.nn.Module, linear: torch.nn.Linear, inputs) -> float:
    seen = []
    handle = linear.register_forward_pre_hook(lambda _m, a: seen.append(a[0].abs().max().item()))
    with torch.no_grad():
        for x in inputs:
            model(*x)
    handle.remove()
    return max(seen)


def assert_equivalent(a: torch.nn.Module, b: torch.nn.Module, inputs) -> None:
    with torch.no_grad():
        for x in inputs:
            ref, out = a(*x), b(*x)
            rel = (out - ref).abs().max() / ref.abs().max()
            assert rel < 1e-4, f"relative error {rel:.2e}"


@pytest.mark.parametrize("alpha", [0.5, 0.8, 1.0])
def test_vit_is_equivalent_in_float(alpha):
    vit = tiny_vit()
    res = smooth(vit, vit_inputs(4, seed=0), SmoothConfig(alpha=alpha))
    assert res.changed
    assert_equivalent(vit, res.module, vit_inputs(3, seed=1))


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_bert_is_equivalent_in_float(alpha):
    bert = tiny_bert()
    res = smooth(bert, bert_inputs(4, seed=0), SmoothConfig(alpha=alpha))
    assert [(s.layer, s.site) for s in res.smoothed] == [(0, "vo"), (1, "vo")]
    assert not torch.allclose(res.module.layers[0].attn.v.weight, bert.layers[0].attn.v.weight)
    assert_equivalent(bert, res.module, bert_inputs(3, seed=1))


def test_vit_reports_every_site_and_the_outliers_shrink():
    vit, calib = tiny_vit(), vit_inputs(4, seed=0)
    res = smooth(vit, calib, SmoothConfig(alpha=0.5))
    assert [(s.layer, s.site) for s in res.smoothed] == [(i, site) for i in range(2) for site in ("ln1", "ln2", "vo")]
    assert res.skipped == []
    sites = {(s.layer, s.site): s for s in res.smoothed}
    for (layer, site), linear in [((0, "ln1"), "attn.q"), ((1, "ln2"), "fc1")]:
        before = input_absmax(vit, vit.layers[layer].get_submodule(linear), calib)
        after = input_absmax(res.module, res.module.layers[layer].get_submodule(linear), calib)
        assert before > 20 and after < before / 5, (layer, site, before, after)
        # the report measures the same thing
        assert sites[(layer, site)].act_max_before == pytest.approx(before, rel=1e-5)
        assert sites[(layer, site)].act_max_after == pytest.approx(after, rel=1e-3)
        assert sites[(layer, site)].scale_max > 5 * sites[(layer, site)].scale_min  # the outlier channel stands out


def test_bert_smooths_only_v_to_o_and_says_why_not_the_norms():
    bert, calib = tiny_bert(), bert_inputs(4, seed=0)
    res = smooth(bert, calib, SmoothConfig(alpha=0.5))
    assert [(s.layer, s.site) for s in res.smoothed] == [(0, "vo"), (1, "vo")]
    assert [(s.layer, s.site) for s in res.skipped] == [(i, site) for i in range(2) for site in ("ln1", "ln2")]
    assert all("post-LN" in s.reason for s in res.skipped)
    o_before = input_absmax(bert, bert.layers[0].attn.o, calib)
    o_after = input_absmax(res.module, res.module.layers[0].attn.o, calib)
    assert o_after < o_before / 3
    # post-LN: the residual stream is untouched
    for name in ("ln1", "ln2"):
        torch.testing.assert_close(getattr(res.module.layers[0], name).weight, getattr(bert.layers[0], name).weight)
    assert any("skipped" in line for line in res.explain())


def test_sites_can_be_chosen():
    vit = tiny_vit()
    res = smooth(vit, vit_inputs(2, seed=0), SmoothConfig(sites=("vo",)))
    assert {s.site for s in res.smoothed} == {"vo"}
    torch.testing.assert_close(res.module.layers[0].ln1.weight, vit.layers[0].ln1.weight)


def test_input_module_is_unchanged():
    vit = tiny_vit()
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    res = smooth(vit, vit_inputs(2, seed=0), SmoothConfig())
    assert res.module is not vit
    for k, v in vit.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not torch.equal(res.module.layers[0].ln1.weight, vit.layers[0].ln1.weight)
    assert not any(m._forward_pre_hooks for m in vit.modules())
    assert not any(m._forward_pre_hooks for m in res.module.modules())


@pytest.mark.parametrize("alpha", [0.0, -0.1, 1.5, True, "0.5"])
def test_alpha_out_of_range_raises(alpha):
    with pytest.raises(ValueError, match="alpha"):
        SmoothConfig(alpha=alpha)


def test_unknown_site_raises():
    with pytest.raises(ValueError, match="sites"):
        SmoothConfig(sites=("ln3",))


def test_config_round_trips():
    for c in (SmoothConfig(), SmoothConfig(alpha=0.8, sites=("vo", "ln1"))):
        assert SmoothConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="unknown"):
        SmoothConfig.from_dict({"alpha": 0.5, "beta": 1})


def test_config_is_keyword_only_and_frozen():
    with pytest.raises(TypeError):
        SmoothConfig(0.5)
    with pytest.raises(AttributeError):
        SmoothConfig().alpha = 0.7
