"""SkipPadding: equal to TextEncoder on real rows, zero on padded rows, one ONNX graph for every length."""

import numpy as np
import pytest
import torch

from edgec.models.encoder import TextEncoder
from edgec.passes.skip_padding import SkipPadding
from edgec.runtimes import ort_cpu

SEQ = 16


def tiny_encoder() -> TextEncoder:
    torch.manual_seed(0)
    layers = [{"heads": 4, "head_dim": 8, "intermediate": 64}, {"heads": 2, "head_dim": 8, "intermediate": 48}]
    return TextEncoder(vocab=100, max_pos=32, type_vocab=2, hidden=32, layers=layers,
                       act="gelu", eps=1e-12).eval()


def inputs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded, as the tokenizer path encodes: n real tokens, then zeros."""
    ids = torch.randint(1, 100, (1, SEQ), generator=torch.Generator().manual_seed(seed))
    mask = (torch.arange(SEQ) < n).to(torch.int64)[None]
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("n", [1, 5, SEQ])
def test_equals_encoder_on_real_rows_and_zero_on_padding(n):
    enc = tiny_encoder()
    ids, mask = inputs(n)
    with torch.no_grad():
        ref, out = enc(ids, mask), SkipPadding(enc)(ids, mask)
    assert out.shape == ref.shape
    torch.testing.assert_close(out[0, :n], ref[0, :n], rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(out[0, n:]) == 0


def test_holds_for_a_mask_with_holes():
    enc = tiny_encoder()
    ids, _ = inputs(SEQ)
    mask = torch.tensor([[0, 1, 1, 0, 1, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0, 0]])
    with torch.no_grad():
        ref, out = enc(ids, mask), SkipPadding(enc)(ids, mask)
    real = mask[0].bool()
    torch.testing.assert_close(out[0, real], ref[0, real], rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(out[0, ~real]) == 0


def test_rejects_a_batch():
    ids, mask = inputs(5)
    with pytest.raises(ValueError, match="one sequence per call"):
        SkipPadding(tiny_encoder())(ids.repeat(2, 1), mask.repeat(2, 1))


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript:DeprecationWarning")
def test_one_onnx_graph_serves_every_length(tmp_path):
    enc = tiny_encoder()
    path = tmp_path / "skip.onnx"
    with torch.no_grad():
        torch.onnx.export(SkipPadding(enc), inputs(7), str(path), input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state"], opset_version=17, dynamo=False)
    session = ort_cpu.load(path, threads=1)
    for n in (3, 12):  # neither is the export example's length
        ids, mask = inputs(n, seed=n)
        (out,) = session.run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        with torch.no_grad():
            ref = enc(ids, mask).numpy()
        np.testing.assert_allclose(out[0, :n], ref[0, :n], rtol=1e-4, atol=1e-5)
        assert not out[0, n:].any()
