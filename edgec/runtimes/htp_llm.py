"""The host loop of a static-shape decoder graph: what a phone app runs around the NPU.

The graph (exporters/onnx_decoder_npu.py) takes `chunk` tokens, the whole
cache and an additive mask, and returns logits plus only the chunk's new keys
and values; the host owns the cache (in the graph's quantized dtype), writes
the new entries at their positions and never requantizes them. Prefill runs
`chunk` tokens per call; decode runs the same graph with one real token and
the rest of the chunk filled with copies of it (their outputs are dropped).
One graph keeps the bundle to one set of weights; on the HTP, decode is bound
by reading the weights, so the padded rows cost little there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.errors import InputError
from edgec.exporters.formats import CHUNKED_KIND
from edgec.runtimes.llm import Generation, OnText, Recorder, Sampling, sample
from edgec.runtimes.tokens import TokenBytes

RUNTIMES = ("qnn-htp", "ort-cpu")


def rope_rows(rope: dict, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin rows [tables, len(positions), head_dim] for the half-split rotary layout, from the
    contract's inverse frequencies and attention factors (as Decoder.rope)."""
    inv_freq = np.asarray(rope["inv_freq"], np.float32)  # [tables, head_dim / 2]
    freqs = positions.astype(np.float32)[None, :, None] * inv_freq[:, None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    factor = np.asarray(rope["attention_factor"], np.float32)[:, None, None]
    return (np.cos(emb) * factor).astype(np.float32), (np.sin(emb) * factor).astype(np.float32)


class ChunkedLM:
    """An `LMSession` over a chunked decoder graph and a host-side cache."""

    def __init__(self, run, contract: dict, eos=(), token_bytes: TokenBytes | None = None,
                 threads: int | None = None):
        self._run = run  # feeds -> {output name: array}
        self.contract, self.threads = contract, threads
        self._bytes = token_bytes or (lambda token: b"")
        self.context, self.chunk = contract["context"], contract["chunk"]
        self.eos = set(eos)
        self._cos, self._sin = rope_rows(contract["rope"], np.arange(self.context))
        self.reset()

    def reset(self) -> None:
        """An empty cache: every slot holds the quantized zero (masked anyway)."""
        cache = self.contract["cache"]
        self.cache = {t["name"]: np.full(t["shape"], cache["zero_point"].get(t["name"], 0), t["dtype"])
                      for t in self.contract["inputs"] if t["name"].startswith("past_")}
        self.pos = 0

    def feeds(self, ids: list[int]) -> dict[str, np.ndarray]:
        """Inputs for `ids` (1..chunk tokens) at positions pos.. ; padding rows copy the last token."""
        n, c, t = len(ids), self.chunk, self.context
        rows = np.minimum(np.arange(c), n - 1)  # row r stands for token min(r, n-1)
        positions = self.pos + rows
        # key positions: cache slot j is position j, the chunk's entry c is position pos + c
        keys = np.concatenate([np.arange(t), self.pos + np.arange(c)])
        seen = np.zeros((c, t + c), bool)
        seen[:, :self.pos] = True
        seen[:, t:] = np.arange(c)[None, :] <= rows[:, None]
        masks = {}
        for m in self.contract["masks"]:
            visible = seen if m["window"] is None else seen & (keys[None, :] > positions[:, None] - m["window"])
            masks[m["name"]] = np.where(visible, 0.0, self.contract["mask_value"]).astype(np.float32)[None, None]
        rope = {}
        for t, (cos, sin) in enumerate(self.contract["rope"]["inputs"]):
            rope[cos], rope[sin] = self._cos[t, positions], self._sin[t, positions]
        return {"input_ids": np.asarray(ids, np.int32)[rows][None], **rope, **masks, **self.cache}

    def step(self, ids: list[int], record: list | None = None) -> np.ndarray:
        """Runs one chunk, writes its new keys/values into the cache; logits [len(ids), vocab]."""
        n = len(ids)
        if not 0 < n <= self.chunk or self.pos + n > self.context:
            raise ValueError(f"{n} tokens at position {self.pos} do not fit chunk {self.chunk} / "
                             f"context {self.context}")
        feeds = self.feeds(ids)
        if record is not None:  # a snapshot: the cache arrays change in place below
            record.append({k: v.copy() for k, v in feeds.items()})
        out = self._run(feeds)
        for name in self.cache:
            new = out["new_" + name[len("past_"):]]
            self.cache[name][:, :, self.pos:self.pos + n] = new[:, :, :n]
        self.pos += n
        return out["logits"][0, :n]

    def prefill(self, ids: list[int], record: list | None = None) -> np.ndarray:
        """Logits [len(ids), vocab], `chunk` tokens per run, continuing from the current position."""
        self._check(len(ids) + self.pos)
        parts = [self.step(ids[i:i + self.chunk], record) for i in range(0, len(ids), self.chunk)]
        return np.concatenate(parts, axis=0)

    def score(self, ids: np.ndarray) -> np.ndarray:
        self.reset()
        return self.prefill([int(i) for i in np.asarray(ids).reshape(-1)])

    def generate(self, ids: list[int], max_new_tokens: int, sampling: Sampling,
                 on_text: OnText | None = None) -> Generation:
        """Stops at EOS, after `max_new_tokens`, or when the cache is full (context tokens in all)."""
        if not ids:
            raise InputError("empty prompt: give at least one token (BOS)")
        self._check(len(ids))
        rng = np.random.default_rng(sampling.seed)
        out = Recorder(self._bytes, on_text)
        self.reset()
        logits = self.prefill(list(ids))[-1]
        while len(out.tokens) < max_new_tokens:
            token = sample(logits, sampling, rng)
            out.add(token)
            if token in self.eos or len(out.tokens) == max_new_tokens or self.pos >= self.context:
                break
            logits = self.step([token])[-1]
        return out.finish(len(ids))

    def _check(self, n: int) -> None:
        if n > self.context:
            raise InputError(f"{n} tokens exceed the context of {self.context} this decoder was exported "
                             f"with: shorten the prompt or re-export with a larger --context")


def load_lm(onnx_path: Path, tokenizer: Path | None, info: dict, runtime: str = "qnn-htp",
            threads: int = 2) -> ChunkedLM:
    """The graph on the HTP (CPU fallback disabled) or, as a quick check, on ORT's CPU provider.

    `info` is the contract `targets.npu_lm.export_decoder_npu` returned, alone or under "engine" beside the
    manifest's generation fields (`eos_token_ids`); without a tokenizer, generate streams no text.
    """
    from edgec.runtimes import ort_cpu, qnn_htp

    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime '{runtime}' for this decoder: use one of {', '.join(RUNTIMES)}")
    contract = info.get("engine", info)
    if contract.get("kind") != CHUNKED_KIND:
        raise InputError(f"{onnx_path} comes without its chunked-decoder contract: export it again with --target npu")
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise InputError(f"tokenizer not found: {tokenizer}; export the bundle again")
    session = qnn_htp.load(Path(onnx_path)) if runtime == "qnn-htp" else ort_cpu.load(Path(onnx_path), threads)
    names = session.output_names
    return ChunkedLM(lambda feeds: dict(zip(names, session.run(feeds))), contract,
                     eos=info.get("eos_token_ids", contract.get("eos_token_ids", ())),
                     token_bytes=TokenBytes(Path(tokenizer)) if tokenizer else None,
                     threads=threads if runtime == "ort-cpu" else None)


def load_lm_cpu(onnx_path: Path, tokenizer: Path | None, info: dict) -> ChunkedLM:
    """The same static QDQ graph and host loop on ONNX Runtime's CPU provider."""
    return load_lm(onnx_path, tokenizer, info, runtime="ort-cpu")
