"""Export both zoo models for both targets and print the key figures.

    python -m bench.export_zoo [--models minilm,vit-digits] [--targets npu,cpu]
                               [--prune RATIO] [--token-budget B] [--token-layer L]

Each export is the real `edgec export` pipeline, with default settings unless
pruning or a token budget is asked for; the figures are read back from the
reports it writes (into a temporary directory, not the repository).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edgec.toolchain.quiet import quiet_libraries


def _row(report: dict) -> dict:
    acc = report["accuracy"]
    lat = report["latency_ms"]
    base = lat["float.onnx@ort-cpu"]
    ratios = {f"{k} {label.split(' ')[0]} {mode}": round(t[mode]["median"] / base[label][mode]["median"], 3)
              for k, per in lat.items() if k != "float.onnx@ort-cpu"
              for label, t in per.items() for mode in ("hot", "cold")}
    row = {"model": report["model"]["name"], "target": report["target"],
           "metric": acc["metric"], "float": round(acc["float"], 4),
           **{f"acc {k}": round(v["value"], 4) for k, v in acc["per_runtime"].items()},
           **{f"size {k}": v for k, v in report["size_ratio"].items()},
           **{f"latency/float {k}": v for k, v in ratios.items()},
           **{f"simulator wall ms {k}": round(next(iter(v.values()))["median"])
              for k, v in report.get("simulator_wall_ms", {}).items()},
           "export s": report["export_seconds"]}
    if "pruning" in report:
        row["encoder params removed"] = report["pruning"]["removed_fraction"]
    if "token_budget" in report:
        row["tokens after the budget"] = report["token_budget"]["tokens_after"]
    if "npu" in report:
        row.update({"htp coverage": report["npu"]["coverage"], "runs fully": report["npu"]["runs_fully"],
                    "integer-only": report["npu"]["integer_only"]})
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="minilm,vit-digits")
    ap.add_argument("--targets", default="npu,cpu")
    ap.add_argument("--prune", type=float, help="structured pruning ratio (flap)")
    ap.add_argument("--token-budget", type=float, help="token budget, a fraction")
    ap.add_argument("--token-layer", type=int, help="deciding block [default: TokenBudgetConfig's]")
    args = ap.parse_args()
    quiet_libraries()
    from edgec.passes.prune import PruneConfig
    from edgec.passes.token_budget import TokenBudgetConfig
    from edgec.toolchain.pipeline import export
    from edgec.progress import Progress
    from edgec.toolchain.recipe import Recipe

    recipe = Recipe().with_overrides(
        prune=None if args.prune is None else PruneConfig(ratio=args.prune),
        token_budget=None if args.token_budget is None else TokenBudgetConfig(
            budget=args.token_budget, **({} if args.token_layer is None else {"layer": args.token_layer})))

    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for target in args.targets.split(","):
                t0 = time.perf_counter()
                report = export(model, target, Path(tmp) / f"{model}-{target}", recipe=recipe,
                                progress=Progress(quiet=True))
                print(f"\n== {model} --target {target} (wall {time.perf_counter() - t0:.0f} s)")
                for k, v in _row(report).items():
                    print(f"  {k:48s} {v}")


if __name__ == "__main__":
    main()
