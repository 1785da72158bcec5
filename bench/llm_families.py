"""Every decoder family on every engine: greedy tokens of the float artifacts against transformers.

    python -m bench.llm_families [--families llama,gemma3_text] [--new-tokens 32] [--skip-runner]

Each family is a seeded bfloat16 checkpoint of transformers' own class with its features switched on
(edgec.zoo.seeded.FAMILY_CONFIGS; 2 layers, hidden 64; sliding windows shorter than the text where the
family has them; random weights: equivalence only). A cell is "same" when the engine's greedy tokens
equal transformers' for --new-tokens tokens; the npu cell reads "A16W8 on HTP" when the quantized graph
runs whole on the simulated HTP and generates (its float twin on the same host loop is the ort-cpu
column). The C++ runner (make desktop) runs the `.pte` of a float `edgec export --target cpu` bundle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CONTEXT, CHUNK = 64, 16
WINDOWS = {"mistral": {"sliding_window": 12}, "gemma3_text": {"sliding_window": 8}, "gemma2": {"sliding_window": 16}}
PROMPT = "And God said, Let there be light"
RUNNER = Path(__file__).resolve().parent.parent / "build" / "desktop" / "edgec-run"


def _cell(got: list[int], want: list[int]) -> str:
    if got == want:
        return "same"
    return f"differs at {next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))}"


def row(name: str, root: Path, new: int, runner: bool) -> dict:
    import torch
    import transformers
    from tokenizers import Tokenizer

    from edgec.exporters.executorch_llm import export_llm_pte
    from edgec.exporters.onnx_decoder_npu import export_float_decoder
    from edgec.exporters.onnx_genai import export_genai
    from edgec.exporters.onnx_stages import cut_stages
    from edgec.models.hf_decoder import from_hf_decoder
    from edgec.models.special_ids import eos_ids
    from edgec.runtimes import executorch_llm, htp_llm, ort_genai, tiered_lm
    from edgec.runtimes.kv_tiers import KVOptions
    from edgec.runtimes.llm import Sampling
    from edgec.targets.npu_lm import export_decoder_npu
    from edgec.zoo.seeded import seeded_decoder_dir

    src = seeded_decoder_dir(root / name, name, dtype=torch.bfloat16, max_position_embeddings=CONTEXT,
                             **WINDOWS.get(name, {}))
    hf = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, attn_implementation="eager")
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    ids = tok.encode(PROMPT).ids
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=new)[0, len(ids):].tolist()
    module = from_hf_decoder(hf.eval())
    ctx = min(CONTEXT, module.max_pos)  # LongRoPE's static table serves its original length
    greedy = lambda lm: lm.generate(ids, new, Sampling()).tokens  # noqa: E731
    out = {"family": name}
    export_genai(module, hf.config, src, root / f"{name}-genai", context=ctx)
    out["ort-genai"] = _cell(greedy(ort_genai.load_lm(root / f"{name}-genai")), want)
    export_llm_pte(module, hf.config, root / f"{name}.pte", ctx)
    out["executorch"] = _cell(greedy(executorch_llm.load_lm(root / f"{name}.pte", src / "tokenizer.json")), want)
    cfg = json.loads((root / f"{name}-genai" / "genai_config.json").read_text())
    cut_stages(root / f"{name}-genai" / "model.onnx", cfg, root / f"{name}-stages", module.attention())
    eos = eos_ids(hf.config, src)
    tiered = tiered_lm.load_lm(root / f"{name}-stages", src / "tokenizer.json",
                               {"kv": KVOptions(chunk=8), "eos_token_ids": eos})
    out["ort-tiered"] = _cell(greedy(tiered), want)
    contract = export_float_decoder(module, root / f"{name}-float.onnx", ctx, CHUNK)
    ends = {"eos_token_ids": eos}  # each host loop stops at the model's end ids, as transformers does
    out["ort-cpu (npu graph, float)"] = _cell(greedy(htp_llm.load_lm(root / f"{name}-float.onnx", None,
                                                                      {**contract, **ends}, runtime="ort-cpu")), want)
    calib = [np.asarray(tok.encode(t).ids[:ctx]) for t in (PROMPT * 4, "In the beginning God created")]
    art, q = export_decoder_npu(module, root / f"{name}-npu.onnx", ctx, CHUNK, calib)
    htp = q["checks"]["htp"]
    ran = len(greedy(htp_llm.load_lm(art.path, None, {**q, **ends}))) if htp["runs_fully"] else 0
    out["qnn-htp"] = f"A16W8 on HTP {htp['fraction']:.0%}, {ran} tokens" if ran else f"{htp['fraction']:.0%}, not run"
    out["iree-vulkan"] = _iree(module, root / name, greedy, want, ctx, ends)
    out["C++ runner"] = _runner(src, root / f"{name}-bundle", PROMPT, new, want, ctx) if runner else "skipped"
    return out


def _iree(module, root: Path, greedy, want, ctx: int, ends: dict) -> str:
    from edgec.exporters.iree import SOFTWARE_VULKAN, compile_module, import_onnx
    from edgec.exporters.onnx_decoder_npu import export_float_decoder
    from edgec.runtimes import iree_gpu

    try:
        if not iree_gpu.devices("vulkan"):
            return "no Vulkan device"
    except Exception as e:  # IREE missing
        return f"not installed ({e})"
    contract = export_float_decoder(module, root / "gpu.onnx", ctx, CHUNK)
    tags = {"edgec.api": "vulkan", "edgec.arch": SOFTWARE_VULKAN, "edgec.export": root.name}
    import_onnx(root / "gpu.onnx").write(root / "gpu.mlirbc", tags)
    mod = compile_module(root / "gpu.mlirbc", root / "gpu.vmfb", "vulkan", SOFTWARE_VULKAN, "fp32")
    return _cell(greedy(iree_gpu.load_lm(mod.path, None, {**contract, **ends})), want)


def _runner(src: Path, out: Path, prompt: str, new: int, want: list[int], ctx: int) -> str:
    if not RUNNER.is_file():
        return "not built (make desktop)"
    recipe = out.with_suffix(".json")
    recipe.write_text(json.dumps({"weights": "float", "context": ctx, "eval_samples": 1, "calib_samples": 1,
                                  "gguf": None, "compare_quantized_only": False}))
    done = subprocess.run([sys.executable, "-m", "edgec.toolchain.cli", "export", str(src), "--target", "cpu", "-o",
                           str(out), "--recipe", str(recipe), "--quiet"], capture_output=True, text=True)
    if done.returncode:
        return f"export failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:80]}"
    done = subprocess.run([str(RUNNER), str(out), "--prompt", prompt, "--max-new-tokens", str(new), "--json"],
                          capture_output=True, text=True)
    if done.returncode:
        return f"failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:60]}"
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    tokens = next((j["tokens"] for j in lines if "tokens" in j), None)
    return _cell(tokens, want) if tokens is not None else f"no tokens: {done.stderr.strip()[-80:]}"


def main() -> None:
    from edgec.toolchain.quiet import quiet_libraries
    from edgec.zoo.seeded import FAMILY_CONFIGS

    ap = argparse.ArgumentParser()
    ap.add_argument("--families", default=",".join(FAMILY_CONFIGS))
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--skip-runner", action="store_true")
    args = ap.parse_args()
    quiet_libraries()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.families.split(","):
            rows.append(row(name, Path(tmp), args.new_tokens, not args.skip_runner))
            print(json.dumps(rows[-1]), flush=True)
    cols = list(rows[0])
    print(f"\nGreedy tokens against transformers, {args.new_tokens} new tokens, seeded bfloat16 checkpoints")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    if any(v not in ("same", "skipped") and not v.startswith(("A16W8", "no Vulkan", "not built"))
           for r in rows for k, v in r.items() if k != "family"):
        sys.exit(1)


if __name__ == "__main__":
    main()
