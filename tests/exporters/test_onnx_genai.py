"""export_genai + the ort-genai runtime: GenAI's own loop reproduces transformers' greedy tokens."""

import json

import numpy as np
import onnx
import pytest
import torch
import transformers
from tokenizers import Tokenizer

from edgec.errors import ExportError, InputError
from edgec.exporters.onnx_genai import export_genai, quantize_genai
from edgec.models.decoder import Decoder
from edgec.models.hf_decoder import from_hf_decoder
from edgec.runtimes.llm import Sampling, Utf8Stream
from edgec.runtimes.ort_genai import load_lm
from edgec.runtimes.tokens import TokenBytes
from edgec.zoo.seeded import seeded_decoder_dir

PROMPTS = ["The river was", "Once upon a time, in a quiet town"]
CASES = {"llama": ("llama", "fused"), "qwen2": ("qwen2", "fused"), "llama-plain": ("llama", "plain")}
KINDS = list(CASES)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Per case: the HF directory, the HF model and its float GenAI bundle (fused or plain graph)."""
    root, result = tmp_path_factory.mktemp("genai"), {}
    for case, (kind, graph) in CASES.items():
        src = seeded_decoder_dir(root / case, kind, num_hidden_layers=1)
        hf = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
        artifact = export_genai(from_hf_decoder(hf), hf.config, src, root / f"{case}-float", graph=graph)
        result[case] = src, hf, artifact
    return result


def _prompt_ids(src, prompt: str) -> list[int]:
    return Tokenizer.from_file(str(src / "tokenizer.json")).encode(prompt).ids  # BOS included


def _hf_logits(hf, ids) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor([list(ids)])).logits[0].numpy()


def _bundle_bytes(artifact) -> int:
    return sum(p.stat().st_size for p in artifact.path.parent.glob("model.onnx*"))


@pytest.mark.parametrize("kind", KINDS)
def test_bundle_layout(models, kind):
    src, hf, artifact = models[kind]
    bundle = artifact.path.parent
    assert artifact.format == "onnx" and artifact.runtimes == ("ort-genai",)
    assert {"genai_config.json", "model.onnx", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in bundle.iterdir()}
    config = json.loads((bundle / "genai_config.json").read_text())
    fused = CASES[kind][1] == "fused"
    assert artifact.manifest["engine"]["graph"] == CASES[kind][1]
    assert config["search"]["past_present_share_buffer"] is fused  # GroupQueryAttention writes in place
    assert ("position_ids" in config["model"]["decoder"]["inputs"]) is not fused
    ops = {n.op_type for n in onnx.load(artifact.path, load_external_data=False).graph.node}
    assert ({"GroupQueryAttention", "SkipSimplifiedLayerNormalization"} <= ops) is fused
    assert config["model"]["context_length"] == hf.config.max_position_embeddings
    assert config["model"]["decoder"]["num_key_value_heads"] == hf.config.num_key_value_heads
    session = load_lm(bundle)
    assert session.context == hf.config.max_position_embeddings and session.threads == 2


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_tokens_match_transformers(models, kind):
    src, hf, artifact = models[kind]
    session = load_lm(artifact.path.parent)
    for prompt in PROMPTS:
        ids = _prompt_ids(src, prompt)
        with torch.no_grad():
            ref = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.int64),
                              do_sample=False, max_new_tokens=16)[0, len(ids):].tolist()
        got = session.generate(ids, 16, Sampling())
        assert got.tokens == ref
        assert got.prompt_tokens == len(ids) and got.first_token_s > 0


@pytest.mark.parametrize("kind", KINDS)
def test_score_matches_transformers(models, kind):
    src, hf, artifact = models[kind]
    ids = np.random.default_rng(0).integers(3, hf.config.vocab_size, 40)
    got = load_lm(artifact.path.parent).score(ids)
    np.testing.assert_allclose(got, _hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_streamed_text_is_the_decoded_text(models):
    src, _, artifact = models["llama"]
    session, tokenizer = load_lm(artifact.path.parent), Tokenizer.from_file(str(src / "tokenizer.json"))
    for prompt in PROMPTS:
        streamed = []
        got = session.generate(_prompt_ids(src, prompt), 16, Sampling(), streamed.append)
        assert "".join(streamed) == got.text == tokenizer.decode(got.tokens)
        assert len(got.pieces) == len(got.tokens)


def test_a_character_split_across_tokens_is_held_back(models):
    src = models["llama"][0]
    vocab = Tokenizer.from_file(str(src / "tokenizer.json")).get_vocab()
    pieces = TokenBytes(src / "tokenizer.json")
    first, second = pieces(vocab["Ã"]), pieces(vocab["©"])  # the two bytes of "é"
    assert (first, second) == (b"\xc3", b"\xa9")
    streamed = []
    stream = Utf8Stream(streamed.append)
    assert stream.push(first) == "" and stream.push(second) == "é" and streamed == ["é"]
    assert pieces(0) == b""  # BOS is no text


def test_sampling_is_seeded(models):
    src, _, artifact = models["llama"]
    session, ids = load_lm(artifact.path.parent), _prompt_ids(src, PROMPTS[0])
    runs = [session.generate(ids, 8, Sampling(temperature=1.0, top_p=0.9, seed=s)).tokens for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]


@pytest.mark.parametrize("case,per_layer", [("llama", 4), ("llama-plain", 7)])  # fused: q/k/v and gate/up packed
def test_int4_weights(models, tmp_path, case, per_layer):
    src, hf, float_artifact = models[case]
    artifact = quantize_genai(float_artifact, tmp_path / "int4", "int4")
    assert artifact.manifest["engine"]["graph"] == CASES[case][1]
    graph = onnx.load(artifact.path, load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == per_layer * hf.config.num_hidden_layers + 1  # + lm_head
    assert all(next(a.i for a in n.attribute if a.name == "accuracy_level") == 4 for n in nbits)
    assert not [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    assert _bundle_bytes(artifact) < 0.6 * _bundle_bytes(float_artifact)
    session = load_lm(artifact.path.parent)
    ids = np.random.default_rng(0).integers(3, hf.config.vocab_size, 64)
    got, ref = session.score(ids), _hf_logits(hf, ids)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.5
    assert len(session.generate(_prompt_ids(src, PROMPTS[0]), 4, Sampling()).tokens) == 4


def test_per_layer_kv_heads_are_refused(tmp_path):
    layers = [dict(heads=4, kv_heads=kv, head_dim=8, intermediate=32) for kv in (2, 1)]
    module = Decoder(vocab=16, hidden=32, layers=layers, rms_eps=1e-6, rope_theta=1e4, max_pos=32,
                     tie_embeddings=False)
    with pytest.raises(ExportError, match="same number of KV heads in every layer"):
        export_genai(module, None, tmp_path, tmp_path / "out")


def test_unknown_weights_are_refused(tmp_path):
    layers = [dict(heads=2, kv_heads=1, head_dim=8, intermediate=16)]
    module = Decoder(vocab=16, hidden=16, layers=layers, rms_eps=1e-6, rope_theta=1e4, max_pos=32,
                     tie_embeddings=False)
    with pytest.raises(InputError, match="unknown weights 'int3'"):
        export_genai(module, None, tmp_path, tmp_path / "out", weights="int3")
    with pytest.raises(InputError, match="cannot quantize to 'float'"):
        quantize_genai(tmp_path, tmp_path / "q", "float")


@pytest.mark.parametrize("kind,window", [("mistral", 8), ("gemma3_text", 6)])
def test_fused_graph_hides_what_a_sliding_window_hides(tmp_path, kind, window):
    """GroupQueryAttention's local window, scale, soft caps and per-layer RoPE tables against transformers
    over a text several windows long, whole and one token at a time."""
    src = seeded_decoder_dir(tmp_path / kind, kind, sliding_window=window)
    hf = transformers.AutoModelForCausalLM.from_pretrained(src, attn_implementation="eager").eval()
    artifact = export_genai(from_hf_decoder(hf), hf.config, src, tmp_path / "bundle")
    assert artifact.manifest["engine"]["graph"] == "fused"
    ids = np.random.default_rng(1).integers(3, hf.config.vocab_size, 5 * window)
    session = load_lm(artifact.path.parent)
    np.testing.assert_allclose(session.score(ids), _hf_logits(hf, ids), atol=1e-4, rtol=0)
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids[:window].tolist()]), do_sample=False,
                           max_new_tokens=3 * window)[0, window:].tolist()
    assert session.generate(ids[:window].tolist(), 3 * window, Sampling()).tokens == want


def test_a_tied_token_table_is_stored_once_in_int4(tmp_path):
    """The lookup reads the output head's 4-bit blocks (a Reshape of its bytes, its scales): one copy of the
    table in the file, and logits that still follow the float model."""
    src = seeded_decoder_dir(tmp_path / "tied", "llama", num_hidden_layers=1, tie_word_embeddings=True)
    hf = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    art = export_genai(from_hf_decoder(hf), hf.config, src, tmp_path / "int4", weights="int4")
    graph = onnx.load(art.path, load_external_data=False).graph
    vocab, hidden = hf.config.vocab_size, hf.config.hidden_size
    gather = next(n for n in graph.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in graph.node if n.op_type == "MatMulNBits" and
                next(a.i for a in n.attribute if a.name == "N") == vocab)
    reshape = next(n for n in graph.node if n.output[0] == gather.input[0])
    assert reshape.op_type == "Reshape" and reshape.input[0] == head.input[1] and gather.input[2] == head.input[2]
    tables = [i for i in graph.initializer if int(np.prod(i.dims)) in (vocab * hidden, vocab * hidden // 2)]
    assert [i.name for i in tables] == [head.input[1]]  # the head's bytes, and no second table
    ids = np.random.default_rng(0).integers(3, vocab, 48)
    got, ref = load_lm(art.path.parent).score(ids), _hf_logits(hf, ids)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.5
