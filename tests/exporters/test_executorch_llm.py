"""export_llm_pte + the executorch LM runtime: ExecuTorch's LLM runner reproduces transformers' greedy tokens."""

import json

import numpy as np
import pytest
import torch
import transformers
from helpers import hf_greedy
from tokenizers import Tokenizer

from edgec.errors import InputError
from edgec.exporters.executorch_llm import export_llm_pte
from edgec.models.hf_decoder import from_hf_decoder
from edgec.runtimes.executorch_llm import load_lm
from edgec.runtimes.llm import Sampling
from edgec.runtimes.tokens import TokenBytes
from edgec.zoo.seeded import seeded_decoder_dir

PROMPTS = ["The river was", "Once upon a time, in a quiet town"]
# lowering costs seconds per layer; Qwen2 is the same Decoder with q/k/v biases (its .pte is held to
# transformers by bench.llm_equivalence, its ONNX by test_onnx_genai and test_decoder_npu)
KINDS = {"llama": {"num_hidden_layers": 1}}
CONTEXT = 128


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """(kind, weights) -> (HF dir, HF model, artifact, session); each export is made once per module."""
    root, cache = tmp_path_factory.mktemp("etllm"), {}

    def get(kind: str, weights: str = "float"):
        if (kind, weights) not in cache:
            src = root / kind
            if not src.is_dir():
                seeded_decoder_dir(src, kind, **KINDS[kind])
            hf = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
            artifact = export_llm_pte(from_hf_decoder(hf), hf.config, root / f"{kind}-{weights}.pte", CONTEXT, weights)
            cache[kind, weights] = src, hf, artifact, load_lm(artifact.path, src / "tokenizer.json")
        return cache[kind, weights]
    return get


def _ids(src, prompt: str) -> list[int]:
    return Tokenizer.from_file(str(src / "tokenizer.json")).encode(prompt).ids  # BOS included


def _hf_logits(hf, ids) -> np.ndarray:
    with torch.no_grad():
        return hf(torch.tensor([list(ids)])).logits[0].numpy()


@pytest.mark.parametrize("kind", list(KINDS))
def test_runner_reproduces_transformers_greedy(build, kind):
    src, hf, _, lm = build(kind)
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    for prompt in PROMPTS:
        ids = _ids(src, prompt)
        assert ids[0] == hf.config.bos_token_id and ids.count(ids[0]) == 1
        ref = hf_greedy(hf, ids, 16)
        got = lm.generate(ids, 16, Sampling())
        assert got.tokens == ref  # the prompt's one BOS and nothing else reached the model
        assert got.text == tok.decode(ref, skip_special_tokens=True)
        assert got.prompt_tokens == len(ids) and got.first_token_s > 0


@pytest.mark.parametrize("kind", list(KINDS))
def test_score_matches_transformers(build, kind):
    src, hf, _, lm = build(kind)
    long_ids = np.asarray(_ids(src, " ".join(PROMPTS) * 4), np.int64)[:CONTEXT]
    np.testing.assert_allclose(lm.score(long_ids), _hf_logits(hf, long_ids), atol=1e-4)
    short = long_ids[:7]  # after a longer sequence: its cache slots beyond position 6 must stay unseen
    np.testing.assert_allclose(lm.score(short), _hf_logits(hf, short), atol=1e-4)
    lm.generate(list(short), 4, Sampling())  # the runner's program is separate: scoring is unaffected
    np.testing.assert_allclose(lm.score(short), _hf_logits(hf, short), atol=1e-4)


def test_stream_survives_split_characters(build):
    src, _, _, lm = build("llama")
    token_bytes, seen_split = TokenBytes(src / "tokenizer.json"), False
    for prompt in PROMPTS + ["héllo wörld ünïcode 日本語"]:
        streamed = []
        got = lm.generate(_ids(src, prompt), 40, Sampling(), streamed.append)
        raw = b"".join(token_bytes(t) for t in got.tokens)
        assert "".join(streamed) == got.text == raw.decode("utf-8", errors="replace")
        seen_split |= any(_incomplete(token_bytes(t)) for t in got.tokens)
    assert seen_split  # random weights emit lone UTF-8 lead/continuation bytes: the case under test


