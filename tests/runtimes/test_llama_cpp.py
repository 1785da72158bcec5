"""The llama-cpp runtime: the LMSession contract (streaming, EOS, sampling, limits) over a GGUF file."""

import sys

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer

from edgec.errors import BackendError, InputError
from edgec.runtimes import runtime
from edgec.runtimes.llm import Sampling
from edgec.zoo.seeded import seeded_decoder_dir

pytest.importorskip("llama_cpp", reason="llama.cpp is not installed: pip install -e '.[llama]'")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    from edgec.exporters.gguf import export_gguf
    from edgec.models.hf_decoder import from_hf_decoder

    root = tmp_path_factory.mktemp("llama-cpp")
    src = seeded_decoder_dir(root / "llama", "llama", num_hidden_layers=1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(src).eval()
    return src, export_gguf(from_hf_decoder(hf), hf.config, src, root / "model.gguf", "F32").path


def _open(gguf_file, **info):
    src, path = gguf_file
    return runtime("llama-cpp").load_lm(path, src / "tokenizer.json", {"eos_token_ids": [1], **info})


def _ids(src, text="Once upon a time, in a quiet town") -> list[int]:
    return Tokenizer.from_file(str(src / "tokenizer.json")).encode(text).ids


def test_session_takes_the_files_context_and_two_threads(gguf_file):
    session = _open(gguf_file)
    assert session.threads == 2 and session.context == 256 and session.eos == {1}
    assert _open(gguf_file, context_length=64).context == 64


def test_streamed_text_is_the_decoded_text(gguf_file):
    src, _ = gguf_file
    session, tokenizer = _open(gguf_file), Tokenizer.from_file(str(src / "tokenizer.json"))
    streamed = []
    got = session.generate(_ids(src), 16, Sampling(), streamed.append)
    assert "".join(streamed) == got.text == tokenizer.decode(got.tokens)
    assert len(got.pieces) == len(got.tokens) == 16


def test_without_a_tokenizer_json_the_gguf_vocabulary_spells_tokens(gguf_file):
    src, path = gguf_file
    plain = runtime("llama-cpp").load_lm(path, src / "missing.json", {"eos_token_ids": [1]})
    assert plain.generate(_ids(src), 16, Sampling()).text == _open(gguf_file).generate(_ids(src), 16, Sampling()).text


def test_generation_stops_at_eos(gguf_file):
    src, _ = gguf_file
    first = _open(gguf_file).generate(_ids(src), 4, Sampling()).tokens
    stopped = _open(gguf_file, eos_token_ids=[first[1]]).generate(_ids(src), 16, Sampling())
    assert stopped.tokens == first[:2]


def test_each_call_starts_from_position_zero(gguf_file):
    src, _ = gguf_file
    session = _open(gguf_file)
    ids = np.asarray(_ids(src))
    first = session.score(ids)
    session.generate(_ids(src, "The river was"), 8, Sampling())
    np.testing.assert_array_equal(session.score(ids), first)
    assert session.generate(list(ids), 8, Sampling()).tokens == session.generate(list(ids), 8, Sampling()).tokens


def test_sampling_is_seeded(gguf_file):
    src, _ = gguf_file
    session = _open(gguf_file)
    runs = [session.generate(_ids(src), 12, Sampling(temperature=1.0, top_p=0.9, seed=s)).tokens for s in (1, 1, 2)]
    assert runs[0] == runs[1] != runs[2]


def test_limits_are_input_errors(gguf_file):
    src, _ = gguf_file
    session = _open(gguf_file, context_length=32)
    with pytest.raises(InputError, match="holds 32 tokens of context"):
        session.generate(_ids(src), 30, Sampling())
    with pytest.raises(InputError, match="cannot score 40 tokens"):
        session.score(np.arange(40))
    with pytest.raises(InputError, match="token ids must be"):
        session.score(np.asarray([5, 512]))


def test_a_file_that_is_not_gguf_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"ONNX" + bytes(64))
    with pytest.raises(BackendError, match="not a GGUF file"):
        runtime("llama-cpp").load_lm(bad, tmp_path / "tokenizer.json", {})
    with pytest.raises(InputError, match="no GGUF file"):
        runtime("llama-cpp").load_lm(tmp_path / "none.gguf", tmp_path / "tokenizer.json", {})


def test_without_llama_cpp_python_one_line_says_how_to_install(gguf_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    with pytest.raises(BackendError) as e:
        _open(gguf_file)
    assert "\n" not in str(e.value) and "pip install -e '.[llama]'" in str(e.value)


def test_a_prompt_longer_than_one_decode_call_goes_in_pieces(gguf_file, monkeypatch):
    import edgec.runtimes.llama_cpp as rt

    src, _ = gguf_file
    ids = _ids(src, "Once upon a time, in a quiet town by the river, there lived")
    session = _open(gguf_file)
    whole, scores = session.generate(ids, 12, Sampling()).tokens, session.score(np.asarray(ids))
    monkeypatch.setattr(rt, "CHUNK", 5)
    pieces = _open(gguf_file)
    assert pieces.chunk == 5 < len(ids)
    assert pieces.generate(ids, 12, Sampling()).tokens == whole
    np.testing.assert_allclose(pieces.score(np.asarray(ids)), scores, atol=1e-4, rtol=0)
