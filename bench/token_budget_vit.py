"""What static token dropping (edgec.passes.token_budget) costs and buys on vit-digits.

    python -m bench.token_budget_vit [--budgets 1.0,0.75,0.5,0.25] [--layers 0,1]
                                     [--scores received,cls] [--fuse on] [--htp-samples 100]

For each budget, deciding block, score and fused token (EViT) on or off: the
token-dropped model is exported to float ONNX and quantized A16W8 (`quantize_qdq`,
32 calibration images); top-1 on the 400 test images for the float and the
QDQ graph (ORT CPU) and for the QDQ graph on the simulated HTP (first
--htp-samples images); HTP op coverage. Latency: ORT CPU, 2 threads, batch 1,
median of the per-round medians of 5 interleaved rounds (200 timed runs after
20 warm-up runs each), as a ratio to the undropped model measured in the same
rounds. Selection cost: the same model with the selection replaced by a static
slice of as many tokens ("sliced"): whatever the drop costs beyond the tokens
it leaves is the selection. Floor: the same with nothing but CLS left after
the deciding block, the latency no budget can go below.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgec.calibration.digits import load_digits_split
from edgec.calibration.plan import PrecisionPlan
from edgec.exporters.onnx_float import export_onnx
from edgec.exporters.onnx_qdq import quantize_qdq
from edgec.passes.token_budget import (
    TokenBudgetConfig,
    VisionTokenBudget,
    apply_token_budget,
)
from edgec.runtimes import ort_cpu, qnn_htp
from edgec.runtimes.timing import bench
from edgec.toolchain.load import load

N_CALIB, ROUNDS, RUNS, WARMUP, THREADS = 32, 5, 200, 20, 2
BAR_BUDGET, BAR_POINTS, BAR_RATIO = 0.5, 2.0, 0.65


class Sliced(VisionTokenBudget):
    """The token-dropped model with a static slice for the selection: same shapes, no ranking."""

    def drop(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return x[:, :1 + self.k + self.fuse]


def _export(module, calib, tmp: Path, name: str) -> tuple[Path, Path]:
    f, q = tmp / f"{name}.onnx", tmp / f"{name}_qdq.onnx"
    export_onnx(module, calib[0], ["logits"], f)
    quantize_qdq(f, q, calib, PrecisionPlan())
    return f, q


def _top1(session, feeds, labels) -> float:
    return float(np.mean([session.run(f)[0].argmax() == y for f, y in zip(feeds, labels)]))


def _latency(paths: dict[str, Path], feed) -> dict[str, float]:
    """Median ms per model: median over interleaved rounds, so drift hits every model alike."""
    sessions = {k: ort_cpu.load(p, threads=THREADS) for k, p in paths.items()}
    rounds: dict[str, list[float]] = {k: [] for k in paths}
    for _ in range(ROUNDS):
        for k, s in sessions.items():
            rounds[k].append(bench(lambda s=s: s.run(feed), runs=RUNS, warmup=WARMUP).median_ms)
    return {k: float(np.median(v)) for k, v in rounds.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="1.0,0.75,0.5,0.25")
    ap.add_argument("--layers", default="0,1")
    ap.add_argument("--scores", default="received,cls")
    ap.add_argument("--fuse", default="on", help="on, off or on,off: the EViT fused token")
    ap.add_argument("--htp-samples", type=int, default=100)
    args = ap.parse_args(argv)
    budgets = [float(b) for b in args.budgets.split(",")]
    layers = [int(x) for x in args.layers.split(",")]
    scores = args.scores.split(",")
    fuses = [{"on": True, "off": False}[f] for f in args.fuse.split(",")]
    logging.disable(logging.WARNING)  # ORT's quantizer is chatty
    start = time.perf_counter()

    module = load("vit-digits").module.eval()
    x_cal, _ = load_digits_split("calib")
    calib = [{"pixel_values": x[None]} for x in x_cal[:N_CALIB]]
    x_test, labels = load_digits_split("test")
    feeds = [{"pixel_values": x[None]} for x in x_test]
    n_htp = min(args.htp_samples, len(feeds))

    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        variants = [("full", 1.0, None, None, False)] + [
            (f"b{b}_l{layer}_{score}{'_fused' if fuse else ''}", b, layer, score, fuse)
            for layer in layers for score in scores for fuse in fuses for b in budgets if b < 1.0]
        rows, paths = [], {}
        for name, budget, layer, score, fuse in variants:
            cfg = TokenBudgetConfig(budget=budget, layer=layer or 0, score=score or "received", fuse_dropped=fuse)
            result = apply_token_budget(module, cfg)
            paths[name] = _export(result.module, calib, tmp, name)
            if result.changed:
                sliced = Sliced(result.module.encoder, layer, result.kept, result.fused, result.score)
                paths[name + "_sliced"] = _export(sliced, calib, tmp, name + "_sliced")
            f, q = paths[name]
            cov = qnn_htp.coverage(q)
            htp = _top1(qnn_htp.load(q), feeds[:n_htp], labels) if cov.runs_fully and n_htp else None
            rows.append({"name": name, "budget": budget, "layer": "-" if layer is None else layer,
                         "score": score or "-", "fused": "-" if layer is None else ("on" if fuse else "off"),
                         "K": result.kept, "tokens": result.tokens_after,
                         "float": _top1(ort_cpu.load(f), feeds, labels), "qdq": _top1(ort_cpu.load(q), feeds, labels),
                         "htp": htp, "coverage": cov.fraction, "runs_fully": cov.runs_fully})
        for layer in layers:  # the floor: CLS alone after block `layer`, nothing selected
            floor = Sliced(module, layer, 0, False, "received")
            paths[f"floor_l{layer}"] = _export(floor, calib, tmp, f"floor_l{layer}")
        feed = feeds[0]
        ms_float = _latency({k: v[0] for k, v in paths.items()}, feed)
        ms_qdq = _latency({k: v[1] for k, v in paths.items()}, feed)

    base_top1 = rows[0]["float"]
    header = ("layer", "budget", "score", "fused", "K", "tokens", "float top-1", "QDQ top-1", "QDQ vs full float",
              f"HTP top-1 ({n_htp})", "float ms", "float x", "QDQ ms", "QDQ x", "select us float/QDQ",
              "HTP coverage")
    table = []
    for r in rows:
        n = r["name"]
        sel = "-"
        if n + "_sliced" in ms_float:
            sel = (f"{(ms_float[n] - ms_float[n + '_sliced']) * 1e3:.1f} / "
                   f"{(ms_qdq[n] - ms_qdq[n + '_sliced']) * 1e3:.1f}")
        table.append((r["layer"], r["budget"], r["score"], r["fused"], r["K"], r["tokens"], f"{r['float']:.4f}",
                      f"{r['qdq']:.4f}", f"{(r['qdq'] - base_top1) * 100:+.2f} pts",
                      "-" if r["htp"] is None else f"{r['htp']:.3f}",
                      f"{ms_float[n]:.4f}", f"{ms_float[n] / ms_float['full']:.3f}",
                      f"{ms_qdq[n]:.4f}", f"{ms_qdq[n] / ms_qdq['full']:.3f}", sel,
                      f"{r['coverage']:.3f}{'' if r['runs_fully'] else ' (does not run)'}"))
    widths = [max(len(str(t[i])) for t in table + [header]) for i in range(len(header))]
    line = lambda t: "  ".join(str(c).ljust(w) for c, w in zip(t, widths))
    print(f"vit-digits, {len(feeds)} test images; A16W8 QDQ ({N_CALIB} calibration images); "
          f"ORT CPU {THREADS} threads, batch 1")
    print(line(header) + "\n" + "-" * len(line(header)))
    for t in table:
        print(line(t))
    print("tokens: sequence length after the deciding block (CLS + K + fused). x: latency / undropped model's. "
          "select us: latency minus that of the same model with a static slice in place of the selection.")
    sliced = {n: (ms_float[n + "_sliced"] / ms_float["full"], ms_qdq[n + "_sliced"] / ms_qdq["full"])
              for n in ms_float if n + "_sliced" in ms_float}
    for n, (fx, qx) in sliced.items():
        print(f"  {n}: with the selection free (static slice) float {fx:.3f}x, QDQ {qx:.3f}x")
    for layer in layers:
        n = f"floor_l{layer}"
        print(f"  floor, CLS alone after block {layer}: float {ms_float[n] / ms_float['full']:.3f}x, "
              f"QDQ {ms_qdq[n] / ms_qdq['full']:.3f}x")
    print(f"bar at budget {BAR_BUDGET}: QDQ top-1 within {BAR_POINTS} points of the full float model "
          f"({base_top1:.4f}) and QDQ latency <= {BAR_RATIO}x")
    for r in rows:
        if r["budget"] == BAR_BUDGET:
            acc_ok = (base_top1 - r["qdq"]) * 100 <= BAR_POINTS
            lat = ms_qdq[r["name"]] / ms_qdq["full"]
            print(f"  layer {r['layer']} {r['score']} fused {r['fused']}: accuracy {'met' if acc_ok else 'missed'} "
                  f"({(r['qdq'] - base_top1) * 100:+.2f} pts), latency {'met' if lat <= BAR_RATIO else 'missed'} "
                  f"({lat:.3f}x)")
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
