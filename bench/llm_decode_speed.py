"""Decode speed of a realistic-size decoder on this CPU against the engines a user would pick instead.

    python -m bench.llm_decode_speed [--layers 12] [--hidden 768] [--context 256] [--new-tokens 64]
                                     [--rounds 3] [--parts speed,tinylm,prune] [--prune 0.25]

A seeded Llama config of about 100M parameters (hidden 768, 12 layers, 12
query / 4 KV heads, SwiGLU 2048, vocab 32000, tied embeddings: speed only,
its weights are random), exported the way `edgec export --target cpu` does
(ONNX for ONNX Runtime GenAI on the fused kernels, float and int4; the
traced plain-op int4 graph beside it; ExecuTorch programs in float and
8da4w; model.gguf Q4_0), against onnxruntime-genai's own model builder
(int4, cpu) and llama.cpp's own convert_hf_to_gguf.py + quantizer (Q4_0)
on the same weights. Every engine generates greedily after the same 64-token
prompt in its own process, 2 threads; --rounds rounds, engines alternating
within each, the median per engine. Each row also shows the bytes a decoded
token reads and the fraction of this machine's memory read bandwidth it
reaches (edgec.toolchain.decode_bound).

Then, on the zoo's trained tinylm: edgec's int4 ONNX against the builder's
(greedy tokens on 8 held-out prompts, file size) and edgec's Q4_0 GGUF
against llama.cpp's own (held-out perplexity).

llama.cpp's converter comes from the llama-cpp-python sdist of the installed
version (downloaded once from PyPI into ~/.cache/edgec).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from edgec.toolchain.quiet import quiet_libraries

THREADS = 2


def seeded_dir(out: Path, layers: int, hidden: int) -> Path:
    import torch
    import transformers

    from edgec.calibration import prose
    from edgec.zoo.train_tinylm import save_hf_dir, train_tokenizer

    tok = train_tokenizer(prose.split("calib"), vocab=4096)  # real text in, ids within the model's vocab
    config = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 256 * 256 or 256,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=max(hidden // 64 // 3, 1),
        head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1,
        pad_token_id=2)
    torch.manual_seed(0)
    save_hf_dir(transformers.LlamaForCausalLM(config).eval(), tok, out)
    return out


def builder_int4(src: Path, out: Path) -> Path:
    """onnxruntime-genai's own model builder, int4 for the CPU."""
    done = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(src), "-o", str(out),
                           "-p", "int4", "-e", "cpu", "-c", str(out.parent / f"{out.name}-cache")],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the GenAI model builder failed: {done.stderr.strip()[-500:]}")
    return out / "model.onnx"


def llama_cpp_source() -> Path:
    """llama.cpp's tree from the installed llama-cpp-python's sdist (its converter and gguf-py)."""
    from importlib.metadata import version

    from edgec.cache import cache_root

    ver = version("llama_cpp_python")
    root = cache_root() / "llama-cpp-src" / ver
    tree = root / f"llama_cpp_python-{ver}" / "vendor" / "llama.cpp"
    if not (tree / "convert_hf_to_gguf.py").is_file():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={ver}", "-d", str(root)], check=True)
        with tarfile.open(next(root.glob("llama_cpp_python-*.tar.gz"))) as tar:
            tar.extractall(root, filter="data")
    return tree


