"""Memory of a decoder export with a real-size vocabulary: the export's peak, the .pte's planned logits, and
what an app pays to load the program and decode a token.

    python -m bench.llm_memory [--vocab 151936] [--hidden 128] [--layers 2]

A seeded Qwen2 (Qwen2.5's vocabulary by default; random weights: memory only) goes through the default
`edgec export --target cpu`. Bars: export peak RSS <= 4 GB; `forward` outputs at most two positions of
logits; loading the program and decoding one token peaks at <= the RSS before loading + the .pte size
+ 64 MB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, torch
from executorch.runtime import Runtime
from edgec.toolchain.lm_speed import _rss_mb, peak_rss_mb
runtime = Runtime.get()
before = _rss_mb()
method = runtime.load_program(sys.argv[1]).load_method("forward")
logits = method.execute([torch.tensor([[1]]), torch.tensor([0])])[0]
print(json.dumps({"before_mb": before, "peak_mb": peak_rss_mb(), "logits": list(logits.shape)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args()
    from edgec.zoo.seeded import seeded_decoder_dir

    with tempfile.TemporaryDirectory() as tmp:
        src = seeded_decoder_dir(Path(tmp) / "qwen2", "qwen2", vocab_size=args.vocab, hidden_size=args.hidden,
                                 intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                                 max_position_embeddings=512)
        out = Path(tmp) / "out"
        done = subprocess.run([sys.executable, "-m", "edgec.toolchain.cli", "export", str(src), "--target", "cpu",
                               "-o", str(out), "--quiet"], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"export failed: {done.stderr.strip()[-500:]}")
        export_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # MB, the largest child
        from executorch.runtime import Runtime

        pte = out / "model.pte"
        meta = Runtime.get().load_program(pte).metadata("forward")
        shape = list(meta.output_tensor_meta(0).sizes())
        child = json.loads(subprocess.run([sys.executable, "-c", CHILD, str(pte)], capture_output=True, text=True,
                                          check=True).stdout.strip().splitlines()[-1])
        pte_mb = pte.stat().st_size / 2**20
        limit = child["before_mb"] + pte_mb + 64
        rows = {"vocabulary": args.vocab, "export peak RSS (MB)": round(export_peak),
                "forward logits shape": shape, ".pte size (MB)": round(pte_mb, 1),
                "decode process: RSS before loading (MB)": round(child["before_mb"]),
                "decode process: peak (MB)": round(child["peak_mb"]), "decode process: limit (MB)": round(limit)}
        bars = {"export peak <= 4 GB": export_peak <= 4096, "forward: <= 2 positions of logits": shape[1] <= 2,
                "decode peak <= before + .pte + 64 MB": child["peak_mb"] <= limit}
        for k, v in {**rows, **bars}.items():
            print(f"  {k:44s} {v}")
        if not all(bars.values()):
            sys.exit(1)


if __name__ == "__main__":
    main()
