"""`edgec bench BUNDLE`: latency, throughput and memory of a bundle's artifacts on their runtimes, in one run.

Every row runs the bundle's first golden input, so rows compare like for like.
A software device's or simulator's row is correctness only: it gets no ratio
to the CPU, and the text says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgec import runtimes
from edgec.errors import InputError
from edgec.runtimes.timing import bench
from edgec.toolchain.bundle import Bundle
from edgec.toolchain.golden import golden_samples, read_golden
from edgec.toolchain.lm_speed import peak_rss_mb

REFERENCE = "ort-cpu"


@dataclass
class Row:
    artifact: str
    runtime: str
    median_ms: float
    p90_ms: float
    simulated: bool
    device: str
    device_mb: float | None  # bytes the device allocator holds at peak, where the runtime says

    @property
    def per_second(self) -> float:
        return 1000.0 / self.median_ms if self.median_ms else 0.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "runs_per_second": round(self.per_second, 2)}


def bench_bundle(b: Bundle, runtime: str | None, runs: int) -> list[Row]:
    """The artifacts verified on `runtime` (default: every runtime), then ORT CPU as the reference."""
    if b.manifest["task"] == "text-generation":
        raise InputError("a language-model bundle: measure decoding with edgec generate BUNDLE --runtime R --json")
    pairs = [(a, rt) for a in b.manifest["artifacts"] for rt in a["verified_on"] if runtime in (None, rt)]
    if not pairs:
        offered = sorted({rt for a in b.manifest["artifacts"] for rt in a["verified_on"]})
        raise InputError(f"no artifact in {b.root} is verified on '{runtime}': choose one of {', '.join(offered)}")
    if runtime != REFERENCE:
        pairs += [(a, REFERENCE) for a in b.manifest["artifacts"] if REFERENCE in a["verified_on"]
                  and (a, REFERENCE) not in pairs][:1]
    rows = []
    for art, rt in pairs:
        arrays = read_golden(b.root / art["golden"]["path"])
        names = [t["name"] for t in art["inputs"]]
        feed, _ = golden_samples(arrays, art["golden"]["runtimes"][0], names, [t["name"] for t in art["outputs"]])[0]
        session = b.session(art, rt)
        simulated = runtimes.runtime(rt).simulated
        t = bench(lambda: session.run(feed), runs=3 if simulated else runs, warmup=1 if simulated else 3)
        info = getattr(session, "device_info", None)
        rows.append(Row(art["path"], rt, round(t.median_ms, 3), round(t.p90_ms, 3), simulated,
                        info.name if info else "CPU", _device_mb(session)))
    return rows


def _device_mb(session) -> float | None:
    return session.device_memory() if hasattr(session, "device_memory") else None


def render(rows: list[Row]) -> list[str]:
    ref = next((r for r in rows if r.runtime == REFERENCE), None)
    lines = [f"{'artifact@runtime':48} {'device':28} {'median ms':>10} {'p90 ms':>9} {'runs/s':>8} "
             f"{'device MB':>9}  vs {REFERENCE}"]
    for r in rows:
        if r.simulated:
            versus = "correctness only, not device speed"
        elif ref is not None and r is not ref:
            versus = f"{ref.median_ms / r.median_ms:.2f}x faster" if r.median_ms else ""
        else:
            versus = ""
        mem = f"{r.device_mb:.1f}" if r.device_mb is not None else "-"
        lines.append(f"{r.artifact + '@' + r.runtime:48} {r.device[:28]:28} {r.median_ms:>10.2f} {r.p90_ms:>9.2f} "
                     f"{r.per_second:>8.1f} {mem:>9}  {versus}")
    lines.append(f"peak resident memory of this process: {peak_rss_mb():.0f} MB")
    return lines
