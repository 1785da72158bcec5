"""export_pte: float and int8 XNNPACK programs load and match eager."""

import numpy as np
import pytest
import torch

from edgec.errors import ExportError
from edgec.exporters.executorch import _lookup_only_embeddings, export_pte
from edgec.runtimes.executorch import load

VOCAB, SEQ = 50, 16


class TokenMLP(torch.nn.Module):
    """Embedding -> Linear -> GELU -> Linear with a residual LayerNorm; 256-wide so weights dominate."""

    def __init__(self, hidden: int = 256):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, hidden)
        self.up, self.down = torch.nn.Linear(hidden, hidden), torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden)

    def forward(self, ids):
        x = self.emb(ids)
        return self.norm(x + self.down(torch.nn.functional.gelu(self.up(x))))


class TokenAttention(torch.nn.Module):
    """Embedding -> one self-attention block (matmul, softmax, matmul) -> LayerNorm."""

    def __init__(self, hidden: int = 64, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.emb = torch.nn.Embedding(VOCAB, hidden)
        self.qkv, self.out = torch.nn.Linear(hidden, 3 * hidden), torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden)

    def forward(self, ids):
        x = self.emb(ids)
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / (c // self.heads) ** 0.5, dim=-1)
        return self.norm(x + self.out((att @ v).transpose(1, 2).reshape(b, t, c)))


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(seed))


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    """Each model exported float and int8 once, with an eager reference on an unseen input."""
    out, test_ids = tmp_path_factory.mktemp("pte"), _ids(2)
    result = {}
    for cls in (TokenMLP, TokenAttention):
        torch.manual_seed(0)
        model, example, name = cls(), (_ids(0),), cls.__name__
        pte = {"float": export_pte(model, example, out / f"{name}-float.pte", quantize=False),
               "int8": export_pte(model, example, out / f"{name}-int8.pte",
                                  calib_inputs=[example, (_ids(1),)])}
        with torch.no_grad():
            result[name] = pte, model.eval()(test_ids).numpy()
    return result, test_ids.numpy()


MODELS = ["TokenMLP", "TokenAttention"]


@pytest.mark.parametrize("name", MODELS)
def test_float_pte_matches_eager(programs, name):
    (pte, ref), ids = programs[0][name], programs[1]
    assert pte["float"].format == "pte" and pte["float"].runtime == "executorch"
    (got,) = load(pte["float"].path).run({"ids": ids})
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_int8_pte_close_to_eager(programs, name):
    (pte, ref), ids = programs[0][name], programs[1]
    (got,) = load(pte["int8"].path).run({"ids": ids})
    assert got.shape == ref.shape
    assert _cosine(got, ref) >= 0.99
    assert not np.allclose(got, ref, atol=1e-6)  # really quantized, not a float copy


def test_int8_pte_is_smaller_when_weights_dominate(programs):
    pte, _ = programs[0]["TokenMLP"]
    assert pte["int8"].bytes < 0.5 * pte["float"].bytes


def test_export_leaves_only_the_programs(programs):
    pte, _ = programs[0]["TokenMLP"]
    names = sorted(p.name for p in pte["float"].path.parent.iterdir())
    assert names == sorted(f"{m}-{k}.pte" for m in MODELS for k in ("float", "int8"))


def test_export_restores_training_mode(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Dropout(0.5)).train()
    export_pte(model, (torch.randn(1, 8),), tmp_path / "sub" / "m.pte", quantize=False)
    assert model.training
    assert (tmp_path / "sub" / "m.pte").is_file()


class BigVocab(torch.nn.Module):
    """A 4000 x 64 word table dwarfs the rest; the position table is sliced by `.weight[...]`."""

    def __init__(self, vocab: int = 4000, hidden: int = 64):
        super().__init__()
        self.word = torch.nn.Embedding(vocab, hidden)
        self.pos = torch.nn.Embedding(SEQ, hidden)
        self.proj = torch.nn.Linear(hidden, hidden)
        self.norm = torch.nn.LayerNorm(hidden)

    def forward(self, ids):
        x = self.norm(self.word(ids) + self.pos.weight[:ids.shape[1]])
        return x + self.proj(x)


