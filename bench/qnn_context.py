"""A QNN context binary against the QDQ graph it was compiled from: session creation and outputs.

    python -m bench.qnn_context [--model minilm] [--soc sm8650] [--rounds 7] [--sentences 8]

Exports the model with `--target npu --soc SOC` (the real pipeline, into a
temporary directory, evaluated on --sentences held-out sentences),
then, in this one process and as an app does it (ONNX Runtime with the QNN EP
registered, CPU fallback disabled, no edgec code):
- session creation, the two taking turns round by round after one warm-up
  each: from the QDQ graph for that SoC (QNN compiles it) and from the context
  (QNN loads the binary). Warm: the files' pages in the page cache; cold: the
  model files evicted first (posix_fadvise DONTNEED; QNN's libraries stay
  cached for both). Medians and p90.
- outputs on held-out sentences: the context against the QDQ graph compiled
  for the same SoC (bar: 1e-3), and against the QDQ graph on the v68 simulator
  that `edgec export` verifies model.onnx on, as pooled cosine too.
Both compile and load run on this x86-64 CPU (QNN's HTP compiler and the
simulator), so the seconds are this machine's; on a phone the compile runs on
its CPU and the load maps the binary onto the HTP.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from edgec.toolchain.quiet import quiet_libraries


def _register():
    import onnxruntime as ort
    import onnxruntime_qnn

    try:
        ort.register_execution_provider_library(onnxruntime_qnn.EP_NAME, onnxruntime_qnn.get_library_path())
    except Exception as e:  # the export in this process registered it
        if "already registered" not in str(e):
            raise
    return [d for d in ort.get_ep_devices() if d.ep_name == onnxruntime_qnn.EP_NAME]


def _session(devices, path: Path, **provider):
    import onnxruntime as ort
    import onnxruntime_qnn

    from edgec.runtimes.native import silenced

    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph as exported
    options.add_provider_for_devices(devices, {"backend_path": onnxruntime_qnn.get_qnn_htp_path(),
                                               "offload_graph_io_quantization": "0", **provider})
    with silenced(1):
        return ort.InferenceSession(str(path), options)


def _evict(paths: list[Path]) -> None:
    os.sync()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _creation(devices, cases: dict, rounds: int, cold: bool) -> dict[str, np.ndarray]:
    """Seconds to create each case's session, the cases taking turns; one warm-up each, not kept."""
    out = {name: [] for name in cases}
    names = list(cases)
    for r in range(rounds + 1):
        for name in names[r % len(names):] + names[:r % len(names)]:
            path, files, provider = cases[name]
            if cold:
                _evict(files)
            t0 = time.perf_counter()
            session = _session(devices, path, **provider)
            took = time.perf_counter() - t0
            del session
            if r:
                out[name].append(took)
    return {name: np.asarray(v) for name, v in out.items()}


def _feeds(bundle: Path, n: int) -> list[dict[str, np.ndarray]]:
    """Held-out sentences through the bundle's own tokenizer, which pads to the export's length."""
    from tokenizers import Tokenizer

    from edgec.calibration.text import builtin_sentences

    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    out = []
    for text in builtin_sentences("heldout")[:n]:
        enc = tok.encode(text)
        out.append({"input_ids": np.asarray([enc.ids], np.int64),
                     "attention_mask": np.asarray([enc.attention_mask], np.int64)})
    return out


