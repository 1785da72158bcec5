"""A tiered KV cache with attention over its chunks: hot window in memory, then host RAM or disk.

Per layer the cache is cut into chunks of `chunk` tokens (keys after RoPE,
values). The newest chunks and the first one (the attention sink) stay in a
per-layer arena in memory as long as the budget allows; older ones move to
the host tier (encoded in `dtype`) or to disk (`kv_store`). Each chunk keeps
Quest's abstract of its keys, the per-channel min and max, so the upper bound
of q.k over it is known without reading it.

Attention is an online softmax over parts (the arena, then each chunk as it
arrives), so no step ever needs the whole cache in memory: `exact` streams
every chunk through, `topk` streams the sink, the recent chunks and the N
chunks of highest bound per KV head. Reads run on daemon threads ahead of use,
into a window of `staging` bytes, across layer boundaries when the whole
step's reads are known in advance (exact), so the disk works while the CPU
computes.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgec.errors import InputError
from edgec.runtimes.kv_store import DTYPES, ChunkRef, ChunkStore, decode, encode

OFFLOAD = ("none", "host", "disk")
POLICIES = ("exact", "topk")
EMPTY = np.iinfo(np.int64).max  # the position of an empty arena row: masked for every query


@dataclass(frozen=True)
class KVOptions:
    """How the cache is kept; the CLI's --kv-* options one to one."""

    offload: str = "none"
    budget: int | None = None  # bytes of KV state in memory (hot window, staging, abstracts); host/disk only
    policy: str = "exact"
    topk: int = 8  # chunks per layer besides the sink and the recent ones
    chunk: int = 64  # tokens per chunk
    dtype: str = "float32"  # of offloaded chunks
    dir: Path | None = None  # disk tier root (default: a temporary folder)
    sink: int = 1  # first chunks always attended
    recent: int = 1  # last sealed chunks always attended (the open one always is)
    overlap: bool = True  # read ahead on reader threads; off: read each chunk when it is needed
    io_threads: int = 4
    keep_hot: bool = True  # off: every sealed chunk leaves memory at once (a naive offload)

    def check(self) -> None:
        if self.offload not in OFFLOAD:
            raise InputError(f"unknown --kv-offload '{self.offload}': use one of {', '.join(OFFLOAD)}")
        if self.policy not in POLICIES:
            raise InputError(f"unknown --kv-policy '{self.policy}': use one of {', '.join(POLICIES)}")
        if self.dtype not in DTYPES:
            raise InputError(f"unknown --kv-dtype '{self.dtype}': use one of {', '.join(DTYPES)}")
        if self.chunk < 1 or self.topk < 1 or self.io_threads < 1:
            raise InputError("--kv-chunk and --kv-topk must be at least 1")
        if self.offload == "none" and self.dtype != "float32":
            raise InputError("--kv-dtype applies to offloaded chunks: use it with --kv-offload host or disk")
        if self.offload != "none" and self.budget is None:
            raise InputError(f"--kv-offload {self.offload} needs --kv-budget (bytes of KV kept in memory, "
                             "e.g. 64MB)")


@dataclass
class Chunk:
    start: int
    end: int
    slot: int | None  # arena slot while in memory
    host: bytes | None = None  # host tier: the encoded payload
    ref: ChunkRef | None = None  # disk tier


@dataclass
class StepStats:
    """What the cache did, summed over steps: for reports and tests."""

    steps: int = 0
    chunks_attended: int = 0
    chunks_read: int = 0
    bytes_read: int = 0
    chunks_spilled: int = 0
    recall_hits: int = 0  # top-k audit: selected chunks among the N that carry most attention weight
    recall_total: int = 0

    @property
    def recall(self) -> float:
        return self.recall_hits / self.recall_total if self.recall_total else float("nan")


