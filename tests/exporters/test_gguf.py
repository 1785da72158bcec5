"""export_gguf: llama.cpp's own graph, reading edgec's GGUF, reproduces transformers' greedy tokens.

The file is checked with llama.cpp's own readers and no edgec code (the `gguf`
package's reader, llama-cpp-python's `Llama`), and through edgec's llama-cpp
runtime. Seeded checkpoints of every family stand in for real ones.
"""

import sys

import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer

from edgec.calibration import prose
from edgec.errors import BackendError, ExportError, InputError
from edgec.exporters.gguf import export_gguf
from edgec.models.hf_decoder import from_hf_decoder
from edgec.runtimes.llama_cpp import load_lm
from edgec.runtimes.llm import Sampling
from edgec.zoo.seeded import seeded_decoder_dir
from helpers import hf_greedy

llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp is not installed: pip install -e '.[llama]'")
gguf = pytest.importorskip("gguf", reason="gguf is not installed: pip install -e '.[llama]'")

PROMPTS = ["The river was", "Once upon a time, in a quiet town"]
NEW = 32
# family -> seeded overrides: 1-2 layers with each family's features, in the shape llama.cpp's graph has them
FAMILIES = {
    "llama": {}, "qwen2": {}, "mistral": {}, "qwen3": {}, "granite": {}, "olmo2": {},
    "llama3": {},  # llama3 RoPE scaling: per-frequency factors in rope_freqs
    "gemma2": {"tie_word_embeddings": True},  # llama.cpp's gemma2 reuses the token table as the output layer
    "gemma3_text": {},
    "phi3": {"original_max_position_embeddings": 128, "rope_parameters": {
        "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.1] * 4, "long_factor": [2.0] * 8,
        "original_max_position_embeddings": 128}},  # 128 positions on the short factors
    "smollm3": {"num_hidden_layers": 4, "no_rope_layers": [1, 1, 1, 0]},  # llama.cpp: NoPE on every 4th layer
}
ARCH = {"llama": "llama", "llama3": "llama", "qwen2": "qwen2", "mistral": "llama", "qwen3": "qwen3",
        "granite": "granite", "olmo2": "olmo2", "gemma2": "gemma2", "gemma3_text": "gemma3", "phi3": "phi3",
        "smollm3": "smollm3"}


class Models:
    """Seeded checkpoints and their F32 GGUFs, built on first use and kept for the module."""

    def __init__(self, root):
        self.root, self.cache = root, {}

    def get(self, kind: str):
        if kind not in self.cache:
            overrides = {"num_hidden_layers": 2, **FAMILIES[kind]}
            src = seeded_decoder_dir(self.root / kind, kind, **overrides)
            hf = transformers.AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager").eval()
            module = from_hf_decoder(hf)
            artifact = export_gguf(module, hf.config, src, self.root / f"{kind}-f32.gguf", "F32")
            self.cache[kind] = src, hf, module, artifact
        return self.cache[kind]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Models(tmp_path_factory.mktemp("gguf"))


def _ids(src, text: str) -> list[int]:
    return Tokenizer.from_file(str(src / "tokenizer.json")).encode(text).ids  # BOS included


def _session(src, hf, path):
    return load_lm(path, src / "tokenizer.json", {"eos_token_ids": [hf.config.eos_token_id]})


@pytest.mark.parametrize("kind", list(FAMILIES))
def test_f32_greedy_matches_transformers(models, kind):
    src, hf, _, artifact = models.get(kind)
    assert artifact.format == "gguf" and artifact.runtime == "llama-cpp"
    assert artifact.manifest["engine"]["architecture"] == ARCH[kind]
    session = _session(src, hf, artifact.path)
    for prompt in PROMPTS:
        ids = _ids(src, prompt)
        got = session.generate(ids, NEW, Sampling())
        assert got.tokens == hf_greedy(hf, ids, NEW), prompt
        assert got.prompt_tokens == len(ids) and got.first_token_s > 0


def test_scores_match_transformers(models):
    src, hf, _, artifact = models.get("qwen2")
    ids = np.random.default_rng(0).integers(3, hf.config.vocab_size, 100)
    got = _session(src, hf, artifact.path).score(ids)
    with torch.no_grad():
        want = hf(torch.tensor([ids.tolist()])).logits[0].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max(), rtol=0)


