"""Decode speed and memory with the KV cache in memory, offloaded naively, and tiered (exact, top-k, int8).

    python -m bench.kv_offload [--contexts 2048,8192,32768] [--steps 8] [--quality-windows 8]

Speed: a seeded Llama config (hidden 1024, 8 layers, 8 KV heads of 128: 64 KB of
KV per token, float32 weights; speed only, its weights are random) is exported
for ONNX Runtime GenAI and cut into stages, as `edgec generate MODEL
--kv-offload` does, and runs with edgec's tiered cache, 2 threads. Each context
is prefilled once through the runtime (all KV in memory) and saved; every
configuration then starts from that state in its own process (so its peak
RSS, VmHWM, is its own), loads it into its tiers chunk by chunk, and decodes
greedily: one warm-up step, then `--steps` timed steps, median reported.
Before every timed step the chunk files are evicted from the page cache
(posix_fadvise DONTNEED), so disk reads are real reads. The budget is 1/8 of
the full cache at each context.

  (a) all KV in RAM          --kv-offload none
  (b) naive offload          every chunk on disk, read back in full each step, one at a time (FlexGen-style)
  (c) exact with overlap     --kv-offload disk --kv-policy exact: hot window + read-ahead across layers
  (d) top-k                  --kv-offload disk --kv-policy topk
  (e) top-k, int8 chunks     (d) with --kv-dtype int8

Quality: the trained tinylm over held-out prose windows of its 512 positions,
each token after a 64-token prompt decoded as its own step, chunks of 16
tokens on the host tier: perplexity of top-k against exact, int8 chunks
against float ones, and top-k's recall of the chunks full attention weights
most.

Bars, at 8k and 32k tokens (--bar-contexts; 2k is a point of the plot): (c) >=
1.3x (b); (d) >= 3x (b); (d) >= 0.5x (a); peak RSS of (c)-(e) <= (budget +
weights) * 1.2, weights being the stage files' bytes; top-k perplexity <=
1.05x exact; int8 <= 1.02x float.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODES = {
    "a": ("all KV in RAM", dict(offload="none")),
    "b": ("naive offload (read all, no overlap)", dict(offload="disk", overlap=False, keep_hot=False)),
    "c": ("exact, overlap", dict(offload="disk")),
    "d": ("top-k", dict(offload="disk", policy="topk")),
    "e": ("top-k, int8 chunks", dict(offload="disk", policy="topk", dtype="int8")),
}
BARS = [("c", "b", 1.3), ("d", "b", 3.0), ("d", "a", 0.5)]


def seeded_model(out: Path, layers: int, hidden: int, kv_heads: int, head_dim: int, positions: int) -> Path:
    """HF directory of the seeded config, then its decoder stages (both kept in `out` across runs)."""
    model = out / f"model-{layers}x{hidden}-{kv_heads}x{head_dim}-{positions}"
    os.environ["EDGEC_CACHE"] = str(out / "cache")
    from edgec.toolchain.stages import stages_for_model

    if not (model / "config.json").is_file():
        import torch
        import transformers

        from edgec.calibration import prose
        from edgec.zoo.train_tinylm import save_hf_dir, train_tokenizer

        config = transformers.LlamaConfig(
            vocab_size=8192, hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
            num_attention_heads=hidden // head_dim, num_key_value_heads=kv_heads, head_dim=head_dim,
            max_position_embeddings=positions, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
        torch.manual_seed(0)
        save_hf_dir(transformers.LlamaForCausalLM(config).eval(), train_tokenizer(prose.split("calib"), 8192),
                    model.with_suffix(".partial"))
        model.with_suffix(".partial").rename(model)
    return stages_for_model(model, "seeded")


def weights_bytes(stages: Path) -> int:
    return sum(f.stat().st_size for f in stages.glob("stage_*"))


def vm(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


# -- workers (each its own process) ------------------------------------------------------------------

def prefill_worker(job: dict) -> dict:
    """Prefill `context` seeded-random tokens with all KV in memory; save each layer's K and V token-major."""
    from edgec.runtimes.kv_tiers import KVOptions
    from edgec.runtimes.tiered_lm import load_lm

    lm = load_lm(Path(job["stages"]), None, {"kv": KVOptions(chunk=job["chunk"])})
    n, state = job["context"], Path(job["state"])
    ids = np.random.default_rng(0).integers(3, lm.spec["vocab"], n)
    cache = lm.new_cache(n)
    t = time.perf_counter()
    logits = lm.prefill(cache, ids)
    took = time.perf_counter() - t
    state.mkdir(parents=True, exist_ok=True)
    for i in range(len(lm.spec["layers"])):
        k, v = cache.contents(i)
        k.transpose(1, 0, 2).tofile(state / f"k{i}.f32")  # [tokens, kvh, D]: a chunk is one contiguous read
        v.transpose(1, 0, 2).tofile(state / f"v{i}.f32")
    meta = {"context": n, "next": int(np.argmax(logits)), "prefill_s": took}
    (state / "meta.json").write_text(json.dumps(meta))
    return meta


