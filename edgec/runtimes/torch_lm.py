"""transformers' own `generate` in eager float: the reference every exported decoder is held to."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgec.runtimes.llm import Generation, OnText, Recorder, Sampling
from edgec.runtimes.tokens import TokenBytes

THREADS = 2


class _Streamer:
    """transformers calls `put` with the prompt, then with each new token, then `end`."""

    def __init__(self, out: Recorder):
        self.out, self.prompt_seen = out, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        for t in value.reshape(-1).tolist():
            self.out.add(int(t))

    def end(self) -> None:
        pass


class TorchLM:
    def __init__(self, model, token_bytes: TokenBytes, context: int):
        self.model, self.bytes, self.context = model, token_bytes, context
        self.threads = THREADS

    def score(self, ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(input_ids=torch.from_numpy(np.asarray(ids, np.int64))[None]).logits[0].numpy()

    def generate(self, ids: list[int], max_new_tokens: int, sampling: Sampling,
                 on_text: OnText | None = None) -> Generation:
        out = Recorder(self.bytes, on_text)
        options = ({"do_sample": False} if sampling.greedy else
                   {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0})
        torch.manual_seed(sampling.seed)
        with torch.no_grad():
            self.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=max_new_tokens, streamer=_Streamer(out), **options)
        return out.finish(len(ids))


def load_hf_lm(model_dir: Path):
    """The HF causal LM in float32, eager attention, eval mode."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager",
                                                local_files_only=True).eval()


def load_lm(model_dir: Path, tokenizer: Path | None = None, info: dict | None = None) -> TorchLM:
    torch.set_num_threads(THREADS)
    model = load_hf_lm(Path(model_dir))
    return TorchLM(model, TokenBytes(Path(model_dir) / "tokenizer.json"), model.config.max_position_embeddings)