@pytest.mark.parametrize("quant,agree", [("Q8_0", 0.9), ("Q4_0", 0.5)])
def test_quantized_files_load_and_generate(models, tmp_path, quant, agree):
    src, hf, module, f32 = models.get("llama")
    artifact = export_gguf(module, hf.config, src, tmp_path / "model.gguf", quant)
    reader = gguf.GGUFReader(artifact.path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == quant and types["blk.1.ffn_down.weight"] == quant
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert artifact.path.stat().st_size < 0.45 * f32.path.stat().st_size
    session = _session(src, hf, artifact.path)
    ids = np.random.default_rng(1).integers(3, hf.config.vocab_size, 64)
    with torch.no_grad():
        want = hf(torch.tensor([ids.tolist()])).logits[0].numpy()
    assert (session.score(ids).argmax(-1) == want.argmax(-1)).mean() >= agree
    assert len(session.generate(_ids(src, PROMPTS[0]), 8, Sampling()).tokens) == 8


def test_gguf_reader_reads_the_metadata_back(models):
    """The format's own reader, no edgec code: hyperparameters, tokenizer and tensors as llama.cpp reads them."""
    src, hf, _, artifact = models.get("qwen2")
    reader = gguf.GGUFReader(artifact.path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    c = hf.config
    assert field("general.architecture") == "qwen2"
    assert field("qwen2.block_count") == c.num_hidden_layers
    assert field("qwen2.context_length") == c.max_position_embeddings
    assert field("qwen2.embedding_length") == c.hidden_size
    assert field("qwen2.feed_forward_length") == c.intermediate_size
    assert field("qwen2.attention.head_count") == c.num_attention_heads
    assert field("qwen2.attention.head_count_kv") == c.num_key_value_heads
    assert field("qwen2.rope.freq_base") == pytest.approx(c.rope_parameters["rope_theta"])
    assert field("qwen2.attention.layer_norm_rms_epsilon") == pytest.approx(c.rms_norm_eps)
    assert field("tokenizer.ggml.model") == "gpt2" and field("tokenizer.ggml.pre") == "gpt-2"
    assert (field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id")) == (0, 1)
    assert field("tokenizer.ggml.add_bos_token") is True
    tokens = field("tokenizer.ggml.tokens")
    vocab = Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab()
    assert len(tokens) == c.vocab_size and all(tokens[i] == t for t, i in vocab.items())
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}  # ggml order: [in, out]
    assert shapes["token_embd.weight"] == (c.hidden_size, c.vocab_size)
    assert shapes["blk.0.attn_k.weight"] == (c.hidden_size, c.num_key_value_heads * 16)
    assert "blk.0.attn_q.bias" in shapes and "output.weight" in shapes  # untied: its own output layer


def test_llama_cpp_python_runs_it_alone(models):
    """llama-cpp-python's own Llama class, no edgec code: it tokenizes like `tokenizers` and decodes
    transformers' greedy tokens."""
    src, hf, _, artifact = models.get("llama")
    llm = llama_cpp.Llama(model_path=str(artifact.path), n_ctx=256, n_threads=2, verbose=False)
    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    for text in PROMPTS:
        assert llm.tokenize(text.encode(), add_bos=True) == tokenizer.encode(text).ids
    ids = tokenizer.encode(PROMPTS[1]).ids
    got = []
    for token in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        got.append(token)
        if len(got) == 8:
            break
    assert got == hf_greedy(hf, ids, 8)


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_llama3_and_qwen2_pre_tokenizers_split_like_tokenizers(models, tmp_path, pre):
    """A byte-level BPE trained here with Llama 3's (or Qwen2's) split regex: llama.cpp's pre-tokenizer of
    that name gives the same ids."""
    import shutil

    from tokenizers import Regex, decoders, pre_tokenizers, processors, trainers
    from tokenizers import models as bpe

    from edgec.exporters.gguf_vocab import SPLITS

    regex, ignore_merges = next((r, ignore) for r, (name, ignore) in SPLITS.items() if name == pre)
    tok = Tokenizer(bpe.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(prose.split("calib")[:8], trainers.BpeTrainer(
        vocab_size=512, special_tokens=["<s>", "</s>", "<pad>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    src, hf, module, _ = models.get("llama")
    shutil.copytree(src, tmp_path / "src")
    tok.save(str(tmp_path / "src" / "tokenizer.json"))
    artifact = export_gguf(module, hf.config, tmp_path / "src", tmp_path / "model.gguf", "F32")
    assert gguf.GGUFReader(artifact.path).fields["tokenizer.ggml.pre"].contents() == pre
    llm = llama_cpp.Llama(model_path=str(artifact.path), vocab_only=True, verbose=False)
    for text in [*prose.split("heldout")[:2], "Numbers 12,345 and 2024\n\n\tend.", "é ü — “quotes” 'TIS it's"]:
        assert llm.tokenize(text.encode(), add_bos=True) == tok.encode(text).ids


@pytest.fixture(scope="module")
def tinylm(tmp_path_factory):
    """The zoo's trained Llama: its own 4096-token tokenizer, F32 and Q4_0 files."""
    from edgec.toolchain.zoo import ZOO

    src = ZOO["tinylm"].locate()
    hf = transformers.AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager").eval()
    module, out = from_hf_decoder(hf), tmp_path_factory.mktemp("tinylm")
    return src, hf, {q: export_gguf(module, hf.config, src, out / f"{q}.gguf", q) for q in ("F16", "Q4_0", "Q4_K_M")}


def test_embedded_tokenizer_tokenizes_like_tokenizers(tinylm):
    src, _, files = tinylm
    llm = llama_cpp.Llama(model_path=str(files["Q4_0"].path), vocab_only=True, verbose=False)
    tokenizer = Tokenizer.from_file(str(src / "tokenizer.json"))
    texts = prose.split("heldout")[:5]
    texts += ["Numbers 12,345 and  spaces\n\n\tend.", "é ü — “quotes” 'tis", "trailing space "]
    for text in texts:
        want = tokenizer.encode(text).ids
        assert llm.tokenize(text.encode(), add_bos=True) == want
        assert llm.detokenize(want[1:]).decode() == tokenizer.decode(want)


def test_trained_model_keeps_the_float_greedy_tokens(tinylm):
    """As the other engines' files are held: F16 reproduces transformers' greedy tokens, and most of them
    survive Q4_0 and Q4_K_M (measured here: 84% and 100% of 5 x 32 tokens before the first difference)."""
    src, hf, files = tinylm
    sessions = {q: _session(src, hf, a.path) for q, a in files.items()}
    assert {a.manifest["engine"]["architecture"] for a in files.values()} == {"llama"}
    kept = dict.fromkeys(files, 0)
    texts = prose.split("heldout")[:3]
    for text in texts:
        ids = _ids(src, text)[:32]
        want = hf_greedy(hf, ids, NEW)
        for q, session in sessions.items():
            got = session.generate(ids, NEW, Sampling()).tokens
            kept[q] += next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), len(want))
    assert kept["F16"] == NEW * len(texts)
    assert kept["Q4_0"] >= 0.7 * NEW * len(texts) and kept["Q4_K_M"] >= 0.7 * NEW * len(texts), kept
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(files["Q4_K_M"].path).tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.0.attn_norm.weight"] == "F32"


def test_gguf_dump_reads_the_file(tinylm):
    """gguf's own command-line dump, in a process of its own."""
    import subprocess

    _, _, files = tinylm
    out = subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_dump", "--no-tensors", str(files["Q4_0"].path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "general.architecture = 'llama'" in out.stdout and "tokenizer.ggml.pre = 'gpt-2'" in out.stdout
    assert "general.file_type = 2" in out.stdout  # MOSTLY_Q4_0


def _torch_greedy(module, ids: list[int], n: int) -> list[int]:
    ids = list(ids)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(module(torch.tensor([ids]))[0, -1].argmax()))
    return ids[-n:]


def _prune(module, ratio=0.4, method="flap"):
    """Any MLP width (mlp_block=1): the per-layer arrays and llama.cpp's fallbacks for rows that are no
    multiple of its blocks are what these tests read."""
    from edgec.passes.prune import PruneConfig, prune

    calib = [(torch.randint(3, module.embed.num_embeddings, (1, 48), generator=torch.Generator().manual_seed(s)),)
             for s in range(4)]
    return prune(module, calib, PruneConfig(ratio=ratio, method=method, steps=1, mlp_block=1)).module


def test_pruned_model_is_written_as_deci(models, tmp_path):
    """Per-layer head counts and FFN widths: llama.cpp's deci architecture builds its tensors from the
    per-layer arrays; Qwen2's q/k/v biases and FLAP's compensation biases (o, down) have tensors there."""
    src, hf, module, _ = models.get("qwen2")
    pruned = _prune(module)
    shapes = [(b.attn.heads, b.attn.kv_heads, b.down.in_features) for b in pruned.layers]
    assert len({s[0] for s in shapes}) > 1 and len({s[2] for s in shapes}) > 1, shapes
    artifact = export_gguf(pruned, hf.config, src, tmp_path / "pruned.gguf", "F32")
    assert artifact.manifest["engine"]["architecture"] == "deci"
    reader = gguf.GGUFReader(artifact.path)
    for key, i in (("head_count", 0), ("head_count_kv", 1)):
        assert list(reader.fields[f"deci.attention.{key}"].contents()) == [s[i] for s in shapes]
    assert list(reader.fields["deci.feed_forward_length"].contents()) == [s[2] for s in shapes]
    assert {"blk.1.attn_q.bias", "blk.1.attn_output.bias", "blk.1.ffn_down.bias"} <= {t.name for t in reader.tensors}
    session = _session(src, hf, artifact.path)
    for prompt in PROMPTS:
        ids = _ids(src, prompt)
        assert session.generate(ids, NEW, Sampling()).tokens == _torch_greedy(pruned, ids, NEW)
    q4 = export_gguf(pruned, hf.config, src, tmp_path / "pruned-q4.gguf", "Q4_0")  # odd widths: llama.cpp's fallbacks
    assert len(_session(src, hf, q4.path).generate(_ids(src, PROMPTS[0]), 8, Sampling()).tokens) == 8


def test_pruned_tied_qwen3_is_written_as_openelm(tmp_path):
    """Per-head q/k norms and per-layer shapes: llama.cpp's openelm architecture (tied output, no biases,
    so magnitude pruning, which adds no compensation biases)."""
    src = seeded_decoder_dir(tmp_path / "qwen3", "qwen3", num_hidden_layers=2, tie_word_embeddings=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    pruned = _prune(from_hf_decoder(hf), ratio=0.5, method="magnitude")
    assert len({b.attn.heads for b in pruned.layers}) > 1
    artifact = export_gguf(pruned, hf.config, src, tmp_path / "pruned.gguf", "F32")
    assert artifact.manifest["engine"]["architecture"] == "openelm"
    ids = np.random.default_rng(0).integers(3, hf.config.vocab_size, 60)
    got = _session(src, hf, artifact.path).score(ids)
    with torch.no_grad():
        want = pruned(torch.tensor([ids.tolist()]))[0].numpy()
    np.testing.assert_allclose(got, want, atol=5e-3 * np.abs(want).max(), rtol=0)
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_pruned_qwen3_is_refused_in_one_line(models, tmp_path):
    src, hf, module, _ = models.get("qwen3")
    with pytest.raises(ExportError) as e:
        export_gguf(_prune(module), hf.config, src, tmp_path / "pruned.gguf", "F32")
    message = str(e.value)
    assert "\n" not in message and "pruned" in message
    assert not (tmp_path / "pruned.gguf").exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind,overrides,words", [
    ("smollm3", {"num_hidden_layers": 2, "no_rope_layers": [1, 0]}, ["without RoPE", "every 4th layer"]),
    ("gemma2", {"num_hidden_layers": 1}, ["token table"]),
    ("mistral", {"num_hidden_layers": 1, "sliding_window": 16}, ["sliding-window", "16 tokens"]),
])
def test_what_llama_cpp_cannot_run_is_refused_in_one_line(tmp_path, kind, overrides, words):
    src = seeded_decoder_dir(tmp_path / kind, kind, **overrides)
    hf = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    with pytest.raises(ExportError) as e:
        export_gguf(from_hf_decoder(hf), hf.config, src, tmp_path / "out" / "model.gguf")
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_unknown_quantization_is_refused(models, tmp_path):
    src, hf, module, _ = models.get("llama")
    with pytest.raises(InputError, match="unknown GGUF quantization 'Q3_X'"):
        export_gguf(module, hf.config, src, tmp_path / "model.gguf", "Q3_X")


@pytest.mark.parametrize("package,quant", [("gguf", "F32"), ("llama_cpp", "Q4_0")])
def test_without_the_packages_one_line_says_how_to_install(models, tmp_path, monkeypatch, package, quant):
    src, hf, module, _ = models.get("llama")
    monkeypatch.setitem(sys.modules, package, None)  # importing it now raises ImportError
    with pytest.raises(BackendError) as e:
        export_gguf(module, hf.config, src, tmp_path / "model.gguf", quant)
    assert "\n" not in str(e.value) and "pip install -e '.[llama]'" in str(e.value)
    assert not list(tmp_path.iterdir())
