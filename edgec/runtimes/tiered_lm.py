"""Decoding with a tiered KV cache: ONNX Runtime runs the decoder stages, `kv_tiers` the attention.

The model math is the exported decoder's (`exporters/onnx_stages`: the graphs
between attention cores, at true position ids); this module feeds each
layer's new keys and values into the tiered cache and its queries into the
cache's chunked attention. Each generation owns one cache, closed (its disk
chunks removed) however the generation ends: EOS, an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
from pathlib import Path

import numpy as np

from edgec.errors import BackendError, InputError
from edgec.exporters.formats import SPEC_FILE
from edgec.runtimes.kv_tiers import KVOptions, TieredKV
from edgec.runtimes.llm import Generation, OnText, Recorder, Sampling, sample
from edgec.runtimes.tokens import TokenBytes

THREADS = 2
PREFILL = 256  # prompt tokens per step: bounds the activations and the attention scores


class TieredLM:
    """`LMSession` over a folder of decoder stages, with the KV cache kept as `kv` says."""

    def __init__(self, stages: Path, token_bytes: TokenBytes | None, kv: KVOptions):
        import onnxruntime as ort

        kv.check()
        spec_path = Path(stages) / SPEC_FILE
        try:
            self.spec = json.loads(spec_path.read_text())
        except (OSError, ValueError) as e:
            raise BackendError(f"{stages} holds no readable {SPEC_FILE} ({e.__class__.__name__}): export the "
                               "decoder stages again") from e
        self.kv, self.bytes = kv, token_bytes
        self.context = int(self.spec["max_positions"])
        self.threads = THREADS
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
        self.fingerprint = _fingerprint(Path(stages), self.spec)
        try:
            self.stages = []
            for f in self.spec["stages"]:
                self.stages.append(ort.InferenceSession(str(Path(stages) / f), options,
                                                        providers=["CPUExecutionProvider"]))
                _release_heap()
            self._inputs = [[i.name for i in s.get_inputs()] for s in self.stages]
        except Exception as e:  # ORT raises its own types for missing or broken files
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise BackendError(f"ONNX Runtime cannot load the decoder stages in {stages} ({reason}): "
                               "export them again") from e

    def new_cache(self, max_tokens: int | None = None) -> TieredKV:
        return TieredKV(self.spec["layers"], self.kv, self.fingerprint, max_tokens or self.context)

    def forward(self, cache: TieredKV, ids: np.ndarray, start: int) -> np.ndarray:
        """Logits [S, vocab] for ids [S] at positions start .. start+S-1, growing `cache`."""
        ids = np.asarray(ids, np.int64).reshape(1, -1)
        pos = np.arange(start, start + ids.shape[1], dtype=np.int64)
        if start + ids.shape[1] > self.context:
            raise InputError(f"position {start + ids.shape[1] - 1} is past this model's {self.context} positions")
        cache.begin_step(ids.shape[1])
        # a stage may read input_ids or attention_mask for their shape alone: fed where it asks
        feed = {"input_ids": ids, "position_ids": pos[None],
                "attention_mask": np.ones((1, start + ids.shape[1]), np.int64)}
        x, q, k, v = self._run(0, feed)
        last = len(self.stages) - 1
        for i in range(last):
            cache.append(i, k[0], v[0], start)
            feed["x"], feed["ctx"] = x, cache.attend(i, q[0].reshape(-1, ids.shape[1], q.shape[-1]), start)[None]
            if i + 1 < last:
                x, q, k, v = self._run(i + 1, feed)
            else:
                logits = self._run(last, feed)[0]
        cache.end_step()
        return logits[0]

    def _run(self, i: int, feed: dict) -> list[np.ndarray]:
        return self.stages[i].run(None, {name: feed[name] for name in self._inputs[i]})

    def prefill(self, cache: TieredKV, ids: np.ndarray, start: int = 0) -> np.ndarray:
        """The last position's logits after feeding `ids` in steps of PREFILL tokens."""
        logits = None
        for s in range(0, len(ids), PREFILL):
            logits = self.forward(cache, ids[s:s + PREFILL], start + s)
        return logits[-1]

    def score(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        cache = self.new_cache(len(ids))
        try:
            return np.concatenate([self.forward(cache, ids[s:s + PREFILL], s) for s in range(0, len(ids), PREFILL)])
        finally:
            cache.close()

    def score_stepwise(self, ids: np.ndarray, prefix: int, cache: TieredKV | None = None) -> np.ndarray:
        """Logits [len(ids) - prefix, vocab] for positions prefix-1 .. : the prefix is prefilled, every later
        token is a decode step of its own, so a top-k policy chooses chunks for each one."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        own = cache is None
        cache = cache or self.new_cache(len(ids))
        try:
            rows = [self.prefill(cache, ids[:prefix])]
            for t in range(prefix, len(ids) - 1):
                rows.append(self.forward(cache, ids[t:t + 1], t)[0])
            return np.stack(rows)
        finally:
            if own:
                cache.close()

    def generate(self, ids: list[int], max_new_tokens: int, sampling: Sampling,
                 on_text: OnText | None = None) -> Generation:
        ids = [int(i) for i in ids]
        if not ids or len(ids) >= self.context:
            raise InputError(f"the prompt has {len(ids)} tokens: this model takes 1 to {self.context - 1}")
        out = Recorder(self.bytes, on_text)
        rng = np.random.default_rng(sampling.seed)
        cache = self.new_cache(min(len(ids) + max_new_tokens, self.context))
        self.last_cache = cache
        try:
            logits = self.prefill(cache, np.asarray(ids))
            pos = len(ids)
            while True:
                token = sample(logits, sampling, rng)
                out.add(token)
                if len(out.tokens) >= max_new_tokens or pos >= self.context or token in self.eos:
                    break
                logits = self.forward(cache, np.array([token]), pos)[0]
                pos += 1
        finally:
            cache.close()
        return out.finish(len(ids))

    eos: tuple[int, ...] = ()


M_MMAP_THRESHOLD = -3


def _release_heap() -> None:
    """Hand the heap ORT freed while loading (the parsed model, weights before prepacking) back to the OS,
    and have every later block of 64 KB or more mapped on its own, so a freed chunk buffer leaves at
    once: glibc keeps freed heap otherwise, and the process would hold each stage's weights about twice
    and the cache's transient buffers long after use."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def _fingerprint(stages: Path, spec: dict) -> bytes:
    """The model and export the cache's keys and values belong to: the spec and every stage file by name,
    size and modification time (a re-export is another export), and the graphs' bytes."""
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for name in spec["stages"]:
        for f in (stages / name, stages / (name + ".data")):
            try:
                st = f.stat()
                h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
                if f.suffix == ".onnx":
                    h.update(f.read_bytes())
            except FileNotFoundError:
                continue
            except OSError as e:
                raise BackendError(f"cannot read decoder stage {f} ({e.strerror}): cut the stages again") from e
    return h.digest()


def load_lm(stages: Path, tokenizer: Path | None, info: dict | None = None) -> TieredLM:
    """`info`: the generation fields (`eos_token_ids`) and `kv`, the KVOptions (default: all in memory)."""
    info = info or {}
    lm = TieredLM(Path(stages), TokenBytes(Path(tokenizer)) if tokenizer else None, info.get("kv") or KVOptions())
    eos = info.get("eos_token_ids") or []
    lm.eos = tuple(int(e) for e in eos)
    return lm
