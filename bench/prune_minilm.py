"""What structured pruning (edgec.passes.prune) costs MiniLM: parameters removed against pooled cosine.

    python -m bench.prune_minilm [--ratios 0.1,0.2,0.3,0.4]

all-MiniLM-L6-v2 (the zoo's "minilm"), all 160 built-in calibration sentences
(~3,200 real tokens; 32 sentences keep 0.01-0.02 less cosine at ratio 0.3),
pooled-embedding cosine to the unpruned float model on the 160 held-out
sentences, in eager torch. Trailing columns that are padding in every
held-out sentence (and of each calibration batch) are cut before the forward:
right padding, so the real rows are unchanged. Variants, each at every ratio:
- magnitude: weight-column norms, no data, no compensation (the baseline),
  ranked per parameter removed, and "magnitude z" with the paper's ranking;
- flap paper: local fluctuation scores z-scored per layer, bias compensation;
- flap local: local fluctuation per parameter removed, compensation, refit;
- flap no refit: output-seen fluctuation per parameter removed, compensation;
- flap 1 step: the same, then a least-squares refit of every kept linear;
- flap: the same in 3 re-scored steps (the default).
The bar: at ratio 0.3 FLAP keeps cosine >= 0.95, removes >= 25% of the
encoder's parameters (the transformer layers) and beats magnitude.
"""

from __future__ import annotations

import argparse
import time

import torch

from edgec.calibration.text import builtin_sentences, encode
from edgec.passes.prune import PruneConfig, prune
from edgec.toolchain.load import load
from edgec.tasks.base import torch_batches

SEQ, N_CALIB, BATCH = 128, 160, 8
VARIANTS = [
    ("magnitude", dict(method="magnitude")),
    ("magnitude z", dict(method="magnitude", allocation="standardised")),
    ("flap paper", dict(method="flap", score="local", allocation="standardised", refit=False, steps=1)),
    ("flap local", dict(method="flap", score="local", steps=1)),
    ("flap no refit", dict(method="flap", refit=False, steps=1)),
    ("flap 1 step", dict(method="flap", steps=1)),
    ("flap", dict(method="flap")),
]
BAR = dict(ratio=0.3, cosine=0.95, encoder_removed=0.25)


def _batches(tok, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    enc = encode(tok, texts, SEQ)
    return torch_batches([{k: v[i:i + 1] for k, v in enc.items()} for i in range(len(texts))], BATCH)


@torch.no_grad()
def _pooled(module: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = module(ids, mask)
    m = mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1)


def _count(module: torch.nn.Module) -> tuple[int, int]:
    return sum(p.numel() for p in module.layers.parameters()), sum(p.numel() for p in module.parameters())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4", help="comma-separated pruning ratios")
    ap.add_argument("--variants", default=",".join(v for v, _ in VARIANTS), help="comma-separated variant names")
    args = ap.parse_args(argv)
    variants = [(v, kw) for v, kw in VARIANTS if v in args.variants.split(",")]
    ratios = [float(r) for r in args.ratios.split(",") if r]
    start = time.perf_counter()
    model = load("minilm")
    module, tok = model.module.eval(), model.tokenizer
    calib = _batches(tok, builtin_sentences("calib")[:N_CALIB])
    held = encode(tok, builtin_sentences("heldout"), SEQ)
    width = int(held["attention_mask"].sum(1).max())
    ids, mask = (torch.from_numpy(held[k][:, :width]) for k in ("input_ids", "attention_mask"))
    reference = _pooled(module, ids, mask)
    enc0, all0 = _count(module)

    rows, cos_at = [], {}
    for ratio in ratios:
        for label, kw in variants:
            t0 = time.perf_counter()
            res = prune(module, calib, PruneConfig(ratio=ratio, **kw))
            took = time.perf_counter() - t0
            cs = torch.nn.functional.cosine_similarity(_pooled(res.module, ids, mask), reference, dim=-1)
            enc, total = _count(res.module)
            cos_at[(ratio, label)] = (float(cs.mean()), 1 - enc / enc0)
            heads = sum(len(l.heads_kept) for l in res.layers)
            rows.append((f"{ratio:g}", label, f"{100 * (1 - enc / enc0):.1f}%", f"{100 * (1 - total / all0):.1f}%",
                         f"{cs.mean():.4f}", f"{cs.min():.4f}", f"{heads}/{sum(l.attn.heads for l in module.layers)}",
                         f"{took:.1f}s"))
            print(f"  ratio {ratio:g} {label}: cosine {cs.mean():.4f}", flush=True)

    header = ("ratio", "variant", "encoder params removed", "all params removed", "cos mean", "cos min",
              "heads kept", "prune time")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))
    print(f"\nall-MiniLM-L6-v2: {enc0:,} encoder / {all0:,} total parameters; {N_CALIB} calibration sentences, "
          f"S={SEQ}; pooled cosine to float over {len(ids)} held-out sentences")
    print(line(header) + "\n" + "-" * len(line(header)))
    for r in rows:
        print(line(r))
    r = BAR["ratio"]
    mag = max((c for (ratio, label), (c, _) in cos_at.items() if ratio == r and label.startswith("magnitude")),
              default=float("nan"))
    for (ratio, label), (c, removed) in cos_at.items():
        if ratio == r and label.startswith("flap"):
            ok = c >= BAR["cosine"] and removed >= BAR["encoder_removed"] and c > mag
            verdict = ("met" if ok else "MISSED") if mag == mag else "magnitude not run, not compared"
            print(f"bar at ratio {r:g} ({label}): cosine {c:.4f} (>= {BAR['cosine']}), encoder removed "
                  f"{100 * removed:.1f}% (>= {100 * BAR['encoder_removed']:.0f}%), best magnitude {mag:.4f}: "
                  f"{verdict}")
    print(f"total {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
