"""Export both zoo models for both targets with default settings and print the key figures.

    python -m bench.export_zoo [--models minilm,vit-digits] [--targets npu,cpu]

Each export is the real `edgec export` pipeline; the figures are read back from
the reports it writes (into a temporary directory, not the repository).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edgec.toolchain.cli import _quiet_libraries


def _row(report: dict) -> dict:
    acc = report["accuracy"]
    lat = report["latency_ms"]
    base = lat["float.onnx@ort-cpu"]
    ratios = {f"{k} {label.split(' ')[0]}": round(t["median"] / base[label]["median"], 3)
              for k, per in lat.items() if k != "float.onnx@ort-cpu" and not k.endswith("simulator")
              for label, t in per.items()}
    row = {"model": report["model"]["name"], "target": report["target"],
           "metric": acc["metric"], "float": round(acc["float"], 4),
           **{f"acc {k}": round(v["value"], 4) for k, v in acc["per_runtime"].items()},
           **{f"size {k}": v for k, v in report["size_ratio"].items()},
           **{f"latency/float {k}": v for k, v in ratios.items()},
           "export s": report["export_seconds"]}
    if "npu" in report:
        row.update({"htp coverage": report["npu"]["coverage"], "runs fully": report["npu"]["runs_fully"],
                    "integer-only": report["npu"]["integer_only"]})
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="minilm,vit-digits")
    ap.add_argument("--targets", default="npu,cpu")
    args = ap.parse_args()
    _quiet_libraries()
    from edgec.toolchain.pipeline import export
    from edgec.toolchain.progress import Progress

    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for target in args.targets.split(","):
                t0 = time.perf_counter()
                report = export(model, target, Path(tmp) / f"{model}-{target}", progress=Progress(quiet=True))
                print(f"\n== {model} --target {target} (wall {time.perf_counter() - t0:.0f} s)")
                for k, v in _row(report).items():
                    print(f"  {k:48s} {v}")


if __name__ == "__main__":
    main()
