"""`npu`: an integer-only A16W8 QDQ graph that runs whole on Qualcomm's HTP (QNN), and with `--soc` the
same graph precompiled for each SoC's HTP (QNN context binaries), so a phone skips compiling it."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch

from edgec.calibration.plan import PrecisionPlan
from edgec.errors import BackendError, ExportError
from edgec.exporters.artifact import Artifact
from edgec.exporters.qnn_context import SOCS, QnnContext, Soc, place_context
from edgec.targets.base import Build, Built, Target

MATCH_ATOL = 1e-3  # a QNN context against the same compiled graph: equal in practice, this only absorbs noise


class Npu(Target):
    name = "npu"
    description = "integer-only A16W8 QDQ ONNX that runs whole on Qualcomm's HTP (QNN)"
    backend = "qnn-htp"

    def build(self, job: Build, module: torch.nn.Module, out_dir: Path, float_onnx: Artifact) -> Built:
        from edgec.exporters.integer_check import check_integer_only
        from edgec.exporters.onnx_qdq import quantize_qdq
        from edgec.runtimes import qnn_htp

        plan = job.recipe.plan or PrecisionPlan()
        report = {}
        if job.recipe.smooth is not None:
            float_onnx, report["smoothing"] = self._smoothed(job, module, out_dir)
        with job.progress.step(f"quantize {plan.activations} activations / int8 weights "
                               f"({len(job.feeds.calib)} calibration samples)"):
            result = quantize_qdq(float_onnx.path, out_dir / "model.onnx", job.feeds.calib, plan)
        with job.progress.step("check the graph is integer-only"):
            check = check_integer_only(onnx.load(result.artifact.path))
        with job.progress.step("HTP op coverage (QNN, CPU fallback disabled)"):
            cov = qnn_htp.coverage(result.artifact.path)
        report["calibration"] = {"source": job.feeds.calib_source, "observer": plan.observer,
                                 "observers_chosen": result.observers}
        report["precision"] = {**plan.to_dict(),
                               "int16_why": plan.why_16bit if plan.activations == "uint16" else None}
        report["npu"] = {"backend": self.backend, **cov.to_dict(),
                         "coverage": cov.fraction, "integer_only": check.integer_only,
                         "integer_violations": check.violations[:50],
                         "int16_tensors": result.int16_reasons(check.int16_tensors)}
        # the same QDQ file runs on ORT CPU too: measured beside the HTP, and alone when the HTP refuses it
        art = Artifact(result.artifact.path, result.artifact.format,
                       *((self.backend, ("ort-cpu",)) if cov.runs_fully else ("ort-cpu",)))
        contexts = []
        if job.recipe.soc and not job.comparison:
            if not cov.runs_fully:
                raise ExportError(f"--soc: {art.path.name} does not run whole on the HTP ({cov.error}), so no QNN "
                                  "context can be compiled: export without --soc and read the report's rejected nodes")
            contexts, report["npu"]["contexts"] = self._contexts(job, art, out_dir)
        return Built([art, *contexts], report)

    def _contexts(self, job: Build, qdq: Artifact, out_dir: Path) -> tuple[list[Artifact], list[dict]]:
        """One precompiled QNN context per SoC asked for; those the simulator ran first."""
        from edgec.exporters.onnx_io import onnx_io

        io = onnx_io(qdq.path)  # the context takes and returns the QDQ graph's tensors, quantized inside
        arts, rows = [], []
        for name in job.recipe.soc:
            soc = SOCS[name]
            with job.progress.step(f"compile a QNN context binary for {soc.name} ({soc.product}, HTP v{soc.htp_arch})"):
                ctx = compile_context(qdq.path, soc, out_dir, job.scratch, job.feeds.golden)
            arts.append(Artifact(ctx.path, "onnx-qnn-context", self.backend, not_run=ctx.not_run,
                                 manifest={**io, "qnn": ctx.manifest(qdq.path.name)}, beside=(ctx.binary,)))
            rows.append({"path": ctx.path.name, "binary": ctx.binary.name, "bytes": arts[-1].bytes, **ctx.to_dict(),
                         "status": ctx.not_run or f"verified on the HTP simulator (v{soc.htp_arch})"})
        return sorted(arts, key=lambda a: bool(a.not_run)), rows

    def _smoothed(self, job: Build, module: torch.nn.Module, out_dir: Path) -> tuple[Artifact, dict]:
        """The float graph the quantizer sees: smoothed, equivalent to `module`."""
        from edgec.passes.smooth import smooth

        with job.progress.step(f"smooth activation outliers (alpha {job.recipe.smooth.alpha})"):
            result = smooth(module, job.calib_tensors(), job.recipe.smooth)
            art = job.float_onnx(result.module, f"{out_dir.name}-smoothed.onnx")
        return art, {**job.recipe.smooth.to_dict(), **result.to_dict()}

    def build_lm(self, job: Build, module: torch.nn.Module, out_dir: Path) -> Built:
        from edgec.targets.npu_lm import build_npu_lm

        return build_npu_lm(job, module, out_dir)


def compile_context(qdq: Path, soc: Soc, out_dir: Path, scratch: Path, feeds: list[dict]) -> QnnContext:
    """`qdq` compiled for `soc` into `out_dir`; run on `feeds` and compared where the simulator runs it."""
    from edgec.runtimes import qnn_htp

    stem = f"{qdq.stem}.qnn-{soc.name.lower()}"
    tmp = Path(tempfile.mkdtemp(prefix=f"{stem}-", dir=scratch))  # ORT refuses to overwrite a context
    done = qnn_htp.compile_context(qdq, tmp / f"{stem}.onnx", soc.soc_model, soc.htp_arch, feeds)
    path, binary, sdk = place_context(done.path, out_dir / f"{stem}.onnx", out_dir / f"{stem}.bin")
    if done.outputs is None:
        return QnnContext(soc, path, binary, sdk, done.seconds, None, None, f"compiled, not run: {done.not_run}")
    t0 = time.perf_counter()
    try:
        session = qnn_htp.load(path)
    except BackendError as e:
        raise ExportError(f"the QNN context for {soc.name} does not load although its graph ran ({e})") from e
    load_seconds = time.perf_counter() - t0
    diff = max(float(np.abs(np.asarray(a, np.float64) - b).max())
               for f, want in zip(feeds, done.outputs) for a, b in zip(session.run(f), want))
    if not diff <= MATCH_ATOL:
        raise ExportError(f"the QNN context for {soc.name} differs from the QDQ graph compiled for it by {diff:.3g} "
                          f"(more than {MATCH_ATOL}): report it with the QNN SDK version {sdk}")
    return QnnContext(soc, path, binary, sdk, done.seconds, load_seconds, diff)
