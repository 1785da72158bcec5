"""A grid of pruning ratios x token budgets: every point is a full export, then the trade-off curves.

The model and its calibration data are loaded once and shared by every point;
each point's bundle is kept under OUT/points/ so any of them can be deployed.
Every point's settings are checked before the first one is exported, and OUT
appears whole at the end or not at all.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from edgec.passes.prune import PruneConfig
from edgec.passes.token_budget import TokenBudgetConfig
from edgec.progress import Progress
from edgec.toolchain.pipeline import check_out, export_into, prepare
from edgec.toolchain.publish import atomic_dir
from edgec.toolchain.recipe import Recipe


def _point(report: dict, ratio: float, budget: float | int) -> dict:
    """Accuracy and latency of the primary artifact on the same (real, not simulated) runtime."""
    art = report["artifacts"][0]
    main = next(f"{art['path']}@{rt}" for rt in reversed(art["verified_on"])
                if f"{art['path']}@{rt}" in report["latency_ms"])
    latency = report["latency_ms"][main]
    first_input = next(iter(latency))
    hot = latency[first_input]["hot"]["median"]
    return {"prune": ratio, "token_budget": budget, "accuracy": report["accuracy"]["per_runtime"][main]["value"],
            "latency_ms": hot, "latency_cold_ms": latency[first_input]["cold"]["median"],
            "latency_input": first_input,
            "latency_vs_float": round(hot / report["latency_ms"]["float.onnx@ort-cpu"][first_input]["hot"]["median"],
                                      3),
            "bytes": art["bytes"], "artifact": main,
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
    where = points[0]["artifact"]
    lines = [f"# edgec sweep: {source} for {target}", "",
             f"Metric: {metric}, on `{where}`. Latency: median of back-to-back runs of `{where}` "
             f"(the runtime after the @), input '{points[0]['latency_input']}'; cold: caches evicted "
             f"before each run. * marks the accuracy/latency Pareto front.", "",
             "| prune | token budget | accuracy | latency ms | cold ms | vs float | bytes | HTP coverage | front |",
             "|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        cov = "" if p["htp_coverage"] is None else f"{p['htp_coverage']:.0%}"
        star = "*" if (p["prune"], p["token_budget"]) in front else ""
        lines.append(f"| {p['prune']:g} | {p['token_budget']:g} | {p['accuracy']:.4f} | {p['latency_ms']:.2f} | "
                     f"{p['latency_cold_ms']:.2f} | {p['latency_vs_float']:.2f}x | {p['bytes']:,} | {cov} | {star} |")
    lines += ["", "![accuracy vs latency](accuracy_vs_latency.png)", "",
              "![accuracy vs bytes](accuracy_vs_bytes.png)", ""]
    return "\n".join(lines)


def grid(recipe: Recipe, ratios: list[float], budgets: list[float | int], method: str) -> list[tuple]:
    """(ratio, budget, the point's recipe): the recipe's other pruning and token-budget settings hold."""
    prune_base = recipe.prune.to_dict() if recipe.prune else {}
    budget_base = recipe.token_budget.to_dict() if recipe.token_budget else {}
    out = []
    for ratio in ratios:
        for budget in budgets:
            prune = PruneConfig(**{**prune_base, "ratio": ratio, "method": method}) if ratio > 0 else None
            keeps_all = budget == 1.0 and isinstance(budget, float)
            kept = None if keeps_all else TokenBudgetConfig(**{**budget_base, "budget": budget})
            out.append((ratio, budget, replace(recipe, compare_quantized_only=False, prune=prune, token_budget=kept)))
    return out


def sweep(source: str, target: str, out: Path, ratios: list[float], budgets: list[float | int],
          calib: Path | None = None, recipe: Recipe = Recipe(), method: str = "flap",
          progress: Progress | None = None) -> list[dict]:
    progress = progress or Progress(quiet=True)
    out = check_out(out)
    points = grid(recipe, ratios, budgets, method)
    # one set of feeds for every point, with pruning's larger calibration pool if any point prunes
    pool = replace(recipe, prune=PruneConfig(ratio=max(ratios), method=method)) if max(ratios) > 0 else recipe
    prepared = prepare(source, target, calib, pool, progress, variants=[r for _, _, r in points])
    results = []
    with atomic_dir(out) as (work, scratch):
        for ratio, budget, point in points:
            if not progress.quiet:
                progress.console.print(f"[bold]point prune {ratio:g}, token budget {budget:g}[/]")
            bundle = work / "points" / f"prune{ratio:g}-budget{budget:g}"
            (bundle).mkdir(parents=True)
            point_scratch = scratch / bundle.name
            point_scratch.mkdir()
            report = export_into(prepared, bundle, point_scratch, point, progress)
            results.append(_point(report, ratio, budget))
        metric = report["accuracy"]["metric"]
        (work / "sweep.json").write_text(json.dumps({"model": source, "target": target, "metric": metric,
                                                     "points": results}, indent=2))
        _plot(results, "latency_ms", f"latency (ms, {results[0]['artifact']})", metric,
              work / "accuracy_vs_latency.png")
        _plot(results, "bytes", "artifact bytes", metric, work / "accuracy_vs_bytes.png")
        (work / "report.md").write_text(_markdown(source, target, metric, results))
    return results