# llama.cpp's converter names a BPE pre-tokenizer by hashing how it splits a test text, and knows only the
# published tokenizers'; the tokenizers trained here get the name edgec's reader gives them. The weights go
# through llama.cpp's own code untouched.
CONVERT = """import runpy, sys
tree, src, out, pre = sys.argv[1:5]
sys.path[:0] = [tree, tree + "/gguf-py"]
from conversion import base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = ["convert_hf_to_gguf.py", src, "--outfile", out, "--outtype", "f32"]
runpy.run_path(tree + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def llama_cpp_q4_0(src: Path, out: Path) -> Path:
    """llama.cpp's own path from an HF directory: convert_hf_to_gguf.py to F32, then its quantizer to Q4_0."""
    import transformers

    from edgec.exporters.gguf import quantize
    from edgec.exporters.gguf_vocab import read_vocab

    config = transformers.AutoConfig.from_pretrained(src)
    pre = read_vocab(src, config.vocab_size, config).pre
    f32 = out.with_suffix(".f32.gguf")
    done = subprocess.run([sys.executable, "-c", CONVERT, str(llama_cpp_source()), str(src), str(f32), pre],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"llama.cpp's convert_hf_to_gguf.py failed: {done.stderr.strip()[-500:]}")
    quantize(f32, out, "Q4_0")
    f32.unlink()
    return out


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def speed_table(args, tmp: Path) -> dict:
    import transformers

    from edgec.calibration import prose
    from edgec.exporters.executorch_llm import export_llm_pte
    from edgec.exporters.gguf import export_gguf
    from edgec.exporters.onnx_genai import export_genai
    from edgec.models.hf_decoder import from_hf_decoder
    from edgec.runtimes.tokens import TokenBytes
    from edgec.toolchain import decode_bound as db
    from edgec.toolchain.lm_speed import measure

    src = seeded_dir(tmp / "model", args.layers, args.hidden)
    hf = transformers.AutoModelForCausalLM.from_pretrained(src)
    module = from_hf_decoder(hf)
    params = sum(p.numel() for p in hf.parameters())
    info = {"bos_token_id": 0, "eos_token_ids": [1], "pad_token_id": 2, "context_length": args.context,
            "vocab_size": 32000}
    prompt = TokenBytes(src / "tokenizer.json").encode(prose.split("heldout")[0])[:64]
    ctx = args.context
    builds = {  # name -> (runtime, format, build)
        "float eager@torch": ("torch", None, lambda: src),
        "float.pte@executorch": ("executorch", "pte", lambda: export_llm_pte(module, hf.config, tmp / "f.pte", ctx)),
        "8da4w.pte@executorch": ("executorch", "pte",
                                 lambda: export_llm_pte(module, hf.config, tmp / "q.pte", ctx, weights="8da4w")),
        "float onnx@ort-genai": ("ort-genai", "onnx",
                                 lambda: export_genai(module, hf.config, src, tmp / "onnx-float", context=ctx)),
        "int4 onnx@ort-genai": ("ort-genai", "onnx", lambda: export_genai(module, hf.config, src, tmp / "onnx-int4",
                                                                         weights="int4", context=ctx)),
        "int4 onnx, plain graph@ort-genai": ("ort-genai", "onnx", lambda: export_genai(
            module, hf.config, src, tmp / "onnx-plain", weights="int4", context=ctx, graph="plain")),
        "GenAI builder int4@ort-genai": ("ort-genai", "onnx", lambda: builder_int4(src, tmp / "builder")),
        "model.gguf Q4_0@llama-cpp": ("llama-cpp", "gguf",
                                      lambda: export_gguf(module, hf.config, src, tmp / "edgec.gguf", "Q4_0")),
        "llama.cpp's own Q4_0@llama-cpp": ("llama-cpp", "gguf", lambda: llama_cpp_q4_0(src, tmp / "own.gguf")),
    }
    paths, manifests, export_s = {}, {}, {}
    for name, (rt, fmt, build) in builds.items():
        t0 = time.perf_counter()
        built = build()
        export_s[name] = round(time.perf_counter() - t0, 1)
        paths[name] = Path(getattr(built, "path", built))
        manifests[name] = getattr(built, "manifest", {})
    rounds: dict[str, list[dict]] = {name: [] for name in builds}
    for _ in range(args.rounds):  # engines alternate within a round: drift on a shared machine hits all alike
        for name, (rt, _, _) in builds.items():
            rounds[name].append(measure(rt, paths[name], src / "tokenizer.json", info, prompt, args.new_tokens,
                                        runs=1))
    bandwidth = db.read_bandwidth(THREADS)
    position = len(prompt) + args.new_tokens / 2
    rows = {}
    for name, (rt, fmt, _) in builds.items():
        r = dict(rounds[name][-1])
        for key in ("decode_tokens_per_s", "prefill_tokens_per_s", "time_to_first_token_ms"):
            r[key] = statistics.median(x[key] for x in rounds[name])
        r["bytes_per_token"] = db.bytes_per_token(module, rt, position, paths[name], fmt, manifests[name])
        r["fraction"] = db.fraction(r["decode_tokens_per_s"], r["bytes_per_token"], bandwidth)
        r["file_bytes"] = sum(p.stat().st_size for p in paths[name].parent.glob(paths[name].name + "*")) \
            if fmt else None
        r["export_s"] = export_s[name]
        rows[name] = r
    from edgec.runtimes.machine import machine_info

    print(f"\nseeded Llama, {params / 1e6:.1f}M parameters, context {ctx}, prompt {len(prompt)} tokens, "
          f"{args.new_tokens} new tokens, {THREADS} threads, median of {args.rounds} alternating rounds; "
          f"{machine_info().get('cpu')}; memory read bandwidth {bandwidth / 1e9:.1f} GB/s ({db.bandwidth_method()})")
    base = rows["float eager@torch"]["decode_tokens_per_s"]
    head = f"{'engine':<34}{'decode tok/s':>13}{'vs eager':>9}{'TTFT ms':>9}{'MB/token':>10}{'of bound':>9}" \
           f"{'MB file':>9}{'peak MB':>9}"
    print(head + "\n" + "-" * len(head))
    for name, r in rows.items():
        print(f"{name:<34}{r['decode_tokens_per_s']:>13.1f}{r['decode_tokens_per_s'] / base:>8.2f}x"
              f"{r['time_to_first_token_ms']:>9.0f}{r['bytes_per_token'] / 1e6:>10.1f}{r['fraction']:>9.2f}"
              f"{(r['file_bytes'] or 0) / 1e6:>9.1f}{r['peak_rss_mb']:>9.0f}")
    i4, b4 = rows["int4 onnx@ort-genai"], rows["GenAI builder int4@ort-genai"]
    g, own = rows["model.gguf Q4_0@llama-cpp"], rows["llama.cpp's own Q4_0@llama-cpp"]
    edgec_rows = {k: v for k, v in rows.items() if "builder" not in k and "own" not in k and "eager" not in k}
    fastest = max(edgec_rows, key=lambda k: edgec_rows[k]["decode_tokens_per_s"])
    bars = {
        f"int4 ONNX decode {_ratio(i4['decode_tokens_per_s'], b4['decode_tokens_per_s'])} the builder's (>= 1.0x)":
            i4["decode_tokens_per_s"] >= b4["decode_tokens_per_s"],
        f"int4 ONNX file {_ratio(i4['file_bytes'], b4['file_bytes'])} the builder's (<= 1.05x)":
            i4["file_bytes"] <= 1.05 * b4["file_bytes"],
        f"Q4_0 GGUF decode {_ratio(g['decode_tokens_per_s'], own['decode_tokens_per_s'])} llama.cpp's own (>= 0.95x)":
            g["decode_tokens_per_s"] >= 0.95 * own["decode_tokens_per_s"],
        f"fastest edgec artifact ({fastest}) at {edgec_rows[fastest]['fraction']:.2f} of the bound (>= 0.8)":
            edgec_rows[fastest]["fraction"] >= 0.8,
    }
    return {"rows": rows, "bars": bars, "bandwidth": bandwidth}


