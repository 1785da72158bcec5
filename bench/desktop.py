"""The C++ desktop runner against Python's ExecuTorch runtime on the same bundle: latency and peak memory.

Run `python -m bench.desktop [--bundle DIR] [--sentences 24] [--runs 5] [--rounds 3]`. Without
--bundle it exports `minilm --target cpu` into a temporary folder first. `make desktop` builds the
runner. Each round starts one Python process and one runner process, in turns, each embedding the
same held-out sentences `--runs` times with 2 threads; a process's first forward call warms up and
is not timed. Only the model's forward call is timed on both sides (tokenizing is not), so the ratio
compares the two runtimes, not the two tokenizers. Peak memory is each process's peak RSS
(getrusage), which for Python includes the interpreter, torch and the ExecuTorch bindings it loads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "build" / "desktop" / "edgec-run"
THREADS = 2

PYTHON_SIDE = """
import json, resource, statistics, sys, time
from pathlib import Path
from tokenizers import Tokenizer
from edgec.calibration.text import encode_fixed
from edgec.runtimes import executorch

bundle, texts, runs = Path(sys.argv[1]), Path(sys.argv[2]).read_text(encoding="utf-8").splitlines(), int(sys.argv[3])
t0 = time.perf_counter()
session = executorch.load(bundle / "model.pte")
load_ms = (time.perf_counter() - t0) * 1e3
tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
times = []
for text in texts:
    feed = encode_fixed(tok, [text])
    for _ in range(runs):
        t = time.perf_counter()
        session.run(feed)
        times.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"load_ms": load_ms, "runs": len(times) - 1, "median_ms": statistics.median(times[1:]),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "threads": session.threads}))
"""


def python_side(bundle: Path, texts: Path, runs: int) -> dict:
    r = subprocess.run([sys.executable, "-c", PYTHON_SIDE, str(bundle), str(texts), str(runs)],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def runner_side(bundle: Path, texts: Path, runs: int) -> dict:
    r = subprocess.run([str(RUNNER), str(bundle), "--texts", str(texts), "--runs", str(runs), "--threads",
                        str(THREADS), "--json"], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["stats"]


def export_minilm(out: Path) -> Path:
    recipe = out.parent / "recipe.json"
    recipe.write_text(json.dumps({"eval_samples": 20, "bench_runs": 3}))
    subprocess.run([sys.executable, "-m", "edgec.toolchain.cli", "export", "minilm", "--target", "cpu", "-o", str(out),
                    "--recipe", str(recipe), "-q"], cwd=ROOT, check=True)
    return out


def main() -> None:
    from edgec.calibration.text import builtin_sentences
    from edgec.runtimes.machine import machine_info

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="a text-encoder bundle with model.pte (default: export minilm)")
    ap.add_argument("--sentences", type=int, default=24)
    ap.add_argument("--runs", type=int, default=5, help="forward calls per sentence")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    subprocess.run(["make", "-s", "desktop"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or export_minilm(Path(tmp) / "minilm-cpu")
        texts = Path(tmp) / "texts.txt"
        texts.write_text("\n".join(builtin_sentences("heldout")[:args.sentences]) + "\n", encoding="utf-8")
        rows = []
        for r in range(args.rounds):  # the two sides take turns, first one then the other
            sides = [("python", python_side), ("runner", runner_side)]
            got = {name: fn(bundle, texts, args.runs) for name, fn in (sides if r % 2 == 0 else sides[::-1])}
            rows.append(got)
    print(f"bundle {bundle.name if args.bundle else 'minilm --target cpu'}, {args.sentences} held-out sentences x "
          f"{args.runs} forward calls, {THREADS} threads, {machine_info()['cpu']}, "
          f"{args.rounds} rounds")
    print(f"{'round':>5} {'python ms':>10} {'runner ms':>10} {'ratio':>6} {'python MB':>10} {'runner MB':>10}"
          f" {'py load ms':>10} {'rn load ms':>10}")
    print("-" * 80)
    for i, g in enumerate(rows):
        p, n = g["python"], g["runner"]
        print(f"{i:>5} {p['median_ms']:>10.2f} {n['median_ms']:>10.2f} {n['median_ms'] / p['median_ms']:>6.2f} "
              f"{p['peak_rss_mb']:>10.0f} {n['peak_rss_mb']:>10.0f} {p['load_ms']:>10.1f} {n['load_ms']:>10.1f}")
    ratio = float(np.median([g["runner"]["median_ms"] / g["python"]["median_ms"] for g in rows]))
    memory = float(np.median([g["runner"]["peak_rss_mb"] / g["python"]["peak_rss_mb"] for g in rows]))
    print(f"median latency ratio runner/python {ratio:.2f} (bar <= 1.2): {'ok' if ratio <= 1.2 else 'FAILED'}")
    print(f"median peak-memory ratio runner/python {memory:.2f} (bar < 1): {'ok' if memory < 1 else 'FAILED'}")


if __name__ == "__main__":
    main()
