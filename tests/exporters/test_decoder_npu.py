"""The chunked decoder graph: float through the host loop equals transformers; the A16W8 graph runs whole
on the HTP with a uint16 cache the host writes as is, and stays close to float on real text."""

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import transformers
from tokenizers import Tokenizer

from edgec.calibration import prose
from edgec.errors import InputError
from edgec.exporters.integer_check import check_integer_only
from edgec.exporters.onnx_decoder_npu import export_float_decoder
from edgec.models.hf_decoder import from_hf_decoder
from edgec.runtimes.htp_llm import load_lm
from edgec.runtimes.llm import Sampling
from edgec.runtimes.tokens import TokenBytes
from edgec.targets.npu_lm import export_decoder_npu
from edgec.zoo.seeded import seeded_decoder_dir
from helpers import hf_greedy

CONTEXT, CHUNK = 64, 16


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def seeded(request, tmp_path_factory):
    """(HF dir, HF model, canonical Decoder, the float graph's path and contract)."""
    out = tmp_path_factory.mktemp(request.param)
    hf_dir = seeded_decoder_dir(out / "hf", request.param)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, attn_implementation="eager").eval()
    module = from_hf_decoder(hf)
    contract = export_float_decoder(module, out / "float.onnx", CONTEXT, CHUNK)
    return hf_dir, hf, module, out / "float.onnx", contract


def _text_ids(hf_dir: Path, split: str, n: int) -> list[np.ndarray]:
    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    return [np.array(tok.encode(text).ids[:CONTEXT]) for text in prose.split(split)[:n]]


def test_float_graph_through_the_host_loop_matches_transformers(seeded):
    hf_dir, hf, _, float_path, contract = seeded
    lm = load_lm(float_path, hf_dir / "tokenizer.json", {"eos_token_ids": [1], "engine": contract}, "ort-cpu")
    ids = _text_ids(hf_dir, "heldout", 1)[0]
    assert len(ids) == CONTEXT  # four full chunks: the cache ends exactly full
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)[None]).logits[0].numpy()
    got = lm.score(ids)
    assert got.shape == want.shape == (CONTEXT, hf.config.vocab_size)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # a 21-token prompt: a full chunk, a padded one, then one padded chunk per new token
    prompt = [int(i) for i in ids[:21]]
    streamed: list[str] = []
    gen = lm.generate(prompt, 24, Sampling(), on_text=streamed.append)
    assert gen.tokens == hf_greedy(hf, prompt, 24)
    token_bytes = TokenBytes(hf_dir / "tokenizer.json")  # random weights emit broken UTF-8 too
    assert gen.text == b"".join(map(token_bytes, gen.tokens)).decode(errors="replace")
    # Utf8Stream.close() returns a dangling byte's "\ufffd" without passing it to on_text
    assert "".join(streamed) in (gen.text, gen.text.removesuffix("\ufffd"))
    assert gen.prompt_tokens == 21 and gen.first_token_s > 0 and gen.decode_s > 0


def test_generation_stops_when_the_cache_is_full(seeded):
    _, hf, _, float_path, contract = seeded
    lm = load_lm(float_path, None, contract, "ort-cpu")
    gen = lm.generate(list(range(3, 3 + CONTEXT - 2)), 10, Sampling())
    assert len(gen.tokens) == 3  # context - prompt tokens fed back, plus the one read off the last logits
    assert gen.tokens == hf_greedy(hf, list(range(3, 3 + CONTEXT - 2)), 3)


def test_a_prompt_longer_than_the_context_is_refused(seeded):
    _, _, _, float_path, contract = seeded
    lm = load_lm(float_path, None, contract, "ort-cpu")
    ids = list(range(3, 3 + CONTEXT + 1))
    with pytest.raises(InputError, match=f"65 tokens exceed the context of {CONTEXT}.*--context"):
        lm.generate(ids, 4, Sampling())
    with pytest.raises(InputError, match="exceed the context"):
        lm.score(np.array(ids))


def _agreement(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    return float(cos.mean()), float((got.argmax(-1) == want.argmax(-1)).mean())


def test_a16w8_graph_is_integer_only_runs_whole_on_the_htp_and_stays_close_to_float(seeded, tmp_path):
    hf_dir, _, module, float_path, float_contract = seeded
    art, contract = export_decoder_npu(module, tmp_path / "decoder.onnx", CONTEXT, CHUNK,
                                       _text_ids(hf_dir, "calib", 4))
    assert art.runtimes == ("qnn-htp", "ort-cpu") and art.format == "onnx-qdq"
    assert contract["checks"]["htp"]["fraction"] == 1.0 and contract["checks"]["htp"]["runs_fully"]
    model = onnx.load(art.path)
    assert check_integer_only(model).integer_only
    assert art.bytes < 0.5 * float_path.stat().st_size
    # the cache crosses the graph boundary as uint16, one scale per past/new pair
    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    cache = contract["cache"]
    assert cache["dtype"] == "uint16" and len(cache["scale"]) == 4 * len(module.layers)
    for i in range(len(module.layers)):
        for kind in ("key", "value"):
            past, new = f"past_{kind}.{i}", f"new_{kind}.{i}"
            assert io[past] == io[new] == onnx.TensorProto.UINT16
            assert cache["scale"][past] == cache["scale"][new] > 0
            assert cache["zero_point"][past] == cache["zero_point"][new]

    float_lm = load_lm(float_path, None, float_contract, "ort-cpu")
    htp = load_lm(art.path, hf_dir / "tokenizer.json", {"eos_token_ids": [1], "engine": contract})
    assert htp.cache["past_key.0"].dtype == np.uint16
    cos, top1 = zip(*[_agreement(htp.score(ids), float_lm.score(ids))
                      for ids in _text_ids(hf_dir, "heldout", 2)])
    # random weights give near-flat logits, so near-ties flip: a loose bound
    assert min(cos) > 0.995 and min(top1) > 0.75, (cos, top1)
    prompt = [int(i) for i in _text_ids(hf_dir, "heldout", 1)[0][:20]]
    gen = htp.generate(prompt, 4, Sampling())
    assert len(gen.tokens) == 4 and htp.pos == 20 + 3
    assert gen.tokens[0] == float_lm.generate(prompt, 1, Sampling()).tokens[0]
