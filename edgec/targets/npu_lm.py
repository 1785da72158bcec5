"""`npu` for a decoder LM: one static-shape, integer-only A16W8 graph with the KV cache quantized.

Prefill and decode run the same graph: a chunk of new tokens (a decode step
repeats its one token to fill the chunk) against a cache of fixed length that
the host owns and updates between steps; the manifest says how.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.targets.base import Build, Built
from edgec.tasks.generation import context

DEFAULT_CHUNK = 32


def build_npu_lm(job: Build, module, out_dir: Path) -> Built:
    from edgec.exporters.onnx_decoder_npu import export_decoder_npu

    ctx = context(job.model.config, job.recipe)
    chunk = job.recipe.prefill_chunk or min(DEFAULT_CHUNK, ctx)
    calib = [f["input_ids"][0].astype(np.int64) for f in job.feeds.calib]
    with job.progress.step(f"export the static decoder (context {ctx}, chunk {chunk}) as A16W8 QDQ, check it "
                           f"is integer-only and runs on the HTP ({len(calib)} calibration windows)"):
        art, contract = export_decoder_npu(module, out_dir / "model.onnx", ctx, chunk, calib)
    checks = contract["checks"]
    htp = checks["htp"]
    report = {"calibration": {"source": job.feeds.calib_source, "observers_chosen": checks.get("observers")},
              "precision": {"activations": "uint16", "weights": "int8 per output channel",
                            "kv_cache": {k: v for k, v in contract["cache"].items() if k in ("dtype", "update")}},
              "npu": {"backend": "qnn-htp", **htp, "coverage": htp["fraction"],
                      "integer_only": checks["integer_only"], "integer_violations": []},
              "engines": {art.path.name: f"{contract['host_loop']}. Between steps: {contract['cache']['update']}"}}
    return Built([art], report)
