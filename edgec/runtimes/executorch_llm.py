"""A decoder `.pte` under ExecuTorch: greedy generation by its LLM runner, scoring by the plain runtime.

The runner takes the prompt as text and hands each new token back as a
`str`. Text would lose the caller's exact ids (BOS counted by the runner's
`num_bos`, a window of ids that re-encodes differently), and pybind11 cannot
build a `str` from a byte-level token that ends inside a UTF-8 character. So
the runner gets a tokenizer.json that spells token i as the one character
U+10000+i: the prompt's ids reach the model verbatim (BOS included, added by
nobody else), each piece names its id, and edgec turns ids into bytes with the
model's own tokenizer. A C++ app gives the runner the model's tokenizer.json.

The runner samples with a fixed top-p of 0.9, a clock seed and temperatures
up to 1 only, so sampled generation runs edgec's own loop over the same
program (exactly what `Sampling` asks for, reproducibly); greedy runs the runner.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgec.errors import BackendError, InputError
from edgec.runtimes.llm import Clock, Generation, OnText, Recorder, Sampling, sample
from edgec.runtimes.tokens import TokenBytes

ID_BASE = 0x10000  # token i <-> chr(ID_BASE + i): over a million code points, no surrogates


class ExecutorchLM:
    def __init__(self, pte: Path, tokenizer_json: Path):
        from executorch.runtime import Runtime

        from edgec.runtimes.executorch import _threads

        self.threads = _threads()  # the runner's XNNPACK delegates share this pool
        self.path, self.token_bytes = pte, TokenBytes(tokenizer_json)
        try:
            with _Quiet():
                self._program = program = Runtime.get().load_program(pte)
                self._forward = program.load_method("forward")
                constant = lambda name: program.load_method(name).execute([])  # noqa: E731
                self.context = int(constant("get_max_context_len")[0])
                self.chunk = int(constant("get_max_seq_len")[0])  # the most tokens one call takes
                self.vocab = int(constant("get_vocab_size")[0])
                self.eos = {int(e) for e in constant("get_eos_ids")}
        except (RuntimeError, ValueError) as e:
            raise BackendError(f"{pte} is not an ExecuTorch LLM program ({e}); re-export it with export_llm_pte") from e
        self._runner = _runner(pte, self.vocab)

    def score(self, ids: np.ndarray) -> np.ndarray:
        ids = self._checked(np.asarray(ids, np.int64).reshape(-1))
        if len(ids) > self.context:
            raise InputError(f"cannot score {len(ids)} tokens: this program takes 1 to {self.context}")
        return self._feed(ids, 0)

    def _feed(self, ids: np.ndarray, start: int) -> np.ndarray:
        """Logits [n, vocab] for `ids` at positions start..: one token per call, since `forward` returns the
        last position's logits only."""
        out = np.empty((len(ids), self.vocab), np.float32)
        for at in range(len(ids)):
            token = torch.from_numpy(np.ascontiguousarray(ids[at: at + 1]))[None]
            pos = torch.tensor([start + at], dtype=torch.long)
            out[at] = self._forward.execute([token, pos])[0].numpy().reshape(-1)
        return out

    def _prefill(self, ids: np.ndarray) -> np.ndarray:
        """The last position's logits after `ids` from position 0, in chunks the program takes."""
        for at in range(0, len(ids), self.chunk):
            chunk = torch.from_numpy(np.ascontiguousarray(ids[at: at + self.chunk]))[None]
            logits = self._forward.execute([chunk, torch.arange(at, at + chunk.shape[1], dtype=torch.long)])[0]
        return logits.numpy().reshape(-1).copy()

    def generate(self, ids: list[int], max_new_tokens: int, sampling: Sampling,
                 on_text: OnText | None = None) -> Generation:
        ids = [int(i) for i in self._checked(np.asarray(ids, np.int64).reshape(-1))]
        if max_new_tokens < 1 or len(ids) + max_new_tokens > self.context:
            raise InputError(f"{len(ids)} prompt + {max_new_tokens} new tokens: this program holds "
                             f"{self.context} tokens of context; ask for 1 to {self.context - len(ids)} new tokens")
        out = _Sink(self, Recorder(self.token_bytes, on_text), max_new_tokens)
        with _Quiet() as out.quiet:
            (self._greedy if sampling.greedy else self._sampled)(ids, sampling, out)
            with out.quiet.loud():  # a held-back partial character is streamed now
                return out.rec.finish(len(ids))

    def _checked(self, ids: np.ndarray) -> np.ndarray:
        if not len(ids) or ids.min() < 0 or ids.max() >= self.vocab:
            raise InputError(f"token ids must be 1 or more values in 0 .. {self.vocab - 1}")
        return ids

    def _greedy(self, ids: list[int], sampling: Sampling, out: "_Sink") -> None:
        from executorch.extension.llm.runner import GenerationConfig

        config = GenerationConfig(echo=False, max_new_tokens=out.budget, temperature=0.0, num_bos=0, num_eos=0)

        def piece(p: str) -> None:
            if out.add(ord(p) - ID_BASE):
                self._runner.stop()
        self._runner.reset()  # position 0: the runner would otherwise continue after the last call
        out.rec.clock = Clock()
        try:
            self._runner.generate("".join(chr(ID_BASE + i) for i in ids), config, piece)
        except RuntimeError as e:
            raise BackendError(f"ExecuTorch's LLM runner failed on {self.path.name} ({e})") from e

    def _sampled(self, ids: list[int], sampling: Sampling, out: "_Sink") -> None:
        rng = np.random.default_rng(sampling.seed)
        logits, pos = self._prefill(np.asarray(ids, np.int64)), len(ids)
        while not out.add(t := sample(logits, sampling, rng)):
            logits, pos = self._feed(np.asarray([t], np.int64), pos)[-1], pos + 1