def _incomplete(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_sampling_is_seeded_and_bounded(build):
    src, _, _, lm = build("llama")
    ids = _ids(src, PROMPTS[0])
    a, b = (lm.generate(ids, 12, Sampling(temperature=1.5, top_p=0.8, seed=7)) for _ in range(2))
    c = lm.generate(ids, 12, Sampling(temperature=1.5, top_p=0.8, seed=8))
    assert a.tokens == b.tokens != c.tokens and len(a.tokens) <= 12
    with pytest.raises(InputError, match="context"):
        lm.generate(ids, CONTEXT, Sampling())
    with pytest.raises(InputError, match="cannot score"):
        lm.score(np.zeros(CONTEXT + 1, np.int64))
    with pytest.raises(InputError, match="token ids"):
        lm.generate([0, 10**6], 4, Sampling())


def test_ids_reach_the_model_verbatim(build):
    """Ids that text would not give back (a word split in letters, no BOS) generate as in transformers."""
    src, hf, _, lm = build("llama")
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    split = [tok.token_to_id(c) for c in "Theriver"]
    assert None not in split and tok.encode("Theriver").ids[1:] != split
    for ids in ([hf.config.bos_token_id] + split, split):
        assert lm.generate(ids, 8, Sampling()).tokens == hf_greedy(hf, ids, 8)


def test_runner_reads_the_models_own_tokenizer(build, tmp_path):
    """What a C++ app does: the prompt as text, `num_bos=1` for the one BOS, the model's tokenizer.json
    (here without its decoder, so that byte-level pieces reach Python as their vocabulary strings)."""
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    src, hf, artifact, _ = build("llama")
    spec = json.loads((src / "tokenizer.json").read_text())
    spec["decoder"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    vocab = Tokenizer.from_file(str(tmp_path / "tokenizer.json")).get_vocab(with_added_tokens=True)
    runner = TextLLMRunner(str(artifact.path), str(tmp_path / "tokenizer.json"))
    for prompt in PROMPTS:
        pieces = []
        runner.reset()
        runner.generate(prompt, GenerationConfig(echo=False, max_new_tokens=16, temperature=0.0, num_bos=1),
                        pieces.append)
        assert [vocab[p] for p in pieces] == hf_greedy(hf, _ids(src, prompt), 16)


def test_forward_returns_the_last_position_only(build):
    """A prompt chunk of any length plans one row of logits, not context x vocab floats."""
    from executorch.runtime import Runtime

    src, hf, artifact, lm = build("llama")
    meta = Runtime.get().load_program(artifact.path).metadata("forward")
    assert list(meta.output_tensor_meta(0).sizes()) == [1, 1, hf.config.vocab_size]
    assert artifact.manifest["outputs"][0]["shape"] == [1, 1, hf.config.vocab_size]


def test_unwritten_cache_slots_never_reach_the_logits(build):
    """Whatever an app's allocator left in the cache buffers (NaN included) is selected away."""
    from edgec.exporters.executorch_llm import StaticCacheLM

    src, hf, _, _ = build("llama")
    ids = torch.tensor([_ids(src, PROMPTS[1])])
    clean = StaticCacheLM(from_hf_decoder(hf), CONTEXT).eval()
    dirty = StaticCacheLM(from_hf_decoder(hf), CONTEXT).eval()
    for name, buf in dirty.named_buffers():
        if name.startswith(("k_", "v_")):
            buf.fill_(float("nan"))
    with torch.no_grad():
        want, got = clean(ids, torch.arange(ids.shape[1])), dirty(ids, torch.arange(ids.shape[1]))
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("bits,limit", [(4, 7), (8, 127)])
def test_dynamic_int_weights_use_the_bits_they_name(build, bits, limit):
    """int8 means 8-bit weights (per output channel), int4 4-bit (groups of 32): never 4 bits for int8."""
    from edgec.exporters.executorch_llm import StaticCacheLM, quantize_dynamic_int

    _, hf, _, _ = build("llama")
    wrapper = StaticCacheLM(from_hf_decoder(hf), CONTEXT).eval()
    quantize_dynamic_int(wrapper, bits)
    q = wrapper.module.layers[0].gate.weight.qdata
    assert int(q.abs().max()) > limit // 2 and int(q.max()) <= limit
