"""Run every bench script, each in its own process, and print one summary.

    python -m bench.run_all [--only NAME,NAME] [--skip NAME,NAME] [--quick]

A process per script: a crash or a leaked thread setting in one cannot skew
the next, and each script's figures are its own output. The full set takes
hours on 2 cores (bench.prune_minilm alone prunes MiniLM 28 times, FLAP 20 of
them); --quick passes each script small arguments (figures for a smoke test,
not for the record).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# name -> arguments for --quick; the default run uses each script's own defaults
SCRIPTS = {
    "cpu_minilm": ["--rounds", "3"],
    "export_zoo": ["--models", "vit-digits", "--targets", "cpu"],
    "smoothing": ["--models", "vit-digits"],
    "token_budget_vit": ["--budgets", "1.0,0.5", "--layers", "0", "--scores", "received", "--htp-samples", "20"],
    "prune_minilm": ["--ratios", "0.3", "--variants", "magnitude,flap no refit"],
    "llm_equivalence": ["--models", "tinylm,qwen2", "--prompts", "2", "--new-tokens", "16"],
    "llm_export": ["--targets", "npu", "--htp-windows", "2"],
    "llm_decode_speed": ["--layers", "2", "--hidden", "256", "--new-tokens", "16"],
    "llm_families": ["--families", "gemma3_text,olmo2", "--new-tokens", "16", "--skip-runner"],
    "llm_memory": ["--vocab", "32000"],
    "gpu": ["--models", "vit-digits", "--precisions", "fp32", "--runs", "3", "--new-tokens", "8"],
    "qnn_context": ["--rounds", "2", "--sentences", "2"],
    "desktop": ["--sentences", "8", "--runs", "2", "--rounds", "1"],
    "kv_offload": ["--contexts", "2048,4096", "--layers", "2", "--hidden", "256", "--kv-heads", "2",
                   "--head-dim", "64", "--chunk", "16", "--steps", "3", "--quality-windows", "1"],
}
TAIL = 80  # most lines of a script's output the summary repeats


def key_lines(out: str) -> list[str]:
    """A short output whole; a long one from its last table (header, rule, rows, verdicts) on."""
    lines = out.rstrip().splitlines()
    if len(lines) <= TAIL:
        return lines
    rules = [i for i, line in enumerate(lines) if len(line) >= 10 and set(line.strip()) == {"-"}]
    start = max(rules[-1] - 1, 0) if rules else 0
    return lines[start:][-TAIL:]


def run(name: str, args: list[str]) -> dict:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", f"bench.{name}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    took = time.perf_counter() - t0
    ok = proc.returncode == 0
    lines = key_lines(proc.stdout) if ok else (proc.stdout + proc.stderr).rstrip().splitlines()[-15:]
    return {"name": name, "status": "ok" if ok else f"failed ({proc.returncode})", "seconds": took, "lines": lines}


def _names(value: str) -> list[str]:
    names = [n for n in value.split(",") if n]
    if unknown := [n for n in names if n not in SCRIPTS]:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; known: {', '.join(SCRIPTS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", type=_names, default=list(SCRIPTS), help="comma-separated scripts to run")
    ap.add_argument("--skip", type=_names, default=[], help="comma-separated scripts to leave out")
    ap.add_argument("--quick", action="store_true", help="each script's smallest arguments")
    args = ap.parse_args(argv)
    names = [n for n in args.only if n not in args.skip]
    if not names:
        ap.error("nothing left to run after --skip")
    results = []
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} ...", end=" ", flush=True)
        results.append(run(name, SCRIPTS[name] if args.quick else []))
        print(f"{results[-1]['status']}, {results[-1]['seconds']:.0f} s", flush=True)

    width = max(len(n) for n in names + ["script"])
    print(f"\n{'script':<{width}}  {'status':<12}{'wall s':>8}")
    print("-" * (width + 22))
    for r in results:
        print(f"{r['name']:<{width}}  {r['status']:<12}{r['seconds']:>8.0f}")
    for r in results:
        print(f"\n== {r['name']}: {r['status']}, {r['seconds']:.0f} s")
        print("\n".join("  " + line for line in r["lines"]))
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
