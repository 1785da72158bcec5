"""A bundle written by `export_genai`, run by ONNX Runtime GenAI's own generation loop.

Generation is GenAI's (its KV handling and search are what a deployment
gets); scoring runs the same model.onnx under plain ONNX Runtime with an empty
past, since GenAI exposes only the last position's logits. Text is streamed
from the tokens' bytes, so a token that ends inside a UTF-8 character is held
back instead of decoded to a replacement character.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from edgec.errors import BackendError, InputError
from edgec.runtimes.llm import Generation, OnText, Recorder, Sampling
from edgec.runtimes.tokens import TokenBytes

WINDOW = 256  # tokens per scoring pass: the [S, T] attention scores stay small


class GenaiSession:
    """`LMSession` over a GenAI bundle folder."""

    def __init__(self, bundle: Path):
        import onnxruntime_genai as og

        self.bundle = bundle
        config = json.loads((bundle / "genai_config.json").read_text())["model"]
        self.context = int(config["context_length"])
        # a bundle sets no thread count unless its recipe did: ONNX Runtime then uses every core it may
        self.threads = int(config["decoder"].get("session_options", {}).get("intra_op_num_threads", 0)) or \
            len(os.sched_getaffinity(0))
        self._model_file = bundle / config["decoder"]["filename"]
        self._model = _loaded(bundle, lambda: og.Model(str(bundle)))
        self._scorer = None  # a second copy of the weights: only once something is scored
        self._bytes = TokenBytes(bundle / "tokenizer.json")

    def score(self, ids: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not 0 < len(ids) <= self.context:
            raise InputError(f"cannot score {len(ids)} tokens: this model takes 1 to {self.context}")
        if self._scorer is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = self.threads, 1
            self._scorer = _loaded(self.bundle, lambda: ort.InferenceSession(
                str(self._model_file), options, providers=["CPUExecutionProvider"]))
        past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32)
                for i in self._scorer.get_inputs() if i.name.startswith("past_key_values.")}
        names = ["logits", *(n.replace("past_key_values", "present") for n in past)]
        takes = {i.name for i in self._scorer.get_inputs()}
        logits = []
        for start in range(0, len(ids), WINDOW):  # windows over a growing cache: same logits as one pass
            chunk = ids[start:start + WINDOW]
            end = start + len(chunk)
            feeds = {"input_ids": chunk[None], "attention_mask": np.ones((1, end), np.int64), **past}
            if "position_ids" in takes:  # the plain graph; the fused one counts positions from the mask
                feeds["position_ids"] = np.arange(start, end, dtype=np.int64)[None]
            outputs = self._scorer.run(names, feeds)
            logits.append(outputs[0][0])
            past = dict(zip(past, outputs[1:]))
        return np.concatenate(logits)

    def generate(self, ids: list[int], max_new_tokens: int, sampling: Sampling,
                 on_text: OnText | None = None) -> Generation:
        import onnxruntime_genai as og

        ids = [int(i) for i in ids]
        if not ids or len(ids) >= self.context:
            raise InputError(f"the prompt has {len(ids)} tokens: this model takes 1 to {self.context - 1}")
        params = og.GeneratorParams(self._model)
        search = {"do_sample": not sampling.greedy, "max_length": min(len(ids) + max_new_tokens, self.context)}
        if not sampling.greedy:
            search.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                          random_seed=sampling.seed)
        params.set_search_options(**search)
        generator = og.Generator(self._model, params)
        out = Recorder(self._bytes, on_text)
        generator.append_tokens(ids)
        while len(out.tokens) < max_new_tokens and not generator.is_done():
            generator.generate_next_token()
            out.add(int(generator.get_next_tokens()[0]))
        return out.finish(len(ids))


def _loaded(bundle: Path, load):
    """`load()`, with GenAI's and ORT's load errors as one BackendError that names the bundle."""
    try:
        return load()
    except Exception as e:  # og and ORT raise RuntimeError and friends, with the reason in the text
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BackendError(f"ONNX Runtime GenAI cannot load {bundle} ({reason}); "
                           "re-export it with export_genai") from e


def load_lm(bundle: Path, tokenizer: Path | None = None, info: dict | None = None) -> GenaiSession:
    """The session for the GenAI bundle folder `bundle` (the one holding genai_config.json, or its
    model.onnx): GenAI reads its own tokenizer copy there, so `tokenizer` and `info` are not needed."""
    bundle = Path(bundle)
    if bundle.is_file():
        bundle = bundle.parent
    missing = [f for f in ("genai_config.json", "tokenizer.json") if not (bundle / f).is_file()]
    if missing:
        raise BackendError(f"{bundle} is no ONNX Runtime GenAI bundle (no {', '.join(missing)}); "
                           "export it with export_genai")
    return GenaiSession(bundle)
