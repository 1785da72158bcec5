"""The gpu target end to end: accuracy of each module against float, speed where a real GPU is present.

    python -m bench.gpu [--models minilm,vit-digits] [--precisions fp32,fp16] [--runs 50] [--new-tokens 32]
                        [--out out/bench/gpu]

For each model and precision: `edgec export --target gpu` (CUDA modules for the
GPU found, else Vulkan), the module's cosine / top-1 / max difference against
the float ONNX on held-out data, and `edgec bench` against ORT CPU in the same
run; where PyTorch sees a CUDA GPU, torch eager fp16 on it too. Then a seeded
tiny Llama's decode step: greedy tokens against the float ONNX, and decode
speed. On a machine with no GPU the modules run on Mesa's software Vulkan
device, and the figures say so: correctness only, never GPU speed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgec.toolchain.quiet import quiet_libraries


def _api_and_archs() -> tuple[str, tuple[str, ...] | None, str]:
    from edgec.exporters.iree import cuda_arch_for
    from edgec.runtimes import iree_gpu

    cuda = [d for d in iree_gpu.devices("cuda") if d.compute_capability]
    if cuda:
        return "cuda", (cuda_arch_for(cuda[0].compute_capability),), cuda[0].name
    real = [d for d in iree_gpu.devices("vulkan") if not d.software]
    if real:
        return "vulkan", None, real[0].name
    return "vulkan", ("valhall",), "no GPU here: Mesa's software Vulkan device (lavapipe), correctness only"


def _torch_cuda_ms(model_name: str, runs: int) -> float | None:
    """Eager fp16 on the GPU PyTorch sees, on the model's example input; None without CUDA."""
    import torch

    from edgec.runtimes.timing import bench
    from edgec.toolchain.load import inspect, load
    from edgec.toolchain.recipe import Recipe

    if not torch.cuda.is_available():
        return None
    model = load(inspect(model_name))
    feed = model.task.feeds(model, None, Recipe(eval_samples=1)).example
    module = model.module.half().cuda().eval()
    args = [torch.from_numpy(v).cuda() for v in feed.values()]
    args = [a.half() if a.is_floating_point() else a for a in args]

    def step():
        with torch.no_grad():
            module(*args)
        torch.cuda.synchronize()
    return bench(step, runs=runs).median_ms


def encoders(models: list[str], precisions: list[str], runs: int, out: Path) -> list[dict]:
    from edgec.toolchain.bench_bundle import bench_bundle
    from edgec.toolchain.bundle import open_bundle
    from edgec.toolchain.pipeline import export
    from edgec.toolchain.recipe import Recipe

    api, archs, device = _api_and_archs()
    rows = []
    for name in models:
        torch_ms = _torch_cuda_ms(name, runs)
        for precision in precisions:
            bundle = out / f"{name}-{precision}"
            recipe = Recipe(gpu_api=api, gpu_arch=archs, precision=precision, bench_runs=5, htp_eval_samples=20,
                            compare_quantized_only=False)
            t0 = time.perf_counter()
            report = export(name, "gpu", bundle, recipe=recipe)
            took = time.perf_counter() - t0
            acc = report["accuracy"]
            head = acc["per_runtime"][acc["headline"]]
            speed = bench_bundle(open_bundle(bundle), None, runs)
            gpu = next(r for r in speed if r.runtime.startswith("iree-"))
            cpu = next(r for r in speed if r.runtime == "ort-cpu")
            rows.append({"model": name, "precision": precision, "module": acc["headline"], "device": gpu.device,
                         "metric": acc["metric"], "value": head["value"], "float": head["float"],
                         "max_abs_diff": head["max_abs_diff"], "samples": head["samples"],
                         "simulated": gpu.simulated, "gpu_ms": gpu.median_ms, "gpu_mb": gpu.device_mb,
                         "cpu_ms": cpu.median_ms, "torch_cuda_fp16_ms": torch_ms,
                         "modules": [(m["arch"], m["status"]) for m in report["gpu"]["modules"]],
                         "export_s": round(took, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def decoder(new_tokens: int, out: Path) -> dict:
    from bench.llm_equivalence import _seeded
    from edgec.runtimes import runtime
    from edgec.runtimes.llm import Sampling
    from edgec.toolchain.generate import generate, open_lm
    from edgec.toolchain.pipeline import export
    from edgec.toolchain.recipe import Recipe

    api, archs, device = _api_and_archs()
    model = _seeded(out / "llama", "llama")
    bundle = out / "llama-gpu"
    export(str(model), "gpu", bundle, recipe=Recipe(gpu_api=api, gpu_arch=archs, context=128, eval_samples=4,
                                                    htp_eval_samples=2, bench_runs=2, compare_quantized_only=False))
    gpu_rt = f"iree-{api}"
    result = {"device": device, "simulated": runtime(gpu_rt).simulated}
    prompt = "And God said, Let there be light"
    for rt in (gpu_rt, "ort-cpu"):
        g = generate(open_lm(str(bundle), rt), prompt, new_tokens, Sampling())
        result[rt] = {"tokens": g.tokens, "decode_tokens_per_s": g.stats()["decode_tokens_per_s"]}
    result["identical"] = result[gpu_rt]["tokens"] == result["ort-cpu"]["tokens"]
    print(json.dumps(result), flush=True)
    return result


def render(rows: list[dict], lm: dict) -> str:
    lines = ["# gpu target", "", "Each module against the float ONNX on held-out data; speed from `edgec bench` "
             "(median of warm runs, this machine, one run).", "",
             "| model | precision | device | metric | value | float | max abs diff | GPU ms | GPU MB | ORT CPU ms | "
             "torch CUDA fp16 ms |", "|" + "---|" * 11]
    for r in rows:
        gpu = "correctness only" if r["simulated"] else f"{r['gpu_ms']:.2f}"
        torch_ms = "no CUDA here" if r["torch_cuda_fp16_ms"] is None else f"{r['torch_cuda_fp16_ms']:.2f}"
        lines.append(f"| {r['model']} | {r['precision']} | {r['device']} | {r['metric']} | {r['value']:.5f} | "
                     f"{r['float']:.5f} | {r['max_abs_diff']:.2e} | {gpu} | {r['gpu_mb']} | {r['cpu_ms']:.2f} | "
                     f"{torch_ms} |")
    lines += ["", "Modules: " + "; ".join(f"{r['model']} {r['precision']}: " +
                                          ", ".join(f"{a} ({s})" for a, s in r["modules"]) for r in rows), ""]
    gpu_rt = next(k for k in lm if k.startswith("iree-"))
    speed = "software device, correctness only" if lm["simulated"] else \
        f"{lm[gpu_rt]['decode_tokens_per_s']} tok/s"
    lines += [f"Seeded tiny Llama decode step on {lm['device']}: {len(lm['ort-cpu']['tokens'])} greedy tokens, "
              f"identical to the float ONNX on ORT CPU: {'yes' if lm['identical'] else 'NO'}; decode: {speed} "
              f"(ORT CPU {lm['ort-cpu']['decode_tokens_per_s']} tok/s).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,vit-digits")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, default=Path("out/bench/gpu"))
    args = ap.parse_args()
    quiet_libraries()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out) as tmp:
        rows = encoders(args.models.split(","), args.precisions.split(","), args.runs, Path(tmp))
        lm = decoder(args.new_tokens, Path(tmp))
    text = render(rows, lm)
    (args.out / "report.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps({"encoders": rows, "decoder": lm}, indent=2))
    print(text)
    if not lm["identical"]:
        raise SystemExit("the decode step's greedy tokens differ from the float ONNX")


if __name__ == "__main__":
    main()
