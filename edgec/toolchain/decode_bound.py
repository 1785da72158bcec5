"""The bound on decode speed: each decoded token reads every weight matrix once (the token table one row)
and the KV cache so far, so tok/s x bytes per token cannot pass the memory read bandwidth.

The fraction of that bound an engine reaches says how much speed its kernels
leave on the table; the bytes per token say what a smaller artifact (fewer
bits, pruned layers) can buy at most.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path


BANDWIDTH_RUNS = 7


def bandwidth_bytes() -> int:
    """The probe's size: 8x the last-level cache, at least 256 MiB, so the caches hold none of it (and an
    export's peak memory barely moves)."""
    from edgec.runtimes.timing import llc_bytes

    return max(256 * 2**20, 8 * (llc_bytes(default=None) or 0)) // 4 * 4


def bandwidth_method() -> str:
    return (f"sum of a {bandwidth_bytes() // 2**20} MiB float32 tensor (torch), median of {BANDWIDTH_RUNS} "
            "after a warm-up")


def read_bandwidth(threads: int) -> float:
    """Bytes/s this machine streams from memory on `threads` threads: a vectorised sum over a tensor far
    larger than the caches, which no kernel reading the same bytes can beat by much (a float32
    matrix-vector product reaches about 0.6 of it here: its multiply-adds, not memory, bind it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        data = torch.ones(bandwidth_bytes() // 4)
        data.sum()
        times = []
        for _ in range(BANDWIDTH_RUNS):
            t0 = time.perf_counter()
            data.sum()
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return data.numel() * 4 / statistics.median(times)


def weight_bytes_per_token(path: Path, fmt: str, manifest: dict | None = None) -> int | None:
    """Weight bytes a decoded token reads from this artifact: all of them but the token table's (one row
    a token), unless the table is also the output head. Counted from the file's tensors for ONNX and GGUF;
    for a `.pte` the file less the table its exporter records; None where neither is known."""
    path = Path(path)
    if fmt == "onnx":
        return _onnx_weights(path)
    if fmt == "gguf":
        return _gguf_weights(path)
    table = ((manifest or {}).get("engine") or {}).get("token_table_bytes")
    return None if table is None else path.stat().st_size - int(table)


def _onnx_weights(path: Path) -> int:
    import onnx
    from onnx.external_data_helper import uses_external_data

    graph = onnx.load(str(path), load_external_data=False).graph
    uses: dict[str, set[bool]] = {}  # tensor -> whether each use reads a row (a lookup) or all of it
    for n in graph.node:
        for i, t in enumerate(n.input):
            row = (n.op_type in ("Gather", "GatherBlockQuantized") and i != 1) or \
                (n.op_type == "GroupQueryAttention" and i in (7, 8))  # RoPE tables: one row a token
            uses.setdefault(t, set()).add(row)
    lookups = {t for t, kinds in uses.items() if kinds == {True}}
    total = 0
    for init in graph.initializer:
        if init.name in lookups:
            continue
        if uses_external_data(init):
            total += int(next(e.value for e in init.external_data if e.key == "length"))
        else:
            total += len(init.raw_data) or onnx.numpy_helper.to_array(init).nbytes
    return total


def _gguf_weights(path: Path) -> int:
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    tied = "output.weight" not in tensors  # llama.cpp reads the token table as the output head
    return sum(n for name, n in tensors.items() if tied or name != "token_embd.weight")


def torch_weight_bytes(module) -> int:
    """What eager float32 torch reads a token: every parameter but an untied token table."""
    total = sum(p.numel() for p in module.parameters()) * 4
    tied = module.lm_head.weight is module.embed.weight
    return total if tied else total - module.embed.weight.numel() * 4


# the KV cache's element size per engine: llama.cpp keeps f16 keys and values, the others float32
KV_ELEMENT_BYTES = {"llama-cpp": 2}


def kv_bytes_per_token(module, position: float, element_bytes: int) -> int:
    """KV cache a token reads at `position`: every layer's keys and values so far."""
    per_position = sum(2 * b.attn.kv_heads * b.attn.head_dim for b in module.layers) * element_bytes
    return int(per_position * position)


def bytes_per_token(module, runtime: str, position: float, path: Path | None = None, fmt: str | None = None,
                    manifest: dict | None = None) -> int | None:
    """Weights and KV cache a token decoded at `position` reads: from the artifact at `path` (format `fmt`)
    on `runtime`, or, with no artifact, from eager torch over `module` itself; None where the artifact's
    weights cannot be counted."""
    weights = torch_weight_bytes(module) if fmt is None else weight_bytes_per_token(path, fmt, manifest)
    if weights is None:
        return None
    return weights + kv_bytes_per_token(module, position, KV_ELEMENT_BYTES.get(runtime, 4))


def fraction(tokens_per_s: float, bytes_per_token: int, bandwidth: float) -> float:
    return tokens_per_s * bytes_per_token / bandwidth
