"""`edgec export tinylm` for npu and cpu: export time, perplexity of every artifact against float.

    python -m bench.llm_export [--targets npu,cpu] [--htp-windows 4]

Each export is the real CLI pipeline into a temporary folder; the figures are
read back from the report it writes. Bars: each export under 5 minutes; on
held-out text the npu QDQ graph's perplexity <= 1.05x float with 100% HTP
coverage, the 8da4w `.pte` <= 1.10x, the int4 ONNX <= 1.10x, the Q4_0 GGUF <= 1.10x. Windows span the
whole context (512 tokens).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARS = {"npu": {"model.onnx@qnn-htp": 1.05}, "cpu": {"model.onnx@ort-genai": 1.10, "model.pte@executorch": 1.10,
                                                     "model.gguf@llama-cpp": 1.10}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="npu,cpu")
    ap.add_argument("--htp-windows", type=int, default=4, help="held-out 512-token windows scored on the simulator")
    args = ap.parse_args()
    rows, verdicts = [], []
    with tempfile.TemporaryDirectory() as tmp:
        recipe = Path(tmp) / "recipe.json"
        recipe.write_text(json.dumps({"htp_eval_samples": args.htp_windows}))
        for target in args.targets.split(","):
            out = Path(tmp) / target
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "edgec.toolchain.cli", "export", "tinylm", "--target", target,
                                   "-o", str(out), "--recipe", str(recipe), "-q"], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode:
                raise SystemExit(f"edgec export tinylm --target {target} failed: {proc.stderr.strip()[-500:]}")
            r = json.loads((out / "report.json").read_text())
            verdicts.append((f"{target}: export {wall:.0f} s < 300 s", wall < 300))
            for name, v in r["perplexity"]["per_runtime"].items():
                ratio = v["value"] / v["float"]
                rows.append((target, name, v["kind"], v["value"], v["float"], ratio, v["tokens"], v["bytes"]))
                if name in BARS[target]:
                    verdicts.append((f"{target}: {name} perplexity {ratio:.4f}x float <= {BARS[target][name]}x",
                                     ratio <= BARS[target][name]))
            if "npu" in r:
                verdicts.append((f"npu: HTP coverage {r['npu']['coverage']:.1%}", r["npu"]["runs_fully"]))
    print(f"{'target':<7}{'artifact@runtime':<46}{'kind':<10}{'perplexity':>11}{'float':>9}{'ratio':>8}"
          f"{'tokens':>8}{'MB':>7}")
    print("-" * 106)
    for t, name, kind, v, f, ratio, n, size in rows:
        print(f"{t:<7}{name:<46}{kind:<10}{v:>11.3f}{f:>9.3f}{ratio:>8.4f}{n:>8}{size / 1e6:>7.2f}")
    print()
    for text, ok in verdicts:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    raise SystemExit(0 if all(ok for _, ok in verdicts) else 1)


if __name__ == "__main__":
    main()