def _hidden(pos: np.ndarray, row_pos: np.ndarray, window: int | None) -> np.ndarray:
    """An additive mask [rows, T]: -inf for keys after a row's position or, with a sliding window, at or
    before position - window."""
    hidden = pos[None, :] > row_pos[:, None]
    if window is not None:
        hidden |= pos[None, :] <= row_pos[:, None] - window
    return np.where(hidden, -np.inf, 0).astype(np.float32)


class _Online:
    """Softmax(q k^T) v accumulated part by part (flash-attention style), float32; scores bounded by
    softcap * tanh(s / softcap) where the layer has a soft cap (Gemma 2)."""

    def __init__(self, q: np.ndarray, softcap: float | None = None):
        self.q, self.softcap = q, softcap  # q [kvh, R, D], already scaled
        self.qt = np.ascontiguousarray(q.transpose(0, 2, 1))
        kvh, rows, d = q.shape
        self.m = np.full((kvh, rows, 1), -np.inf, np.float32)
        self.l = np.zeros((kvh, rows, 1), np.float32)
        self.acc = np.zeros((kvh, rows, d), np.float32)

    def add(self, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None = None) -> None:
        s = np.matmul(k, self.qt).transpose(0, 2, 1)  # k [kvh, T, D] as stored: a gemv per head, no copy
        if self.softcap is not None:
            s = np.tanh(s / np.float32(self.softcap)) * np.float32(self.softcap)
        if mask is not None:
            s += mask
        m = np.maximum(self.m, s.max(axis=-1, keepdims=True))
        safe = np.where(np.isfinite(m), m, 0.0).astype(np.float32)
        p = np.exp(s - safe)
        scale = np.exp(self.m - safe)
        self.l = self.l * scale + p.sum(axis=-1, keepdims=True)
        self.acc = self.acc * scale + np.matmul(p, v)
        self.m = m

    def result(self) -> np.ndarray:
        return self.acc / self.l


@dataclass
class _Layer:
    kv_heads: int
    dim: int
    chunk: int
    k: np.ndarray = None  # arena [kvh, slots * chunk, D]
    v: np.ndarray = None
    pos: np.ndarray = None  # [slots * chunk] token position of each arena row, EMPTY if none
    free: list[int] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)  # sealed, in token order
    kmin: np.ndarray = None  # [max chunks, kvh, D]; the first len(chunks) rows are in use
    kmax: np.ndarray = None
    open_slot: int | None = None
    open_start: int = 0
    open_n: int = 0

    slots: int = 0  # arena size up front (np.zeros: pages cost memory only once written)
    max_chunks: int = 0

    def __post_init__(self):
        self.k = np.zeros((self.kv_heads, self.slots * self.chunk, self.dim), np.float32)
        self.v = np.zeros_like(self.k)
        self.pos = np.full(self.slots * self.chunk, EMPTY, np.int64)
        self.free = list(range(self.slots - 1, -1, -1))
        self.kmin = np.zeros((self.max_chunks, self.kv_heads, self.dim), np.float32)
        self.kmax = np.zeros_like(self.kmin)

    def alloc(self) -> int:
        if not self.free:
            slots = self.pos.size // self.chunk
            grow = max(slots, 4)
            self.k = np.concatenate([self.k, np.zeros((self.kv_heads, grow * self.chunk, self.dim), np.float32)], 1)
            self.v = np.concatenate([self.v, np.zeros((self.kv_heads, grow * self.chunk, self.dim), np.float32)], 1)
            self.pos = np.concatenate([self.pos, np.full(grow * self.chunk, EMPTY, np.int64)])
            self.free = list(range(slots + grow - 1, slots - 1, -1))
        return self.free.pop()

    def rows(self, slot: int) -> slice:
        return slice(slot * self.chunk, (slot + 1) * self.chunk)

    @property
    def resident(self) -> list[Chunk]:
        return [c for c in self.chunks if c.slot is not None]