def _pooled(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(np.float64)
    return (hidden * m).sum(1)[0] / m.sum()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm", help="a text zoo model or Hugging Face directory [minilm]")
    ap.add_argument("--soc", default="sm8650", help="the SoC to compile for [sm8650]")
    ap.add_argument("--rounds", type=int, default=7, help="timed session creations of each, per mode")
    ap.add_argument("--sentences", type=int, default=8, help="held-out sentences whose outputs are compared")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.sentences < 1:
        ap.error("--rounds and --sentences must be at least 1")
    quiet_libraries()
    from edgec.runtimes.machine import machine_info, package_version
    from edgec.toolchain.pipeline import export
    from edgec.toolchain.recipe import Recipe

    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(tmp) / "bundle"
        recipe = Recipe(soc=(args.soc,), eval_samples=args.sentences, htp_eval_samples=args.sentences, bench_runs=2,
                        compare_quantized_only=False)
        t0 = time.perf_counter()
        report = export(args.model, "npu", bundle, recipe=recipe)
        export_s = time.perf_counter() - t0
        manifest = json.loads((bundle / "manifest.json").read_text())
        qdq = next(a for a in manifest["artifacts"] if a["path"] == "model.onnx")
        ctx = next(a for a in manifest["artifacts"] if "qnn" in a)
        soc = ctx["qnn"]
        qdq_path, ctx_path = bundle / qdq["path"], bundle / ctx["path"]
        ctx_files = [ctx_path, *(bundle / e["path"] for e in ctx["external_data"])]

        devices = _register()
        target = {"soc_model": str(soc["soc_model"]), "htp_arch": soc["htp_arch"].lstrip("v")}
        cases = {"compile the QDQ graph": (qdq_path, [qdq_path], target), "load the context": (ctx_path, ctx_files, {})}
        times = {mode: _creation(devices, cases, args.rounds, cold=mode == "cold") for mode in ("warm", "cold")}

        feeds = _feeds(bundle, args.sentences)
        compiled = _session(devices, qdq_path, **target)
        want = [compiled.run(None, f)[0] for f in feeds]
        app = _session(devices, ctx_path)  # the same HTP generation: both sessions stay runnable
        got = [app.run(None, f)[0] for f in feeds]
        del compiled, app
        # created last, so the simulator runs v68; SM8350 named, as qnn_htp does once a SoC has been named
        default = _session(devices, qdq_path, soc_model="30", htp_arch="68")
        v68 = [default.run(None, f)[0] for f in feeds]

    diff = max(float(np.abs(g - w).max()) for g, w in zip(got, want))
    diff_v68 = max(float(np.abs(g - w).max()) for g, w in zip(got, v68))
    cos_v68 = min(_cosine(_pooled(g, f["attention_mask"]), _pooled(w, f["attention_mask"]))
                  for g, w, f in zip(got, v68, feeds))
    m = machine_info()
    step = next((v for k, v in report["step_seconds"].items() if k.startswith("compile a QNN context")), None)
    print(f"{report['model']['name']}, QNN context for {soc['soc']} (HTP {soc['htp_arch']}), QNN SDK {soc['qnn_sdk']}, "
          f"onnxruntime {package_version('onnxruntime')}, onnxruntime-qnn {package_version('onnxruntime-qnn')}")
    print(f"machine: {m['cpu']}, {m['usable_cores']} usable cores; ORT's default threads; QNN's compiler and "
          "the HTP simulator pick their own")
    print(f"export with --soc: {export_s:.1f} s (compile, check and place the context: {step} s)")
    print(f"sizes: QDQ model.onnx {qdq['bytes']:,} B; context {ctx['path']} + binary: {ctx['bytes']:,} B "
          f"({ctx['bytes'] / qdq['bytes']:.2f}x)\n")
    print(f"session creation, {args.rounds} rounds after one warm-up each, taking turns")
    print(f"{'case':<24}{'mode':<6}{'median s':>10}{'p90 s':>10}")
    print("-" * 50)
    for mode, t in times.items():
        for name, v in t.items():
            print(f"{name:<24}{mode:<6}{np.median(v):>10.3f}{np.percentile(v, 90):>10.3f}")
    ratio = {mode: float(np.median(t["compile the QDQ graph"]) / np.median(t["load the context"]))
             for mode, t in times.items()}
    print(f"\noutputs on {len(feeds)} held-out sentences:")
    print(f"  context vs QDQ compiled for {soc['soc']}: max abs diff {diff:.3g} (bar 1e-3: "
          f"{'met' if diff <= 1e-3 else 'MISSED'})")
    print(f"  context vs QDQ on the v68 simulator (model.onnx's check): max abs diff {diff_v68:.3g}, "
          f"worst pooled cosine {cos_v68:.6f} (HTP generations compute differently)")
    acc = report["accuracy"]
    print(f"  {acc['metric']}, {acc['data']}: " + ", ".join(
        f"{k} {v['value']:.4f}" for k, v in acc["per_runtime"].items()))
    print(f"verdict: loading the context is {ratio['warm']:.0f}x (warm) / {ratio['cold']:.0f}x (cold) faster than "
          f"compiling the QDQ graph: {'met' if min(ratio.values()) > 1 else 'MISSED'}")


if __name__ == "__main__":
    main()
