"""model -> passes -> exporters -> runtimes -> report, for one target.

Everything is built in a hidden work directory beside OUT and renamed into
place at the end, so a failed export never leaves a half-written OUT.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import edgec
from edgec.errors import InputError
from edgec.exporters.artifact import Artifact
from edgec.exporters.onnx_float import export_onnx
from edgec.runtimes.timing import bench
from edgec.toolchain import evaluate
from edgec.toolchain.data import Feed, Feeds, build_feeds
from edgec.toolchain.load import LoadedModel, load
from edgec.toolchain.manifest import build_manifest
from edgec.toolchain.progress import Progress
from edgec.toolchain.recipe import Recipe
from edgec.toolchain.report import render_markdown
from edgec.toolchain.targets import Target, resolve

Runner = Callable[[Feed], np.ndarray]


def session(artifact: Artifact) -> Runner:
    """First output of one run of `artifact` on its runtime."""
    if artifact.runtime == "executorch":
        from edgec.runtimes import executorch
        s = executorch.load(artifact.path)
        return lambda feed: s.run(list(feed.values()))[0]
    if artifact.runtime == "qnn-htp":
        from edgec.runtimes import qnn_htp
        s = qnn_htp.load(artifact.path)
    else:
        from edgec.runtimes import ort_cpu
        s = ort_cpu.load(artifact.path)
    return lambda feed: s.run(feed)[0]


class Export:
    """One export run; its fields fill the report as the steps go."""

    def __init__(self, model: LoadedModel, target: Target, feeds: Feeds, recipe: Recipe,
                 work: Path, scratch: Path, progress: Progress):
        self.model, self.target, self.feeds, self.recipe = model, target, feeds, recipe
        self.work, self.scratch, self.progress = work, scratch, progress
        self.artifacts: list[Artifact] = []
        self.report: dict = {}

    @property
    def output_name(self) -> str:
        return "last_hidden_state" if self.model.kind == "text" else "logits"

    def metric(self, reference: list[np.ndarray], candidate: list[np.ndarray]) -> dict:
        if self.model.kind == "text":
            return evaluate.text_metric(reference, candidate, self.feeds.eval[:len(candidate)])
        return evaluate.image_metric(reference, candidate, self.feeds.labels)

    def run_all(self, run: Runner, name: str, limit: int | None = None) -> list[np.ndarray]:
        feeds = self.feeds.eval[:limit]
        return [run(f) for f in self.progress.track(feeds, f"evaluate {name}", total=len(feeds))]

    def build(self) -> dict:
        p, model = self.progress, self.model
        with p.step("export float ONNX (baseline)"):
            float_art = export_onnx(model.module, self.feeds.example, [self.output_name], self.scratch / "float.onnx")
        if self.target.plan is not None:
            self._build_static(float_art)
        else:
            self._build_dynamic()
        self._measure(float_art)
        return self.report

    def _build_static(self, float_art: Artifact) -> None:
        from edgec.exporters.integer_check import check_integer_only
        from edgec.exporters.onnx_qdq import quantize_qdq
        from edgec.runtimes import qnn_htp
        import onnx

        plan = self.recipe.plan or self.target.plan
        if self.recipe.smooth is not None:
            float_art = self._smoothed(float_art)
        with self.progress.step(f"quantize {plan.activations} activations / int8 weights ({len(self.feeds.calib)} calibration samples)"):
            result = quantize_qdq(float_art.path, self.work / "model.onnx", self.feeds.calib, plan)
        self.artifacts.append(result.artifact)
        with self.progress.step("check the graph is integer-only"):
            check = check_integer_only(onnx.load(result.artifact.path))
        with self.progress.step("HTP op coverage (QNN, CPU fallback disabled)"):
            cov = qnn_htp.coverage(result.artifact.path)
        self.report["calibration"] = {"source": self.feeds.calib_source, "observer": plan.observer,
                                      "observers_chosen": result.observers}
        self.report["precision"] = {**plan.to_dict(), "int16_why": plan.why_16bit if plan.activations == "uint16" else None}
        self.report["npu"] = {"backend": self.target.npu_backend, **cov.to_dict(),
                              "coverage": cov.fraction, "integer_only": check.integer_only,
                              "integer_violations": check.violations[:50],
                              "int16_tensors": result.int16_reasons(check.int16_tensors)}
        self.htp_ok = cov.runs_fully

    def _smoothed(self, baseline: Artifact) -> Artifact:
        """The float graph the quantizer sees: smoothed, equivalent to the baseline."""
        from edgec.passes.smooth import smooth

        calib = [tuple(torch.from_numpy(v) for v in f.values()) for f in self.feeds.calib]
        with self.progress.step(f"smooth activation outliers (alpha {self.recipe.smooth.alpha})"):
            result = smooth(self.model.module, calib, self.recipe.smooth)
            art = export_onnx(result.module, self.feeds.example, [self.output_name], self.scratch / "smoothed.onnx")
        self.report["smoothing"] = {**self.recipe.smooth.to_dict(), **result.to_dict()}
        return art

    def _build_dynamic(self) -> None:
        from edgec.exporters.executorch import export_pte
        from edgec.exporters.onnx_cpu import export_cpu_int8, graph_note

        cfg = self.model.config
        with self.progress.step("export int8 ONNX for ORT CPU"):
            art = export_cpu_int8(self.model.module, self.feeds.example, self.work / "model.onnx",
                                  num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size)
        self.artifacts.append(art)
        with self.progress.step("export int8 ExecuTorch program (XNNPACK)"):
            example = tuple(torch.from_numpy(v) for v in self.feeds.example.values())
            calib = [tuple(torch.from_numpy(v) for v in f.values()) for f in self.feeds.calib[:4]]
            self.artifacts.append(export_pte(self.model.module, example, self.work / "model.pte", calib))
        self.report["calibration"] = {"source": "none needed: int8 weights, activations quantized per call"}
        self.report["graph"] = graph_note(self.model.kind)
        self.htp_ok = False

    def _measure(self, float_art: Artifact) -> None:
        reference = self.run_all(session(float_art), "float ONNX")
        per_runtime = {}
        for art in self.artifacts:
            per_runtime[f"{art.path.name}@{self._cpu_runtime(art)}"] = self.metric(
                reference, self.run_all(self._cpu_session(art), art.path.name))
        if self.htp_ok:
            n = self.recipe.htp_eval_samples or (8 if self.model.kind == "text" else 100)
            per_runtime["model.onnx@qnn-htp"] = self.metric(
                reference[:n], self.run_all(session(self.artifacts[0]), "on the HTP simulator", n))
        primary = per_runtime[next(iter(per_runtime))]
        self.report["accuracy"] = {
            "metric": "pooled sentence-embedding cosine to float" if self.model.kind == "text" else
                      ("top-1 accuracy" if self.feeds.labels is not None else "top-1 agreement with float"),
            "data": self.feeds.eval_source,
            "float": 1.0 if self.model.kind == "text" else self.metric(reference, reference)["value"],
            "quantized": primary["value"], "per_runtime": per_runtime}
        self.report["latency_ms"] = self._latency(float_art)
        self.report["float_bytes"] = float_art.bytes

    def _cpu_runtime(self, art: Artifact) -> str:
        return "executorch" if art.runtime == "executorch" else "ort-cpu"

    def _cpu_session(self, art: Artifact) -> Runner:
        return session(art if art.runtime == "executorch" else Artifact(art.path, art.format, "ort-cpu"))

    def _latency(self, float_art: Artifact) -> dict:
        runs, out = self.recipe.bench_runs, {}
        targets = [("float.onnx@ort-cpu", session(float_art))]
        targets += [(f"{a.path.name}@{self._cpu_runtime(a)}", self._cpu_session(a)) for a in self.artifacts]
        with self.progress.step(f"latency: {runs} warm runs per runtime and input"):
            for name, run in targets:
                out[name] = {label: bench(lambda: run(feed), runs=runs).to_dict()
                             for label, feed in self.feeds.bench.items()}
            if self.htp_ok:  # the simulator's time says nothing about a device: few runs, marked
                run = session(self.artifacts[0])
                out["model.onnx@qnn-htp-simulator"] = {
                    label: {**bench(lambda: run(feed), runs=3, warmup=1).to_dict(), "simulated": True}
                    for label, feed in list(self.feeds.bench.items())[:1]}
        return out


def _publish(work: Path, out: Path) -> None:
    """Swap the finished work directory into place; an old OUT is replaced whole."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [work, *work.rglob("*")]:  # temp files are created private
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export(source: str, target_name: str, out: Path, calib: Path | None = None,
           recipe: Recipe = Recipe(), progress: Progress | None = None) -> dict:
    progress = progress or Progress(quiet=True)
    target = resolve(target_name)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file: give a directory path")
    t0 = time.perf_counter()
    with progress.step(f"load {source}"):
        model = load(source)
    feeds = build_feeds(model, calib, recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="edgec-") as scratch:
            exp = Export(model, target, feeds, recipe, work, Path(scratch), progress)
            body = exp.build()
        tok_files = []
        if model.kind == "text":
            (work / "tokenizer").mkdir()
            for f in model.tokenizer_files:
                shutil.copy2(f, work / "tokenizer" / f.name)
                tok_files.append(f"tokenizer/{f.name}")
        manifest = build_manifest(model, target.name, exp.artifacts, work, recipe.seq_len, tok_files)
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
        report = {
            "edgec_version": edgec.__version__,
            "model": {"name": model.name, "architecture": model.config.model_type, "kind": model.kind,
                      "parameters": sum(p.numel() for p in model.module.parameters())},
            "target": target.name, "target_description": target.description,
            "recipe": recipe.to_dict(),
            "artifacts": [a.to_dict(work) for a in exp.artifacts],
            **body,
            "size_ratio": {a.path.name: round(a.bytes / body["float_bytes"], 4) for a in exp.artifacts},
            "step_seconds": progress.timings,
            "export_seconds": round(time.perf_counter() - t0, 1),
        }
        (work / "report.json").write_text(json.dumps(report, indent=2))
        (work / "report.md").write_text(render_markdown(report))
        _publish(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report
