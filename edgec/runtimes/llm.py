"""What every language-model runtime offers: score a sequence, generate from a prompt.

A decoder bundle is read by several engines (transformers, ONNX Runtime
GenAI, ExecuTorch's LLM runner, edgec's loop on the HTP). Each engine's module
has `load_lm(bundle: Path, manifest: dict) -> LMSession`; perplexity, the
greedy-equivalence checks and `edgec generate` only use this interface.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np


@dataclass(frozen=True)
class Sampling:
    """Greedy unless a temperature > 0 is given."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass
class Generation:
    """One generate call: the new tokens and how long each phase took (seconds, wall clock)."""

    tokens: list[int]  # new token ids; pieces alone where the engine does not expose ids
    text: str
    prompt_tokens: int
    first_token_s: float  # prompt in -> first new token out (prefill plus one sampling step)
    decode_s: float  # first new token out -> last new token out
    pieces: list[str] = field(default_factory=list)  # each new token's text, as streamed

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.first_token_s if self.first_token_s > 0 else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        n = len(self.pieces or self.tokens) - 1  # tokens after the first
        return n / self.decode_s if n > 0 and self.decode_s > 0 else float("nan")

    def stats(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": len(self.pieces or self.tokens),
                "time_to_first_token_ms": round(1000 * self.first_token_s, 1),
                "prefill_tokens_per_s": round(self.prefill_tokens_per_s, 1),
                "decode_tokens_per_s": round(self.decode_tokens_per_s, 1)}


OnText = Callable[[str], None]


class LMSession(Protocol):
    threads: int | None
    context: int  # the longest sequence (prompt + new tokens) the artifact takes

    def score(self, ids: np.ndarray) -> np.ndarray:
        """Logits [n, vocab] for ids [n] (int64) fed from position 0 on a fresh cache."""
        ...

    def generate(self, ids: list[int], max_new_tokens: int, sampling: Sampling,
                 on_text: OnText | None = None) -> Generation:
        """New tokens after the prompt `ids` (BOS included), stopping at EOS; `on_text` gets each new
        piece of text as soon as it is complete UTF-8."""
        ...


class Utf8Stream:
    """Byte-level tokens can end inside a UTF-8 character: hold bytes back until they decode."""

    def __init__(self, on_text: OnText | None):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._on_text = on_text

    def push(self, data: bytes) -> str:
        text = self._decoder.decode(data)
        if text and self._on_text is not None:
            self._on_text(text)
        return text

    def close(self) -> str:
        """What was held back: a dangling partial character becomes U+FFFD, streamed like the rest."""
        text = self._decoder.decode(b"", final=True)
        if text and self._on_text is not None:
            self._on_text(text)
        return text


class Clock:
    """Marks the prompt going in and each token coming out; the Generation's timings come from it."""

    def __init__(self):
        self.start = time.perf_counter()
        self.marks: list[float] = []

    def token(self) -> None:
        self.marks.append(time.perf_counter())

    def timings(self) -> tuple[float, float]:
        if not self.marks:
            return 0.0, 0.0
        return self.marks[0] - self.start, self.marks[-1] - self.marks[0]


def sample(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """The next token from last-position logits [vocab]: argmax, or temperature + nucleus sampling."""
    if sampling.greedy:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / sampling.temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)
    keep = order[: int(np.searchsorted(np.cumsum(p[order]), sampling.top_p) + 1)]
    q = p[keep] / p[keep].sum()
    return int(keep[rng.choice(len(keep), p=q)])


class Recorder:
    """Each new token as it comes (its time, its text streamed as complete UTF-8), then the Generation."""

    def __init__(self, token_bytes: Callable[[int], bytes], on_text: OnText | None):
        self.bytes, self.stream, self.clock = token_bytes, Utf8Stream(on_text), Clock()
        self.tokens: list[int] = []
        self.pieces: list[str] = []

    def add(self, token: int) -> None:
        self.clock.token()
        self.tokens.append(int(token))
        self.pieces.append(self.stream.push(self.bytes(int(token))))

    def finish(self, prompt_tokens: int) -> Generation:
        tail = self.stream.close()
        if tail and self.pieces:
            self.pieces[-1] += tail
        first, decode = self.clock.timings()
        return Generation(self.tokens, "".join(self.pieces), prompt_tokens, first, decode, self.pieces)