def tinylm_checks(tmp: Path) -> dict:
    """On the trained tinylm: edgec's int4 ONNX vs the builder's, edgec's Q4_0 GGUF vs llama.cpp's own."""
    import transformers

    from edgec.calibration import prose
    from edgec.exporters.gguf import export_gguf
    from edgec.exporters.onnx_genai import export_genai
    from edgec.models.hf_decoder import from_hf_decoder
    from edgec.runtimes import llama_cpp, ort_genai
    from edgec.runtimes.llm import Sampling
    from edgec.runtimes.tokens import TokenBytes
    from edgec.toolchain.zoo import resolve

    src = resolve("tinylm").locate()
    hf = transformers.AutoModelForCausalLM.from_pretrained(src)
    module = from_hf_decoder(hf)
    ours = export_genai(module, hf.config, src, tmp / "tiny-int4", weights="int4")
    theirs = builder_int4(src, tmp / "tiny-builder")
    tok = TokenBytes(src / "tokenizer.json")
    chapters = prose.split("heldout")
    prompts = [tok.encode(" ".join(c.split()[:12 + 3 * i]))[:48] for i, c in enumerate(chapters[:8])]
    a, b = ort_genai.load_lm(ours.path.parent), ort_genai.load_lm(theirs.parent)
    same = sum(a.generate(p, 32, Sampling()).tokens == b.generate(p, 32, Sampling()).tokens for p in prompts)
    size = lambda p: sum(f.stat().st_size for f in p.parent.glob("model.onnx*"))  # noqa: E731
    g_ours = export_gguf(module, hf.config, src, tmp / "tiny.gguf", "Q4_0").path
    g_own = llama_cpp_q4_0(src, tmp / "tiny-own.gguf")
    ids = np.asarray(tok.encode(" ".join(chapters)), np.int64)
    ctx = hf.config.max_position_embeddings
    ppl = {name: _perplexity(llama_cpp.load_lm(path), ids, ctx) for name, path in
           (("edgec", g_ours), ("llama.cpp", g_own))}
    print(f"\ntinylm: edgec int4 ONNX greedy tokens equal the builder's on {same} of {len(prompts)} prompts "
          f"(32 new tokens each); file {size(ours.path) / 1e6:.2f} MB vs the builder's {size(theirs) / 1e6:.2f} MB")
    print(f"tinylm: held-out perplexity of Q4_0 GGUF: edgec {ppl['edgec']:.3f}, llama.cpp's own "
          f"{ppl['llama.cpp']:.3f} ({ppl['edgec'] / ppl['llama.cpp']:.4f}x) over {len(ids)} tokens")
    return {"bars": {f"tinylm int4 greedy tokens equal the builder's on {same}/{len(prompts)} prompts (all)":
                     same == len(prompts),
                     f"tinylm Q4_0 perplexity {ppl['edgec'] / ppl['llama.cpp']:.4f}x llama.cpp's own (<= 1.01x)":
                     ppl["edgec"] <= 1.01 * ppl["llama.cpp"]},
            "perplexity": ppl, "same_prompts": same}