def decode_worker(job: dict) -> dict:
    from edgec.runtimes.kv_tiers import KVOptions
    from edgec.runtimes.tiered_lm import load_lm

    state, steps = Path(job["state"]), job["steps"]
    meta = json.loads((state / "meta.json").read_text())
    n = meta["context"]
    opts = KVOptions(**job["kv"])
    lm = load_lm(Path(job["stages"]), None, {"kv": opts})
    baseline = vm("VmRSS")
    cache = lm.new_cache(n + steps + 2)
    layers = lm.spec["layers"]
    kvh, d, c = layers[0]["kv_heads"], layers[0]["head_dim"], opts.chunk
    files = [(open(state / f"k{i}.f32", "rb"), open(state / f"v{i}.f32", "rb")) for i in range(len(layers))]
    kbuf, vbuf = np.empty((c, kvh, d), np.float32), np.empty((c, kvh, d), np.float32)
    try:
        for start in range(0, n, c):  # as a prefill would fill it: chunk by chunk, every layer
            take = min(c, n - start)
            for i, (fk, fv) in enumerate(files):
                fk.readinto(kbuf[:take])
                fv.readinto(vbuf[:take])
                cache.append(i, kbuf[:take].transpose(1, 0, 2), vbuf[:take].transpose(1, 0, 2), start)
    finally:
        for fk, fv in files:
            fk.close()
            fv.close()
    loaded = {"rss": vm("VmRSS"), "hwm": vm("VmHWM")}
    token, pos, times, reads = meta["next"], n, [], []
    try:
        for step in range(steps + 1):
            cache.evict_page_cache()
            before = cache.stats.bytes_read
            t = time.perf_counter()
            logits = lm.forward(cache, np.array([token]), pos)
            dt = time.perf_counter() - t
            if step:  # the first step warms up
                times.append(dt)
                reads.append(cache.stats.bytes_read - before)
            token, pos = int(np.argmax(logits[0])), pos + 1
        return {"step_s": times, "tokens_per_s": 1 / float(np.median(times)), "peak_rss_mb": vm("VmHWM"),
                "baseline_rss_mb": baseline, "loaded_rss_mb": loaded["rss"], "loaded_hwm_mb": loaded["hwm"],
                "end_rss_mb": vm("VmRSS"), "mb_read_per_step": float(np.median(reads)) / 2**20,
                "kv_memory_mb": cache.memory_bytes() / 2**20}
    finally:
        cache.close()


