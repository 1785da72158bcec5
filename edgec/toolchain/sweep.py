"""A grid of pruning ratios x token budgets: every point is a full export, then the trade-off curves.

The model and its calibration data are loaded once and shared by every point;
each point's bundle is kept under OUT/points/ so any of them can be deployed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from edgec.passes.prune import PruneConfig
from edgec.passes.token_budget import TokenBudgetConfig
from edgec.toolchain.pipeline import Prepared, export_prepared, prepare
from edgec.toolchain.progress import Progress
from edgec.toolchain.recipe import Recipe


def _point(report: dict, ratio: float, budget: float) -> dict:
    main = next(iter(report["accuracy"]["per_runtime"]))  # the primary artifact on its CPU runtime
    latency = report["latency_ms"][main]
    first_input = next(iter(latency))
    return {"prune": ratio, "token_budget": budget, "accuracy": report["accuracy"]["per_runtime"][main]["value"],
            "latency_ms": latency[first_input]["median"], "latency_input": first_input,
            "latency_vs_float": round(latency[first_input]["median"]
                                      / report["latency_ms"]["float.onnx@ort-cpu"][first_input]["median"], 3),
            "bytes": report["artifacts"][0]["bytes"], "artifact": main,
            "htp_coverage": report.get("npu", {}).get("coverage")}


def pareto(points: list[dict], cost: str) -> list[dict]:
    """Points no other point beats on both accuracy (higher) and `cost` (lower)."""
    return [p for p in points if not any(
        q["accuracy"] >= p["accuracy"] and q[cost] <= p[cost] and
        (q["accuracy"] > p["accuracy"] or q[cost] < p[cost]) for q in points)]


def _plot(points: list[dict], cost: str, label: str, metric: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = sorted(pareto(points, cost), key=lambda p: p[cost])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.scatter([p[cost] for p in points], [p["accuracy"] for p in points], c="#888", label="grid point")
    ax.plot([p[cost] for p in front], [p["accuracy"] for p in front], "o-", c="#c0392b", label="Pareto front")
    for p in points:
        ax.annotate(f"p{p['prune']:g}/t{p['token_budget']:g}", (p[cost], p["accuracy"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel(label)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _markdown(source: str, target: str, metric: str, points: list[dict]) -> str:
    front = {(p["prune"], p["token_budget"]) for p in pareto(points, "latency_ms")}
    lines = [f"# edgec sweep: {source} for {target}", "",
             f"Metric: {metric}. Latency: median on {points[0]['artifact']}, input "
             f"'{points[0]['latency_input']}'. * marks the accuracy/latency Pareto front.", "",
             "| prune | token budget | accuracy | latency ms | vs float | bytes | HTP coverage | |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        cov = "" if p["htp_coverage"] is None else f"{p['htp_coverage']:.0%}"
        star = "*" if (p["prune"], p["token_budget"]) in front else ""
        lines.append(f"| {p['prune']:g} | {p['token_budget']:g} | {p['accuracy']:.4f} | {p['latency_ms']:.2f} | "
                     f"{p['latency_vs_float']:.2f}x | {p['bytes']:,} | {cov} | {star} |")
    lines += ["", "![accuracy vs latency](accuracy_vs_latency.png)", "",
              "![accuracy vs bytes](accuracy_vs_bytes.png)", ""]
    return "\n".join(lines)


def sweep(source: str, target: str, out: Path, ratios: list[float], budgets: list[float],
          calib: Path | None = None, recipe: Recipe = Recipe(), method: str = "flap",
          progress: Progress | None = None) -> list[dict]:
    progress = progress or Progress(quiet=True)
    # one set of feeds for every point, with pruning's larger calibration pool if any point prunes
    pool = replace(recipe, prune=PruneConfig(ratio=max(ratios), method=method)) if max(ratios) > 0 else recipe
    prepared: Prepared = prepare(source, target, calib, pool, progress)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        points = []
        # the recipe's other pruning and token-budget settings hold at every point
        prune_base = recipe.prune.to_dict() if recipe.prune else {}
        budget_base = recipe.token_budget.to_dict() if recipe.token_budget else {}
        for ratio in ratios:
            for budget in budgets:
                prune = PruneConfig(**{**prune_base, "ratio": ratio, "method": method}) if ratio > 0 else None
                kept = TokenBudgetConfig(**{**budget_base, "budget": budget}) if budget < 1 else None
                point = replace(recipe, compare_quantized_only=False, prune=prune, token_budget=kept)
                progress.console.print(f"[bold]point prune {ratio:g}, token budget {budget:g}[/]") \
                    if not progress.quiet else None
                report = export_prepared(prepared, work / "points" / f"prune{ratio:g}-budget{budget:g}",
                                         point, progress)
                points.append(_point(report, ratio, budget))
        metric = report["accuracy"]["metric"]
        (work / "sweep.json").write_text(json.dumps({"model": source, "target": target, "metric": metric,
                                                     "points": points}, indent=2))
        _plot(points, "latency_ms", f"latency (ms, {points[0]['artifact']})", metric,
              work / "accuracy_vs_latency.png")
        _plot(points, "bytes", "artifact bytes", metric, work / "accuracy_vs_bytes.png")
        (work / "report.md").write_text(_markdown(source, target, metric, points))
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return points
