"""`npu` for a decoder LM: one static-shape, integer-only A16W8 graph with the KV cache quantized.

Prefill and decode run the same graph: a chunk of new tokens (a decode step
repeats its one token to fill the chunk) against a cache of fixed length that
the host owns and updates between steps; the manifest says how. The target
runs what the exporter cannot: the float graph under the host loop for the
calibration data, and the HTP's coverage check of the quantized graph.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgec.errors import ExportError
from edgec.exporters.artifact import Artifact
from edgec.targets.base import Build, Built
from edgec.tasks.generation import context

DEFAULT_CHUNK = 32
RECORDED_CHUNKS = 4  # chunk runs per calibration window the quantizer sees


def build_npu_lm(job: Build, module, out_dir: Path) -> Built:
    ctx = context(job.model.config, job.recipe)
    chunk = job.recipe.prefill_chunk or min(DEFAULT_CHUNK, ctx)
    calib = [f["input_ids"][0].astype(np.int64) for f in job.feeds.calib]
    with job.progress.step(f"export the static decoder (context {ctx}, chunk {chunk}) as A16W8 QDQ, check it "
                           f"is integer-only and runs on the HTP ({len(calib)} calibration windows)"):
        art, contract = export_decoder_npu(module, out_dir / "model.onnx", ctx, chunk, calib)
    checks = contract["checks"]
    htp = checks["htp"]
    report = {"holds": "an integer-only A16W8 static decoder graph (QDQ ONNX) for Qualcomm's HTP, the KV cache "
                       "in uint16 on the host",
              "calibration": {"source": job.feeds.calib_source, "observers_chosen": checks.get("observers")},
              "precision": {"activations": "uint16", "weights": "int8 per output channel",
                            "kv_cache": {k: v for k, v in contract["cache"].items() if k in ("dtype", "update")}},
              "npu": {"backend": "qnn-htp", **htp, "coverage": htp["fraction"],
                      "integer_only": checks["integer_only"], "integer_violations": []},
              "engines": {art.path.name: f"{contract['host_loop']}. Between steps: {contract['cache']['update']}"}}
    return Built([art], report)


def export_decoder_npu(module, out_path: Path, context: int, chunk: int,
                       calib_ids: list[np.ndarray]) -> tuple[Artifact, dict]:
    """The integer-only A16W8 graph, checked to run whole on the HTP, and its contract for the manifest."""
    from edgec.exporters.onnx_decoder_npu import export_float_decoder, quantize_decoder
    from edgec.runtimes import qnn_htp

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not calib_ids or not any(len(ids) for ids in calib_ids):
        raise ExportError("no calibration text: give --calib data with at least one tokenized sample")
    with tempfile.TemporaryDirectory(dir=out_path.parent) as tmp:
        float_path = Path(tmp) / "float.onnx"
        contract = export_float_decoder(module, float_path, context, chunk)
        feeds = calibration_feeds(float_path, contract, calib_ids)
        observers = quantize_decoder(float_path, out_path, contract, feeds)
    cov = qnn_htp.coverage(out_path)
    contract["checks"] = {"integer_only": True, "htp": cov.to_dict(), "observers": observers}
    runtime, also = ("qnn-htp", ("ort-cpu",)) if cov.runs_fully else ("ort-cpu", ())
    return Artifact(out_path, "onnx-qdq", runtime, also, manifest={"engine": contract}), contract


def calibration_feeds(float_path: Path, contract: dict, calib_ids: list[np.ndarray]) -> list[dict]:
    """The inputs the host loop gives the float graph while prefilling each text (cache included): the
    quantizer's calibration data comes from running the float graph the way the runtime will.

    Each window is prefilled whole, so every position of the context is reached, and RECORDED_CHUNKS of
    its chunk runs are kept, a different set in each window: each run carries the whole cache, so
    keeping all of a 512-token window's 16 would take gigabytes."""
    from edgec.runtimes.htp_llm import ChunkedLM
    from edgec.runtimes.ort_cpu import load

    session = load(float_path)
    lm = ChunkedLM(lambda f: dict(zip(session.output_names, session.run(f))), contract)
    feeds: list[dict] = []
    for w, ids in enumerate(calib_ids):
        ids = [int(i) for i in np.asarray(ids).reshape(-1)[:contract["context"]]]
        starts = range(0, len(ids), lm.chunk)
        stride = max(1, -(-len(starts) // RECORDED_CHUNKS))
        lm.reset()
        for j, at in enumerate(starts):
            lm.step(ids[at:at + lm.chunk], feeds if (j + w) % stride == 0 else None)
    return feeds