def quality_worker(job: dict) -> dict:
    """tinylm: perplexity of each policy over held-out windows, every token after the prompt a decode step."""
    from tokenizers import Tokenizer

    from edgec.calibration import prose
    from edgec.runtimes.kv_tiers import KVOptions
    from edgec.runtimes.tiered_lm import load_lm
    from edgec.toolchain.load import inspect
    from edgec.toolchain.stages import stages_for_model

    src = inspect("tinylm")
    stages = stages_for_model(src.path, src.name)
    tok = Tokenizer.from_file(str(src.path / "tokenizer.json"))
    ids = np.concatenate([np.asarray(tok.encode(t).ids) for t in prose.split("heldout")])
    window, prefix, n = src.config.max_position_embeddings, job["prefix"], job["windows"]
    configs = {"exact": dict(), "topk": dict(policy="topk", topk=job["topk"]), "exact-int8": dict(dtype="int8"),
               "topk-int8": dict(policy="topk", topk=job["topk"], dtype="int8")}
    out = {}
    for name, extra in configs.items():
        opts = KVOptions(offload="host", budget=job["budget"], chunk=job["chunk"], **extra)
        lm = load_lm(stages, None, {"kv": opts})
        nll, count, hits, total, chunks = 0.0, 0, 0, 0, 0
        for w in range(n):
            seq = ids[w * window:(w + 1) * window]
            cache = lm.new_cache(len(seq))
            cache.audit = opts.policy == "topk"
            logits = lm.score_stepwise(seq, prefix, cache).astype(np.float64)
            target = seq[prefix:]
            logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
            nll += float((logz - logits[np.arange(len(target)), target]).sum())
            count += len(target)
            hits, total = hits + cache.stats.recall_hits, total + cache.stats.recall_total
            chunks = len(cache.layers[0].chunks)
            cache.close()
        out[name] = {"ppl": float(np.exp(nll / count)), "tokens": count,
                     "recall": hits / total if total else None, "chunks_per_layer": chunks}
    return out


WORKERS = {"prefill": prefill_worker, "decode": decode_worker, "quality": quality_worker}


