"""A GGUF file under llama.cpp, through llama-cpp-python's bindings of llama.cpp's C API.

Ids go in and ids come out: the prompt's ids are decoded as given (BOS
included, added by nobody else), and each new token is chosen by llama.cpp's
own sampler chain (greedy, or temperature, top-p and a seeded draw), so what
is measured is what a llama.cpp deployment computes. The KV cache is cleared
before each call, so every call starts at position 0. Scoring asks llama.cpp
for the logits of every position of a batch, in windows so that a long
sequence never holds context x vocab floats at once.

llama-cpp-python's high-level `Llama` class is not used: it samples in its
own Python layer and keeps no per-position logits unless every call pays for
them.
"""

from __future__ import annotations

import ctypes
import weakref
from pathlib import Path

import numpy as np

from edgec.errors import BackendError, InputError
from edgec.exporters.llama_bindings import llama_cpp, quiet
from edgec.runtimes.llm import Generation, OnText, Recorder, Sampling
from edgec.runtimes.tokens import TokenBytes

THREADS = 2  # as the other runtimes here: timings compare like for like
WINDOW = 64  # positions per scoring batch: logits for each, never context x vocab floats at once
CHUNK = 512  # tokens per llama_decode call (llama.cpp's own ubatch default): a longer prompt goes in pieces
class LlamaCppLM:
    """`LMSession` over one GGUF file."""

    def __init__(self, path: Path, tokenizer_json: Path | None, eos: set[int] | None, context: int | None):
        self.lib = lib = llama_cpp()
        quiet(lib)
        lib.llama_backend_init()
        self.path, self.threads = path, THREADS
        params = lib.llama_model_default_params()
        self._model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self._model:
            raise BackendError(f"llama.cpp cannot load {path} (set EDGEC_LLAMA_LOG=1 to see why); "
                               "re-export it with export_gguf")
        self._vocab = lib.llama_model_get_vocab(self._model)
        self.vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        trained = int(lib.llama_model_n_ctx_train(self._model))
        self.context = min(context, trained) if context else trained
        self.chunk = min(self.context, CHUNK)
        c = lib.llama_context_default_params()
        c.n_ctx, c.n_batch, c.n_ubatch, c.n_seq_max = self.context, self.chunk, self.chunk, 1
        c.n_threads = c.n_threads_batch = THREADS
        c.no_perf = True
        self._ctx = lib.llama_init_from_model(self._model, c)
        if not self._ctx:
            lib.llama_model_free(self._model)
            raise BackendError(f"llama.cpp cannot make a {self.context}-token context for {path}")
        self.eos = set(eos or ()) or {t for t in (lib.llama_vocab_eos(self._vocab), lib.llama_vocab_eot(self._vocab))
                                      if t >= 0}
        self.token_bytes = TokenBytes(tokenizer_json) if tokenizer_json else self._piece
        self._batch = lib.llama_batch_init(self.chunk, 0, 1)
        self._finalizer = weakref.finalize(self, _free, lib, self._batch, self._ctx, self._model)

    def score(self, ids: np.ndarray) -> np.ndarray:
        ids = self._checked(np.asarray(ids, np.int64).reshape(-1))
        if len(ids) > self.context:
            raise InputError(f"cannot score {len(ids)} tokens: this model takes 1 to {self.context}")
        self._reset()
        out = np.empty((len(ids), self.vocab), np.float32)
        step = min(WINDOW, self.chunk)
        for start in range(0, len(ids), step):
            chunk = ids[start:start + step]
            self._decode(chunk, start, every_position=True)
            for j in range(len(chunk)):
                row = self.lib.llama_get_logits_ith(self._ctx, j)
                out[start + j] = np.ctypeslib.as_array(row, shape=(self.vocab,))
        return out

    def generate(self, ids: list[int], max_new_tokens: int, sampling: Sampling,
                 on_text: OnText | None = None) -> Generation:
        ids = [int(i) for i in self._checked(np.asarray(ids, np.int64).reshape(-1))]
        if max_new_tokens < 1 or len(ids) + max_new_tokens > self.context:
            raise InputError(f"{len(ids)} prompt + {max_new_tokens} new tokens: this model holds {self.context} "
                             f"tokens of context; ask for 1 to {max(self.context - len(ids), 0)} new tokens")
        lib = self.lib
        sampler = self._sampler(sampling)
        try:
            self._reset()
            out = Recorder(self.token_bytes, on_text)
            for start in range(0, len(ids), self.chunk):  # the prompt, the last chunk's last logits kept
                self._decode(np.asarray(ids[start:start + self.chunk], np.int64), start)
            pos = len(ids)
            while True:
                token = int(lib.llama_sampler_sample(sampler, self._ctx, -1))  # samples and accepts
                out.add(token)
                if token in self.eos or len(out.tokens) >= max_new_tokens:
                    break
                self._decode(np.asarray([token], np.int64), pos)
                pos += 1
            return out.finish(len(ids))
        finally:
            lib.llama_sampler_free(sampler)

    def _sampler(self, sampling: Sampling):
        """llama.cpp's own chain: greedy; or temperature, then nucleus, then a draw seeded by `seed`."""
        lib = self.lib
        chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        if sampling.greedy:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(sampling.temperature))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(sampling.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist(sampling.seed & 0xFFFFFFFF))
        return chain

    def _reset(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self._ctx), True)

    def _decode(self, ids: np.ndarray, start: int, every_position: bool = False) -> None:
        """Feed `ids` (at most `chunk`) at positions start..; logits for the last one (for every one with
        `every_position`)."""
        b, n = self._batch, len(ids)
        for j, token in enumerate(ids.tolist()):
            b.token[j], b.pos[j], b.n_seq_id[j], b.seq_id[j][0] = token, start + j, 1, 0
            b.logits[j] = every_position or j == n - 1
        b.n_tokens = n
        rc = self.lib.llama_decode(self._ctx, b)
        if rc != 0:
            raise BackendError(f"llama.cpp failed to decode {n} tokens at position {start} of {self.path.name} "
                               f"(code {rc})")

    def _checked(self, ids: np.ndarray) -> np.ndarray:
        if not len(ids) or ids.min() < 0 or ids.max() >= self.vocab:
            raise InputError(f"token ids must be 1 or more values in 0 .. {self.vocab - 1}")
        return ids

    def _piece(self, token: int) -> bytes:
        """A token's bytes as llama.cpp spells them (no tokenizer.json at hand); special tokens give none."""
        buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        return buf.raw[:n] if n > 0 else b""


def _free(lib, batch, ctx, model) -> None:
    lib.llama_batch_free(batch)
    lib.llama_free(ctx)
    lib.llama_model_free(model)


def load_lm(path: Path, tokenizer_json: Path | None = None, info: dict | None = None) -> LlamaCppLM:
    """The GGUF file at `path` (from export_gguf); `tokenizer_json` turns ids into bytes as the other runtimes
    do (default: the GGUF's own vocabulary); `info` may give `eos_token_ids` and `context_length` (default:
    the file's)."""
    path, info = Path(path), info or {}
    if not path.is_file():
        raise InputError(f"no GGUF file at {path}: check the path")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise BackendError(f"{path} is not a GGUF file; export it with export_gguf")
    tokenizer_json = Path(tokenizer_json) if tokenizer_json and Path(tokenizer_json).is_file() else None
    return LlamaCppLM(path, tokenizer_json, set(info.get("eos_token_ids") or ()), info.get("context_length"))