def _vocab_ids(seed: int, vocab: int = 4000) -> torch.Tensor:
    return torch.randint(0, vocab, (1, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory):
    """BigVocab exported float and int8, its weights before export, and an eager reference."""
    out, test_ids = tmp_path_factory.mktemp("vocab"), _vocab_ids(2)
    torch.manual_seed(0)
    model, example = BigVocab().eval(), (_vocab_ids(0),)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pte = {"float": export_pte(model, example, out / "float.pte", quantize=False),
           "int8": export_pte(model, example, out / "int8.pte")}
    with torch.no_grad():
        ref = model(test_ids).numpy()
    return model, before, pte, ref, test_ids.numpy()


def test_int8_embedding_table_shrinks_the_program(big_vocab):
    _, _, pte, _, _ = big_vocab
    assert pte["int8"].bytes < 0.35 * pte["float"].bytes


def test_int8_embedding_close_to_eager(big_vocab):
    _, _, pte, ref, ids = big_vocab
    (got,) = load(pte["int8"].path).run({"ids": ids})
    assert got.shape == ref.shape
    assert _cosine(got, ref) >= 0.99
    assert not np.allclose(got, ref, atol=1e-6)


def test_int8_export_leaves_the_module_float(big_vocab):
    model, before, _, _, _ = big_vocab
    assert type(model.word) is torch.nn.Embedding and model.word.weight.dtype == torch.float32
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


class SharedTables(torch.nn.Module):
    """Lookups through a nested table, a sliced table, a table tied to the output layer, and F.embedding."""

    def __init__(self, vocab: int = 100, hidden: int = 16):
        super().__init__()
        self.inner = torch.nn.ModuleList([torch.nn.Embedding(vocab, hidden)])
        self.pos = torch.nn.Embedding(SEQ, hidden)
        self.tied = torch.nn.Embedding(vocab, hidden)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        self.head.weight = self.tied.weight
        self.raw = torch.nn.Embedding(vocab, hidden)

    def forward(self, ids):
        x = self.inner[0](ids) + self.pos.weight[:ids.shape[1]] + self.tied(ids)
        return self.head(x + torch.nn.functional.embedding(ids, self.raw.weight))


def test_only_tables_read_by_their_own_lookup_are_quantized():
    model, ids = SharedTables().eval(), (_vocab_ids(0, vocab=100),)
    program = torch.export.export(model, ids)
    assert _lookup_only_embeddings(model, program) == ["inner.0"]


def test_int8_export_with_shared_tables_matches_eager(tmp_path):
    torch.manual_seed(0)
    model, ids = SharedTables().eval(), _vocab_ids(3, vocab=100)
    pte = export_pte(model, (_vocab_ids(0, vocab=100),), tmp_path / "m.pte")
    (got,) = load(pte.path).run({"ids": ids.numpy()})
    with torch.no_grad():
        assert _cosine(got, model(ids).numpy()) >= 0.99


class DataDependent(torch.nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


def test_untraceable_module_raises_export_error(tmp_path):
    with pytest.raises(ExportError, match="torch.export failed on DataDependent"):
        export_pte(DataDependent(), (torch.randn(1, 4),), tmp_path / "m.pte")
    assert list(tmp_path.iterdir()) == []


def test_empty_calibration_set_raises(tmp_path):
    with pytest.raises(ExportError, match="calib_inputs is empty"):
        export_pte(torch.nn.Linear(4, 4), (torch.randn(1, 4),), tmp_path / "m.pte", calib_inputs=[])


def test_text_token_budget_lowers_and_matches_eager(tmp_path):
    """A data-dependent Gather between post-LN blocks once made XNNPACK's partition cyclic."""
    from edgec.models.encoder import TextEncoder
    from edgec.passes.token_budget import TokenBudgetConfig, apply_token_budget

    torch.manual_seed(0)
    enc = TextEncoder(vocab=100, max_pos=32, type_vocab=2, hidden=32, act="gelu", eps=1e-12,
                      layers=[{"heads": 4, "head_dim": 8, "intermediate": 64}] * 3).eval()
    model = apply_token_budget(enc, TokenBudgetConfig(budget=0.5, layer=1), 16).module
    ids = torch.randint(1, 100, (1, 16))
    mask = (torch.arange(16) < 11).to(torch.int64)[None]
    art = export_pte(model, (ids, mask), tmp_path / "tb.pte")
    hidden, kept = load(art.path).run({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    ref_hidden, ref_kept = model(ids, mask)
    np.testing.assert_array_equal(kept, ref_kept.numpy())
    rows = ref_kept.numpy()[0] > 0
    assert _cosine(hidden[0, rows].ravel(), ref_hidden.detach().numpy()[0, rows].ravel()) > 0.99