def spawn(kind: str, job: dict) -> dict:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.run([sys.executable, "-m", "bench.kv_offload", "--worker", kind, json.dumps(job)],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the run -----------------------------------------------------------------------------------------

def plot(rows: dict, contexts: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m, (label, _) in MODES.items():
        ys = [rows[(n, m)]["tokens_per_s"] for n in contexts]
        ax.plot(contexts, ys, marker="o", label=f"({m}) {label}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(contexts, [f"{n // 1024}k" for n in contexts])
    ax.set_yticks([t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
                   if min(min(r["tokens_per_s"] for r in rows.values()) / 1.5, 1) <= t
                   <= max(r["tokens_per_s"] for r in rows.values()) * 1.5])
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("decode tokens/s (median)")
    ax.set_title("Decode speed vs context, KV budget = 1/8 of the cache (page cache evicted each step)")
    ax.title.set_fontsize(9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=2, metavar=("KIND", "JOB"), help=argparse.SUPPRESS)
    ap.add_argument("--contexts", default="2048,8192,32768")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--topk", type=int, default=8)
    ap.add_argument("--bar-contexts", default="8192,32768",
                    help="contexts the bars apply to (the others are points of the plot)")
    ap.add_argument("--quality-windows", type=int, default=8)
    ap.add_argument("--quality-topk", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench" / "kv_offload")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker[0]](json.loads(args.worker[1]))))
        return

    contexts = [int(c) for c in args.contexts.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    stages = seeded_model(args.out, args.layers, args.hidden, args.kv_heads, args.head_dim, max(contexts) + 64)
    weights = weights_bytes(stages)
    per_token = args.layers * 2 * args.kv_heads * args.head_dim * 4
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; 2 threads; seeded Llama "
          f"{args.layers} layers, hidden {args.hidden}, {args.kv_heads} KV heads x {args.head_dim}; weights "
          f"{weights / 2**20:.0f} MB (float32); KV {per_token // 1024} KB/token; chunks of {args.chunk} tokens, "
          f"top-{args.topk} chunks per layer; page cache evicted (POSIX_FADV_DONTNEED) before every timed step",
          flush=True)
    rows = {}
    for n in contexts:
        state = args.out / f"state-{args.layers}x{args.hidden}-{args.kv_heads}x{args.head_dim}-{n}"
        if not (state / "meta.json").is_file():
            meta = spawn("prefill", {"stages": str(stages), "context": n, "state": str(state), "chunk": args.chunk})
            print(f"prefilled {n} tokens in {meta['prefill_s']:.0f} s", flush=True)
        budget = n * per_token // 8
        for m, (label, kv) in MODES.items():
            kv = {"chunk": args.chunk, "topk": args.topk, **kv}
            if kv["offload"] != "none":
                kv["budget"] = budget
                kv["dir"] = str(args.out / "kvdir")
            r = spawn("decode", {"stages": str(stages), "state": str(state), "steps": args.steps, "kv": kv})
            r.update(budget_mb=budget / 2**20, cache_mb=n * per_token / 2**20)
            rows[(n, m)] = r
            print(f"  {n:6d} ({m}) {label:38s} {r['tokens_per_s']:7.2f} tok/s  peak RSS {r['peak_rss_mb']:6.0f} MB"
                  f"  read {r['mb_read_per_step']:7.1f} MB/step", flush=True)

    quality = spawn("quality", {"windows": args.quality_windows, "prefix": 64, "chunk": 16,
                                "topk": args.quality_topk, "budget": 1 << 20})
    lines = report(rows, contexts, quality, weights, args)
    text = "\n".join(lines)
    print(text)
    plot(rows, contexts, args.out / "decode_vs_context.png")
    (args.out / "report.md").write_text(text + "\n\n![decode tokens/s against context](decode_vs_context.png)\n")
    (args.out / "results.json").write_text(json.dumps({"rows": {f"{n}-{m}": r for (n, m), r in rows.items()},
                                                        "quality": quality}, indent=1))
    print(f"\nreport: {args.out / 'report.md'}; plot: {args.out / 'decode_vs_context.png'}")


def report(rows: dict, contexts: list[int], quality: dict, weights: int, args) -> list[str]:
    lines = ["", "| context | cache MB | budget MB | mode | decode tok/s | x (b) | x (a) | MB read/step | "
                 "peak RSS MB | RSS limit MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    verdicts, bar_contexts = [], {int(c) for c in args.bar_contexts.split(",")}
    for n in contexts:
        a, b = rows[(n, "a")]["tokens_per_s"], rows[(n, "b")]["tokens_per_s"]
        for m, (label, _) in MODES.items():
            r = rows[(n, m)]
            limit = (r["budget_mb"] + weights / 2**20) * 1.2
            lines.append(f"| {n} | {r['cache_mb']:.0f} | {r['budget_mb']:.0f} | ({m}) {label} | "
                         f"{r['tokens_per_s']:.2f} | {r['tokens_per_s'] / b:.2f} | {r['tokens_per_s'] / a:.2f} | "
                         f"{r['mb_read_per_step']:.1f} | {r['peak_rss_mb']:.0f} | "
                         f"{limit:.0f} |")
            if m in "cde" and n in bar_contexts:
                ok = r["peak_rss_mb"] <= limit
                verdicts.append(f"{'PASS' if ok else 'FAIL'} {n} tokens ({m}) peak RSS {r['peak_rss_mb']:.0f} MB "
                                f"<= (budget + weights) x 1.2 = {limit:.0f} MB")
        for x, y, bar in BARS if n in bar_contexts else []:
            ratio = rows[(n, x)]["tokens_per_s"] / rows[(n, y)]["tokens_per_s"]
            verdicts.append(f"{'PASS' if ratio >= bar else 'FAIL'} {n} tokens ({x}) / ({y}) = {ratio:.2f} >= {bar}")
    q = quality
    lines += ["", f"Quality (tinylm, {q['exact']['tokens']} held-out tokens, each a decode step after a 64-token "
                  f"prompt; 16-token chunks, {q['exact']['chunks_per_layer']} per layer at the end of a window; "
                  f"top-{args.quality_topk} chunks per layer + sink + recent):", "",
              "| cache | perplexity | vs exact float | top-k recall |", "|---|---|---|---|"]
    for name, r in q.items():
        recall = f"{r['recall']:.3f}" if r["recall"] is not None else ""
        lines.append(f"| {name} | {r['ppl']:.3f} | {r['ppl'] / q['exact']['ppl']:.5f} | {recall} |")
    topk = q["topk"]["ppl"] / q["exact"]["ppl"]
    int8 = q["exact-int8"]["ppl"] / q["exact"]["ppl"]
    verdicts.append(f"{'PASS' if topk <= 1.05 else 'FAIL'} top-k perplexity {topk:.5f}x exact <= 1.05")
    verdicts.append(f"{'PASS' if int8 <= 1.02 else 'FAIL'} int8 chunks perplexity {int8:.5f}x float <= 1.02")
    return lines + [""] + verdicts


if __name__ == "__main__":
    main()