class _Sink:
    """Takes new ids one by one: stops at EOS or the token budget, streams and times them."""

    def __init__(self, lm: ExecutorchLM, rec: Recorder, budget: int):
        self.lm, self.rec, self.budget, self.quiet = lm, rec, budget, None

    def add(self, token: int) -> bool:
        """Record `token`; True once generation should stop."""
        tokens = self.rec.tokens
        if len(tokens) >= self.budget or (tokens and tokens[-1] in self.lm.eos):
            return True  # the runner does not stop at an EOS sampled by its prefill: drop what follows
        with self.quiet.loud():
            self.rec.add(token)
        return token in self.lm.eos or len(tokens) >= self.budget


def _runner(pte: Path, vocab: int):
    """TextLLMRunner over the id-spelling tokenizer (each character its own piece, no merges).

    No pre-tokenizer: a regex one makes the runner build RE2 objects, and once the QNN HTP library
    (which exports its own RE2 symbols) is loaded in the process, those resolve into it and crash.
    """
    spec = {"version": "1.0", "added_tokens": [], "normalizer": None, "post_processor": None, "decoder": None,
            "pre_tokenizer": None,
            "model": {"type": "BPE", "vocab": {chr(ID_BASE + i): i for i in range(vocab)}, "merges": []}}
    with tempfile.TemporaryDirectory() as tmp, _Quiet():  # the tokenizer library logs as it loads
        path = Path(tmp) / "tokenizer.json"
        path.write_text(json.dumps(spec), encoding="utf-8")
        from executorch.extension.llm.runner import TextLLMRunner
        try:
            return TextLLMRunner(str(pte), str(path))
        except RuntimeError as e:
            raise BackendError(f"ExecuTorch's LLM runner cannot load {pte} ({e}); re-export it with "
                               "export_llm_pte") from e


class _Quiet:
    """The runner printf()s every token and a report to stdout and logs to stderr: both go to
    /dev/null, except while `loud()` hands text to the caller's callback."""

    _libc = ctypes.CDLL(None)

    def __enter__(self):
        self._saved = [(fd, os.dup(fd)) for fd in (1, 2)]
        self._null = os.open(os.devnull, os.O_WRONLY)
        self._point(self._null)
        return self

    def __exit__(self, *exc):
        self._point(None)
        for _, copy in self._saved:
            os.close(copy)
        os.close(self._null)

    @contextlib.contextmanager
    def loud(self):
        self._point(None)
        try:
            yield
        finally:
            self._point(self._null)

    def _point(self, target: int | None) -> None:
        """Flush Python's and C's buffers, then point fds 1 and 2 at `target` (None: the originals)."""
        sys.stdout.flush()
        sys.stderr.flush()
        self._libc.fflush(None)
        for fd, copy in self._saved:
            os.dup2(copy if target is None else target, fd)


def load_lm(pte: Path, tokenizer_json: Path, manifest: dict | None = None) -> ExecutorchLM:
    """The program at `pte` (from export_llm_pte) and the model's HF tokenizer.json; `manifest` is not
    needed, the program carries its context, vocabulary size and EOS ids."""
    pte, tokenizer_json = Path(pte), Path(tokenizer_json)
    for path, what in ((pte, "an ExecuTorch .pte"), (tokenizer_json, "a tokenizer.json")):
        if not path.is_file():
            raise InputError(f"no {what} at {path}: check the path")
    return ExecutorchLM(pte, tokenizer_json)
