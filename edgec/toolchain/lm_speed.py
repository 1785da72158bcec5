"""Generation speed and peak memory of one runtime, each in a fresh process.

Peak memory is only honest per process: a runtime measured after another
would inherit its high-water mark. The child loads the artifact, warms up,
generates `runs` times and prints one JSON line; the parent reads it.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from edgec.errors import BackendError

WARMUP_TOKENS = 8


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM). getrusage's ru_maxrss would do on Linux only for a
    process that was never forked from a bigger one: it carries the parent's mark across fork and exec."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(runtime: str, path: Path, tokenizer: Path, info: dict, prompt: list[int], new_tokens: int,
            runs: int = 3, timeout: float = 1800) -> dict:
    spec = {"runtime": runtime, "path": str(path), "tokenizer": str(tokenizer), "info": info,
            "prompt": prompt, "new_tokens": new_tokens, "runs": runs}
    proc = subprocess.run([sys.executable, "-m", "edgec.toolchain.lm_speed"], input=json.dumps(spec),
                          capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BackendError(f"measuring {runtime} on {Path(path).name} failed: {tail[:300]}")
    return json.loads(lines[-1])


def _child() -> None:
    from edgec import runtimes
    from edgec.runtimes.llm import Sampling

    import importlib

    spec = json.loads(sys.stdin.read())
    importlib.import_module(runtimes.runtime(spec["runtime"]).lm_module.partition(":")[0])
    base = _rss_mb()  # the runtime's libraries are loaded; the artifact is not
    t0 = time.perf_counter()
    session = runtimes.runtime(spec["runtime"]).load_lm(Path(spec["path"]), Path(spec["tokenizer"]), spec["info"])
    load_s = time.perf_counter() - t0
    session.generate(spec["prompt"], WARMUP_TOKENS, Sampling())
    gens = [session.generate(spec["prompt"], spec["new_tokens"], Sampling()) for _ in range(spec["runs"])]
    med = lambda f: round(statistics.median(f(g) for g in gens), 2)
    print(json.dumps({
        "prompt_tokens": len(spec["prompt"]), "new_tokens": len(gens[0].pieces or gens[0].tokens),
        "runs": spec["runs"], "threads": session.threads, "load_s": round(load_s, 2),
        "time_to_first_token_ms": med(lambda g: 1000 * g.first_token_s),
        "prefill_tokens_per_s": med(lambda g: g.prefill_tokens_per_s),
        "decode_tokens_per_s": med(lambda g: g.decode_tokens_per_s),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "baseline_rss_mb": round(base, 1)}))


if __name__ == "__main__":
    from edgec.toolchain.quiet import quiet_libraries

    quiet_libraries()
    _child()