def pruning_on_gguf(src: Path, tmp: Path, ratios: list[float], rounds: int, new_tokens: int,
                    trained: bool) -> dict:
    """FLAP-pruned decoders as Q4_0 GGUF: decode speed against the unpruned Q4_0 and, on a trained model,
    held-out perplexity against the unpruned float model."""
    import torch
    import transformers

    from edgec.calibration import prose
    from edgec.exporters.gguf import export_gguf
    from edgec.models.hf_decoder import from_hf_decoder
    from edgec.passes.prune import PruneConfig, prune
    from edgec.runtimes import llama_cpp
    from edgec.runtimes.tokens import TokenBytes
    from edgec.toolchain.lm_speed import measure

    hf = transformers.AutoModelForCausalLM.from_pretrained(src)
    module = from_hf_decoder(hf).eval()
    tok = TokenBytes(src / "tokenizer.json")
    ctx = min(128, hf.config.max_position_embeddings)
    calib = np.asarray(tok.encode(" ".join(prose.split("calib"))), np.int64)
    batches = [(torch.from_numpy(calib[i:i + ctx])[None],) for i in range(0, 32 * ctx, ctx)]
    heldout = np.asarray(tok.encode(" ".join(prose.split("heldout"))), np.int64)
    prompt = [int(t) for t in heldout[:64]]
    info = {"eos_token_ids": [], "context_length": 256}
    files, ppl = {}, {}
    with torch.no_grad():
        float_ppl = _perplexity(_Eager(module), heldout, ctx) if trained else None
    for ratio in [0.0, *ratios]:
        pruned = module if ratio == 0 else prune(module, batches, PruneConfig(ratio=ratio)).module
        files[ratio] = export_gguf(pruned, hf.config, src, tmp / f"prune{ratio}.gguf", "Q4_0").path
        if trained:
            with torch.no_grad():
                ppl[ratio] = {"float": _perplexity(_Eager(pruned), heldout, ctx),
                              "Q4_0": _perplexity(llama_cpp.load_lm(files[ratio]), heldout, ctx)}
    speed = {r: [] for r in files}
    for _ in range(rounds):
        for r, path in files.items():
            speed[r].append(measure("llama-cpp", path, src / "tokenizer.json", info, prompt, new_tokens,
                                    runs=1)["decode_tokens_per_s"])
    speed = {r: statistics.median(v) for r, v in speed.items()}
    print(f"\npruning ({src.name}), Q4_0 GGUF on llama.cpp, decode median of {rounds} alternating rounds"
          + (f"; unpruned float perplexity {float_ppl:.3f}" if trained else ""))
    for r in files:
        line = f"  prune {r:<5} {files[r].stat().st_size / 1e6:>7.1f} MB  {speed[r]:>8.1f} tok/s " \
               f"({speed[r] / speed[0.0]:.2f}x unpruned)"
        if trained:
            line += f"  perplexity float {ppl[r]['float']:.3f}, Q4_0 {ppl[r]['Q4_0']:.3f} " \
                    f"({ppl[r]['Q4_0'] / float_ppl:.3f}x unpruned float)"
        print(line)
    return {"speed": speed, "perplexity": ppl, "float_perplexity": float_ppl,
            "bytes": {r: f.stat().st_size for r, f in files.items()}}