class TieredKV:
    """The KV cache of one generation; `append` then `attend` per layer, `end_step` after the last."""

    def __init__(self, layers: list[dict], options: KVOptions, fingerprint: bytes, max_tokens: int):
        options.check()
        self.o = options
        shapes = {(l["kv_heads"], l["head_dim"]) for l in layers}
        if len(shapes) != 1:
            raise InputError(f"the tiered KV cache needs the same KV heads and head size in every layer, this "
                             f"decoder has {sorted(shapes)}")
        (self.kv_heads, self.dim), = shapes
        self.groups = [l["heads"] // l["kv_heads"] for l in layers]
        # stages cut before the per-layer settings were recorded are plain Llama attention
        self.scale = [l.get("scale") or l["head_dim"] ** -0.5 for l in layers]
        self.softcap = [l.get("softcap") for l in layers]
        self.window = [l.get("window") for l in layers]
        self.stats = StepStats()
        self.audit = False  # top-k: also measure the recall of the selection
        c = options.chunk
        self.chunk_bytes = 2 * self.kv_heads * c * self.dim * 4
        self.hot_slots = None  # per layer, open slot included; None: unbounded
        self.store = None
        if options.offload != "none":
            self.hot_slots, self.staging = self._plan_memory(len(layers), max_tokens)
        slots = self.hot_slots if self.hot_slots is not None else -(-max_tokens // c) + 1
        self.layers = [_Layer(l["kv_heads"], self.dim, c, slots=slots, max_chunks=-(-max_tokens // c))
                       for l in layers]
        if options.offload == "disk":
            self.store = ChunkStore(options.dir, fingerprint, options.dtype, self.kv_heads, self.dim)
        self._buffers: list[bytearray] = []
        self._ahead: _ReadAhead | None = None
        self._last_pick: dict[int, list[Chunk]] = {}  # top-k: each layer's offloaded picks of the last step
        self._buffers_lock = threading.Lock()
        self.readers = _Readers(options.io_threads) if options.overlap and options.offload != "none" else None

    # -- memory plan -------------------------------------------------------------------------------

    def _plan_memory(self, n_layers: int, max_tokens: int) -> tuple[int, int]:
        """The budget pays for abstracts (at the longest context), read staging, then the hot window."""
        o, c = self.o, self.o.chunk
        abstracts = n_layers * -(-max_tokens // c) * 2 * self.kv_heads * self.dim * 4
        # chunks read ahead; counted twice: a batch that arrived is also joined into one array to attend
        staging = min(max(2 * o.io_threads, o.budget // 8 // self.chunk_bytes), 256) if o.overlap else 1
        open_slots = n_layers  # every layer's open chunk lives in its arena
        fixed = abstracts + (2 * staging + open_slots) * self.chunk_bytes
        if o.budget < fixed:
            raise InputError(f"--kv-budget {_mb(o.budget)} is too small for this model at {max_tokens} tokens: "
                             f"it needs {_mb(fixed)} for chunk abstracts, read buffers and each layer's open "
                             f"chunk; raise --kv-budget or use a smaller --kv-chunk")
        spare = (o.budget - fixed) // self.chunk_bytes // n_layers if o.keep_hot else 0
        return 1 + spare, staging

    # -- writing -----------------------------------------------------------------------------------

    def append(self, i: int, k: np.ndarray, v: np.ndarray, start: int) -> None:
        """k, v [kvh, S, D] of positions start .. start+S-1, in order."""
        layer, done = self.layers[i], 0
        while done < k.shape[1]:
            if layer.open_slot is None:
                layer.open_slot, layer.open_start, layer.open_n = layer.alloc(), start + done, 0
            take = min(k.shape[1] - done, layer.chunk - layer.open_n)
            rows = slice(layer.open_slot * layer.chunk + layer.open_n,
                         layer.open_slot * layer.chunk + layer.open_n + take)
            layer.k[:, rows], layer.v[:, rows] = k[:, done:done + take], v[:, done:done + take]
            layer.pos[rows] = np.arange(start + done, start + done + take)
            layer.open_n += take
            done += take
            if layer.open_n == layer.chunk:
                self._seal(i)
                self._enforce(i)

    def _seal(self, i: int) -> None:
        layer = self.layers[i]
        rows = layer.rows(layer.open_slot)
        keys = layer.k[:, rows]
        n = len(layer.chunks)
        if n == layer.kmin.shape[0]:  # past the planned context: room for as many again
            layer.kmin = np.concatenate([layer.kmin, np.zeros_like(layer.kmin[:max(n, 1)])])
            layer.kmax = np.concatenate([layer.kmax, np.zeros_like(layer.kmax[:max(n, 1)])])
        np.min(keys, axis=1, out=layer.kmin[n])
        np.max(keys, axis=1, out=layer.kmax[n])
        layer.chunks.append(Chunk(layer.open_start, layer.open_start + layer.chunk, layer.open_slot))
        layer.open_slot = None

    def _enforce(self, i: int) -> None:
        """Spill the oldest resident chunk (the sink last) until the layer's arena fits its share."""
        if self.hot_slots is None:
            return
        layer = self.layers[i]
        resident = layer.resident
        keep = self.hot_slots - 1  # the open chunk's slot, now or at the next token
        while len(resident) > keep:
            sinks = [c for c in resident if c.start < self.o.sink * self.o.chunk]
            others = [c for c in resident if c not in sinks]
            victim = (others or sinks)[0]
            self._spill(i, victim)
            resident.remove(victim)

    def _spill(self, i: int, c: Chunk) -> None:
        layer = self.layers[i]
        rows = layer.rows(c.slot)
        k, v = layer.k[:, rows], layer.v[:, rows]
        if self.store is not None:
            c.ref = self.store.write(i, c.start, k, v)
        else:
            c.host = b"".join(p.tobytes() for p in encode(k, v, self.o.dtype))
        layer.pos[rows] = EMPTY
        layer.free.append(c.slot)
        c.slot = None
        self.stats.chunks_spilled += 1

    # -- reading -----------------------------------------------------------------------------------

    def _load(self, i: int, c: Chunk) -> tuple[np.ndarray, np.ndarray]:
        if c.ref is not None:
            return self.store.read(c.ref)
        return decode(c.host, self.o.dtype, self.layers[i].kv_heads, c.end - c.start, self.dim)

    def _load_pooled(self, i: int, c: Chunk):
        """(k, v, buffer): a disk chunk read into a reused buffer, handed back by `_release` once attended,
        so steady decoding allocates nothing per chunk (freed read buffers would stay with the heap)."""
        if c.ref is None:
            with self._buffers_lock:
                self.stats.chunks_read += 1
                self.stats.bytes_read += len(c.host)
            return (*self._load(i, c), None)
        with self._buffers_lock:
            buf = self._buffers.pop() if self._buffers else bytearray(c.ref.nbytes + 1)
            self.stats.chunks_read += 1
            self.stats.bytes_read += c.ref.nbytes
        try:
            return (*self.store.read(c.ref, buf), buf)
        except BaseException:
            self._release(buf)
            raise

    def _release(self, buf: bytearray | None) -> None:
        if buf is not None:
            with self._buffers_lock:
                self._buffers.append(buf)

    def attend(self, i: int, q: np.ndarray, start: int) -> np.ndarray:
        """q [heads, S, D] at positions start .. start+S-1 (already appended) -> context [S, heads * D]."""
        layer, g = self.layers[i], self.groups[i]
        heads, s, d = q.shape
        qg = (q.reshape(layer.kv_heads, g * s, d) * np.float32(self.scale[i])).astype(np.float32)
        row_pos = np.tile(np.arange(start, start + s), g)  # row r*S + j is query position start + j
        acc = _Online(qg, self.softcap[i])
        window = self.window[i]
        if self.o.policy == "topk" and s == 1:
            resident, offloaded = self._select(i, qg)
        else:
            resident = [c for c in layer.chunks if c.slot is not None]
            offloaded = [c for c in layer.chunks if c.slot is None]
        self._attend_arena(acc, layer, resident, row_pos, s, window)
        for batch in self._stream(i, offloaded):  # what has arrived, in one product
            k = np.concatenate([kv[0] for _, kv in batch], 1) if len(batch) > 1 else batch[0][1][0]
            v = np.concatenate([kv[1] for _, kv in batch], 1) if len(batch) > 1 else batch[0][1][1]
            acc.add(k, v, self._mask([c for c, _ in batch], row_pos, start, window))
            for _, kv in batch:
                self._release(kv[2])
        self.stats.chunks_attended += len(resident) + len(offloaded) + 1
        out = acc.result().reshape(layer.kv_heads, g, s, d).reshape(heads, s, d)
        return np.ascontiguousarray(out.transpose(1, 0, 2)).reshape(s, heads * d)

    @staticmethod
    def _mask(chunks: list[Chunk], row_pos: np.ndarray, start: int, window: int | None) -> np.ndarray | None:
        """Causal inside chunks laid side by side that hold some of the new tokens, and the sliding window;
        None where neither hides anything."""
        if all(c.end <= start for c in chunks) and (window is None or
                                                    all(c.start > row_pos.max() - window for c in chunks)):
            return None
        pos = np.concatenate([np.arange(c.start, c.end) for c in chunks])
        return _hidden(pos, row_pos, window)

    def _attend_arena(self, acc: _Online, layer: _Layer, chunks: list[Chunk], row_pos: np.ndarray, s: int,
                      window: int | None) -> None:
        """The open chunk and the resident `chunks`: the whole arena when that is what is attended, else the
        gathered columns; column blocks keep the scores small for long prompts."""
        if len(chunks) == len(layer.resident):
            k, v, pos = layer.k, layer.v, layer.pos
        else:
            slots = [c.slot for c in chunks] + ([layer.open_slot] if layer.open_slot is not None else [])
            cols = (np.asarray(slots, np.int64)[:, None] * layer.chunk + np.arange(layer.chunk)[None]).reshape(-1)
            k, v, pos = layer.k[:, cols], layer.v[:, cols], layer.pos[cols]
        block = max(layer.chunk, (1 << 22) // max(acc.q.shape[1] * layer.kv_heads, 1) // layer.chunk * layer.chunk)
        for a in range(0, pos.size, block):
            p = pos[a:a + block]
            mask = _hidden(p, row_pos, window) if s > 1 or window is not None or (p == EMPTY).any() else None
            acc.add(k[:, a:a + block], v[:, a:a + block], mask)

    def _select(self, i: int, qg: np.ndarray) -> tuple[list[Chunk], list[Chunk]]:
        """Sink and recent chunks, plus the top-N others by estimated attention mass (resident, offloaded).

        Quest's bound on each query row's logit over a chunk, sum_d max(q_d min_d, q_d max_d), turned
        into that row's estimated share of attention (a softmax over chunks) and summed over every
        query head: one choice per layer, so each chosen chunk is read once for all heads.
        """
        layer, o = self.layers[i], self.o
        n = len(layer.chunks)
        always = set(range(min(o.sink, n))) | set(range(max(n - o.recent, 0), n))
        cand = np.array([j for j in range(n) if j not in always], np.int64)
        picked = set(always)
        if cand.size:
            qe = qg[None]  # [1, kvh, rows, D]
            bound = np.maximum(qe * layer.kmin[cand][:, :, None, :], qe * layer.kmax[cand][:, :, None, :]).sum(-1)
            top = min(o.topk, cand.size)
            picks = np.argpartition(-_shares(bound), top - 1)[:top]
            picked |= set(cand[picks].tolist())
            if self.audit:
                self._audit(i, qg, cand, picks, top)
        chunks = [layer.chunks[j] for j in sorted(picked)]
        return [c for c in chunks if c.slot is not None], [c for c in chunks if c.slot is None]

    def _audit(self, i: int, qg: np.ndarray, cand: np.ndarray, picks: np.ndarray, top: int) -> None:
        """Recall of the selection against the `top` candidates that full attention weights most."""
        layer = self.layers[i]
        keys = np.stack([self._keys(i, layer.chunks[j]) for j in cand])  # [cand, kvh, C, D]
        logits = np.einsum("hrd,nhcd->nhrc", qg, keys)
        p = np.exp(logits - logits.max(axis=(0, 3), keepdims=True))
        mass = (p / p.sum(axis=(0, 3), keepdims=True)).sum(axis=(1, 2, 3))  # [cand]
        truth = set(np.argsort(-mass)[:top].tolist())
        self.stats.recall_hits += len(truth & set(picks.tolist()))
        self.stats.recall_total += top

    def _keys(self, i: int, c: Chunk) -> np.ndarray:
        if c.slot is not None:
            return self.layers[i].k[:, self.layers[i].rows(c.slot)]
        return self._load(i, c)[0]

    def begin_step(self, s: int) -> None:
        """Before layer 0 of a step of `s` tokens, queue the step's reads so that layer i+1's come in while
        layer i computes: with exact attention, every chunk on another tier; with top-k, the chunks each
        layer picked last step (picks change slowly; what is not picked again is dropped unread if it can
        be, and the rest is read when the layer knows its picks)."""
        self._ahead = None
        if self.readers is None:
            return
        if self.o.policy == "exact" or s > 1:
            plan = [(i, c) for i, layer in enumerate(self.layers) for c in layer.chunks if c.slot is None]
            self._ahead = _ReadAhead(self.readers, self._load_pooled, plan, self.staging, self._release)
        elif self._last_pick:
            plan = [(i, c) for i in sorted(self._last_pick) for c in self._last_pick[i] if c.slot is None]
            self._ahead = _ReadAhead(self.readers, self._load_pooled, plan, max(self.staging // 2, 1), self._release)

    def _stream(self, i: int, chunks: list[Chunk]):
        """Batches of (chunk, (k, v)): with read-ahead, whatever has arrived since the last batch; without,
        the whole layer, read one chunk after the other."""
        if self.o.policy == "topk":
            self._last_pick[i] = chunks
        if not chunks:
            return
        if self.readers is None:
            yield [(c, self._load_pooled(i, c)) for c in chunks]
            return
        ahead = self._ahead
        planned = ahead.planned(i) if ahead is not None else set()
        rest = [c for c in chunks if id(c) not in planned]  # not foreseen (or spilled during this step)
        reader = _ReadAhead(self.readers, self._load_pooled, [(i, c) for c in rest], max(self.staging // 2, 1),
                            self._release) if rest else None
        if planned:
            yield from ahead.take(i, {id(c) for c in chunks})
        if reader is not None:
            yield from reader.take(i, None)

    def end_step(self) -> None:
        self.stats.steps += 1

    def evict_page_cache(self) -> None:
        if self.store is not None:
            self.store.evict_page_cache()

    @property
    def tokens(self) -> int:
        layer = self.layers[0]
        return (layer.chunks[-1].end if layer.chunks else 0) + layer.open_n

    def memory_bytes(self) -> int:
        """KV state held in memory now: arenas, abstracts and the host tier."""
        total = 0
        for layer in self.layers:
            total += layer.k.nbytes + layer.v.nbytes + 2 * len(layer.chunks) * layer.kmin[0].nbytes
            total += sum(len(c.host) for c in layer.chunks if c.host is not None)
        return total

    def contents(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Layer i's keys and values [kvh, tokens, D] in token order, from whichever tier holds them."""
        layer = self.layers[i]
        parts = [(layer.k[:, layer.rows(c.slot)], layer.v[:, layer.rows(c.slot)]) if c.slot is not None
                 else self._load(i, c) for c in layer.chunks]
        if layer.open_slot is not None:
            rows = slice(layer.open_slot * layer.chunk, layer.open_slot * layer.chunk + layer.open_n)
            parts.append((layer.k[:, rows], layer.v[:, rows]))
        return np.concatenate([p[0] for p in parts], 1), np.concatenate([p[1] for p in parts], 1)

    def summary(self) -> dict:
        return {"tokens": self.tokens, "chunks": len(self.layers[0].chunks), "spilled": self.stats.chunks_spilled,
                "chunks_read": self.stats.chunks_read, "mb_read": round(self.stats.bytes_read / 2**20, 2),
                "steps": self.stats.steps, "offload": self.o.offload, "policy": self.o.policy}

    def close(self) -> None:
        if self.readers is not None:
            self.readers.close()
            self.readers = None
        if self.store is not None:
            self.store.close()


class _Readers:
    """Daemon threads that run reads from a queue. Nothing ever waits for them to finish: an interrupted
    main thread (Ctrl-C, SIGTERM) can clean up and leave whatever state a read was in."""

    def __init__(self, n: int):
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        for k in range(n):
            threading.Thread(target=self._work, name=f"kv-read-{k}", daemon=True).start()
        self.n = n

    def _work(self) -> None:
        while (job := self.jobs.get()) is not None:
            key, load, args, out = job
            try:
                out.put((key, load(*args), None))
            except BaseException as e:  # handed to the reader that asked
                out.put((key, None, e))

    def submit(self, key, load, args, out: queue.SimpleQueue) -> None:
        self.jobs.put((key, load, args, out))

    def close(self) -> None:
        for _ in range(self.n):
            self.jobs.put(None)


class _ReadAhead:
    """Reads of a planned list of (layer, chunk), in plan order, at most `window` in flight or unconsumed."""

    def __init__(self, readers: _Readers, load, plan: list[tuple[int, Chunk]], window: int, release):
        self.readers, self.load, self.window, self.release = readers, load, window, release
        self.plan = deque(plan)
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.pending: dict[int, tuple[int, Chunk]] = {}  # id(chunk) -> (layer, chunk), submitted
        self.arrived: dict[int, list] = {}  # layer -> [(chunk, result)], read but not taken
        self.fill()

    def fill(self) -> None:
        while self.plan and len(self.pending) + sum(map(len, self.arrived.values())) < self.window:
            i, c = self.plan.popleft()
            self.pending[id(c)] = (i, c)
            self.readers.submit(id(c), self.load, (i, c), self.results)

    def planned(self, i: int) -> set[int]:
        return {id(c) for j, c in list(self.pending.values()) + list(self.plan) if j == i} | \
            {id(c) for c, _ in self.arrived.get(i, [])}

    def _receive(self) -> None:
        key, result, error = self.results.get()
        i, c = self.pending.pop(key)
        if error is not None:
            raise error
        self.arrived.setdefault(i, []).append((c, result))

    def take(self, i: int, wanted: set[int] | None):
        """Layer i's planned chunks in batches, as their reads complete; a plan is consumed layer by layer.
        Planned chunks not `wanted` are dropped: unread where their read has not started."""
        if wanted is not None:
            self.plan = deque((j, c) for j, c in self.plan if j != i or id(c) in wanted)
        for j in [j for j in self.arrived if j < i]:  # layers that never asked: their reads go unused
            for _, result in self.arrived.pop(j):
                self.release(result[2])
        while True:
            self.fill()
            mine = any(j == i for j, _ in self.pending.values()) or any(j == i for j, _ in self.plan)
            if not self.arrived.get(i):
                if not mine:
                    return
                self._receive()
                continue
            batch = []
            for c, result in self.arrived.pop(i):
                if wanted is None or id(c) in wanted:
                    batch.append((c, result))
                else:
                    self.release(result[2])
            if batch:
                yield batch


def _shares(bound: np.ndarray) -> np.ndarray:
    """bound [chunks, kvh, rows] -> each chunk's estimated attention share, summed over the query rows."""
    e = np.exp(bound - bound.max(axis=0, keepdims=True))
    return (e / e.sum(axis=0, keepdims=True)).sum(axis=(1, 2))


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"

