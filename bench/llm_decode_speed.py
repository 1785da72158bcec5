"""Decode speed and file size of a realistic-size decoder on this CPU, every engine in one run.

    python -m bench.llm_decode_speed [--layers 12] [--hidden 768] [--context 256] [--new-tokens 64]

A seeded Llama config of about 100M parameters (hidden 768, 12 layers, 12
query / 4 KV heads, SwiGLU 2048, vocab 32000, tied embeddings: speed only,
its weights are random). It is exported the way `edgec export --target cpu`
does (ONNX for ONNX Runtime GenAI in float and int4, ExecuTorch programs in
float and 8da4w), and each engine generates greedily after the same 64-token
prompt in its own process, 2 threads, median of 3 runs after a warm-up.
Bars: the 8da4w `.pte` decodes >= 2.0x the tokens/s of float eager torch with
a file <= 0.30x the float `.pte`; the int4 ONNX through ort-genai >= 2.0x float eager.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgec.toolchain.quiet import quiet_libraries


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()
    quiet_libraries()
    import transformers

    from edgec.calibration import prose
    from edgec.exporters.executorch_llm import export_llm_pte
    from edgec.exporters.onnx_genai import export_genai
    from edgec.models.hf_decoder import from_hf_decoder
    from edgec.runtimes.machine import machine_info
    from edgec.runtimes.tokens import TokenBytes
    from edgec.toolchain.lm_speed import measure

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = seeded_dir(tmp / "model", args.layers, args.hidden)
        hf = transformers.AutoModelForCausalLM.from_pretrained(src)
        params = sum(p.numel() for p in hf.parameters())
        module = from_hf_decoder(hf)
        info = {"bos_token_id": 0, "eos_token_ids": [1], "pad_token_id": 2, "context_length": args.context,
                "vocab_size": 32000}
        prompt = TokenBytes(src / "tokenizer.json").encode(prose.split("heldout")[0])[:64]
        builds, export_s = {}, {}
        for name, build in [
            ("float.pte@executorch", lambda: export_llm_pte(module, hf.config, tmp / "float.pte", args.context)),
            ("8da4w.pte@executorch", lambda: export_llm_pte(module, hf.config, tmp / "8da4w.pte", args.context,
                                                            weights="8da4w")),
            ("float onnx@ort-genai", lambda: export_genai(module, hf.config, src, tmp / "onnx-float",
                                                          weights="float", context=args.context)),
            ("int4 onnx@ort-genai", lambda: export_genai(module, hf.config, src, tmp / "onnx-int4",
                                                         weights="int4", context=args.context)),
        ]:
            t0 = time.perf_counter()
            builds[name] = build()
            export_s[name] = round(time.perf_counter() - t0, 1)
        rows = {"float eager@torch": measure("torch", src, src / "tokenizer.json", info, prompt, args.new_tokens)}
        for name, art in builds.items():
            rows[name] = measure(art.runtime, art.path, src / "tokenizer.json", info, prompt, args.new_tokens)
            rows[name]["bytes"] = art.bytes
            rows[name]["export_s"] = export_s[name]
        base = rows["float eager@torch"]["decode_tokens_per_s"]
        print(f"seeded Llama, {params / 1e6:.1f}M parameters, context {args.context}, prompt {len(prompt)} tokens, "
              f"{args.new_tokens} new tokens; {machine_info().get('cpu')}")
        print(f"{'engine':<24}{'decode tok/s':>14}{'vs eager':>10}{'prefill tok/s':>15}{'TTFT ms':>10}"
              f"{'peak MB':>9}{'MB file':>9}{'export s':>10}")
        print("-" * 101)
        for name, r in rows.items():
            print(f"{name:<24}{r['decode_tokens_per_s']:>14.1f}{r['decode_tokens_per_s'] / base:>9.2f}x"
                  f"{r['prefill_tokens_per_s']:>15.1f}{r['time_to_first_token_ms']:>10.0f}{r['peak_rss_mb']:>9.0f}"
                  f"{r.get('bytes', 0) / 1e6:>9.1f}{r.get('export_s', 0):>10.1f}")
        q, f, i4 = rows["8da4w.pte@executorch"], rows["float.pte@executorch"], rows["int4 onnx@ort-genai"]
        bars = {"8da4w .pte decode >= 2.0x float eager": q["decode_tokens_per_s"] / base >= 2.0,
                "8da4w .pte file <= 0.30x float .pte": q["bytes"] / f["bytes"] <= 0.30,
                "int4 ONNX (ort-genai) decode >= 2.0x float eager": i4["decode_tokens_per_s"] / base >= 2.0}
        fastest = max(rows, key=lambda k: rows[k]["decode_tokens_per_s"])
        print(f"\nfastest decode: {fastest}; 8da4w file {q['bytes'] / f['bytes']:.3f}x the float .pte")
        for bar, ok in bars.items():
            print(f"{'PASS' if ok else 'FAIL'}  {bar}")
        print(json.dumps({"rows": rows, "bars": bars}))


if __name__ == "__main__":
    main()