class _Eager:
    """The float module scored like an engine session."""

    def __init__(self, module):
        self.module = module

    def score(self, ids: np.ndarray) -> np.ndarray:
        import torch

        return self.module(torch.from_numpy(np.asarray(ids, np.int64))[None])[0].numpy()


def _perplexity(lm, ids: np.ndarray, ctx: int) -> float:
    nll, n = 0.0, 0
    for start in range(0, len(ids) - 1, ctx):
        window = ids[start:start + ctx]
        if len(window) < 2:
            break
        logits = lm.score(window).astype(np.float64)
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= logp[np.arange(len(window) - 1), window[1:]].sum()
        n += len(window) - 1
    return float(np.exp(nll / n))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parts", default="speed,tinylm,prune", help="which of speed, tinylm, prune to run")
    ap.add_argument("--prune", default="0.25,0.35,0.5", help="comma-separated pruning ratios for the GGUF speed "
                                                          "check; the bars read the largest that holds perplexity")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    quiet_libraries()
    out: dict = {"bars": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "speed" in parts:
            out.update(speed_table(args, tmp))
        if "tinylm" in parts:
            tiny = tinylm_checks(tmp)
            out["bars"].update(tiny.pop("bars"))
            out["tinylm"] = tiny
        if "prune" in parts:
            out["pruning"] = pruning(args, tmp, [float(r) for r in args.prune.split(",")], out["bars"])
    print()
    for bar, ok in out["bars"].items():
        print(f"{'PASS' if ok else 'FAIL'}  {bar}")
    print(json.dumps(out, default=str))


def pruning(args, tmp: Path, ratios: list[float], bars: dict) -> dict:
    from edgec.toolchain.zoo import resolve

    src = tmp / "model" if (tmp / "model").is_dir() else seeded_dir(tmp / "model", args.layers, args.hidden)
    tiny = pruning_on_gguf(resolve("tinylm").locate(), tmp / "tiny-prune", ratios, args.rounds, args.new_tokens, True)
    big = pruning_on_gguf(src, tmp / "big-prune", ratios, args.rounds, args.new_tokens, False)
    # the bars read the largest ratio whose Q4_0 perplexity stays within 1.10x of the unpruned float model
    held = [r for r in ratios if tiny["perplexity"][r]["Q4_0"] <= 1.10 * tiny["float_perplexity"]]
    best = max(held) if held else min(ratios)
    s, b = tiny["speed"][best] / tiny["speed"][0.0], big["speed"][best] / big["speed"][0.0]
    q = tiny["perplexity"][best]["Q4_0"] / tiny["float_perplexity"]
    bars.update({f"tinylm prune {best} Q4_0 decode {s:.2f}x unpruned Q4_0 (>= 1.25x)": s >= 1.25,
                 f"tinylm prune {best} Q4_0 perplexity {q:.3f}x unpruned float (<= 1.10x)": q <= 1.10,
                 f"100M prune {best} Q4_0 decode {b:.2f}x unpruned Q4_0 (>= 1.25x)": b >= 1.25})
    return {"tinylm": tiny, "seeded": big}


if __name__ == "__main__":
    main()
