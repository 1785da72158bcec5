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
from dataclasses import dataclass, field
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

Runner = Callable[[Feed], list[np.ndarray]]


def session(artifact: Artifact) -> Runner:
    """All outputs of one run of `artifact` on its runtime."""
    if artifact.runtime == "executorch":
        from edgec.runtimes import executorch
        s = executorch.load(artifact.path)
        return lambda feed: s.run(list(feed.values()))
    if artifact.runtime == "qnn-htp":
        from edgec.runtimes import qnn_htp
        s = qnn_htp.load(artifact.path)
    else:
        from edgec.runtimes import ort_cpu
        s = ort_cpu.load(artifact.path)
    return lambda feed: s.run(feed)


def on_cpu(art: Artifact) -> Artifact:
    """The same file on the CPU runtime that can run it (QDQ graphs run on ORT CPU too)."""
    return art if art.runtime == "executorch" else Artifact(art.path, art.format, "ort-cpu")


@dataclass
class Built:
    """What one target build produced: its artifacts and its part of the report."""

    artifacts: list[Artifact]
    report: dict = field(default_factory=dict)
    htp_ok: bool = False


def torch_inputs(feed: Feed) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(v) for v in feed.values())


def torch_batches(feeds: list[Feed], size: int = 8) -> list[tuple[torch.Tensor, ...]]:
    """Feeds stacked `size` at a time; a batch with an attention mask is cut after its longest real
    row (right padding, so real rows are unchanged) and a pass computes nothing on padding."""
    out = []
    for start in range(0, len(feeds), size):
        batch = {k: np.concatenate([f[k] for f in feeds[start:start + size]]) for k in feeds[0]}
        if "attention_mask" in batch:
            width = max(int(batch["attention_mask"].sum(1).max()), 1)
            batch = {k: v[:, :width] for k, v in batch.items()}
        out.append(tuple(torch.from_numpy(v) for v in batch.values()))
    return out


class Export:
    """One export run: compress, build the target, measure against float (and quantized-only)."""

    def __init__(self, model: LoadedModel, target: Target, feeds: Feeds, recipe: Recipe,
                 work: Path, scratch: Path, progress: Progress):
        self.model, self.target, self.feeds, self.recipe = model, target, feeds, recipe
        self.work, self.scratch, self.progress = work, scratch, progress
        self.report: dict = {}

    def output_names(self, module: torch.nn.Module) -> list[str]:
        if self.model.kind == "image":
            return ["logits"]
        from edgec.passes.token_budget import TextTokenBudget
        return ["last_hidden_state", "kept_mask"] if isinstance(module, TextTokenBudget) else ["last_hidden_state"]

    def metric(self, reference: list, candidate: list) -> dict:
        if self.model.kind == "text":
            return evaluate.text_metric(reference, candidate, self.feeds.eval[:len(candidate)])
        return evaluate.image_metric(reference, candidate, self.feeds.labels)

    def run_all(self, run: Runner, name: str, limit: int | None = None) -> list:
        feeds = self.feeds.eval[:limit]
        return [run(f) for f in self.progress.track(feeds, f"evaluate {name}", total=len(feeds))]

    def build(self) -> dict:
        with self.progress.step("export float ONNX (baseline)"):
            baseline = export_onnx(self.model.module, self.feeds.example, self.output_names(self.model.module),
                                   self.scratch / "float.onnx")
        module = self._compress(self.model.module)
        compressed = module is not self.model.module
        primary = self._build_target(module, self.work, None if compressed else baseline)
        self.report.update(primary.report)
        qonly = None
        if compressed and self.recipe.compare_quantized_only:  # what the compression passes buy
            (self.scratch / "quantized-only").mkdir()
            with self.progress.step("build the quantized-only model for comparison"):
                qonly = self._build_target(self.model.module, self.scratch / "quantized-only", baseline)
        self._measure(baseline, primary, qonly)
        self.artifacts = primary.artifacts
        return self.report

    def _compress(self, module: torch.nn.Module) -> torch.nn.Module:
        """Structured pruning, then static token dropping: each a torch-level pass."""
        if self.recipe.prune is not None and self.recipe.prune.ratio > 0:
            from edgec.passes.prune import prune
            feeds = self.feeds.prune_calib
            with self.progress.step(f"prune {self.recipe.prune.ratio:.0%} ({self.recipe.prune.method}, "
                                    f"{len(feeds)} calibration samples)"):
                result = prune(module, torch_batches(feeds), self.recipe.prune)
            module = result.module
            self.report["pruning"] = {**self.recipe.prune.to_dict(), **result.to_dict()}
        if self.recipe.token_budget is not None:
            from edgec.passes.token_budget import apply_token_budget
            size = self.recipe.seq_len if self.model.kind == "text" else None
            with self.progress.step(f"token budget {self.recipe.token_budget.budget}"):
                result = apply_token_budget(module, self.recipe.token_budget, size)
            if result.changed:
                module = result.module
            self.report["token_budget"] = {**self.recipe.token_budget.to_dict(), **result.to_dict()}
        return module

    def _build_target(self, module: torch.nn.Module, out_dir: Path, float_art: Artifact | None) -> Built:
        if self.target.plan is None:
            return self._build_dynamic(module, out_dir)
        if float_art is None:
            float_art = export_onnx(module, self.feeds.example, self.output_names(module),
                                    self.scratch / f"{out_dir.name}-float.onnx")
        return self._build_static(module, out_dir, float_art)

    def _build_static(self, module: torch.nn.Module, out_dir: Path, float_art: Artifact) -> Built:
        from edgec.exporters.integer_check import check_integer_only
        from edgec.exporters.onnx_qdq import quantize_qdq
        from edgec.runtimes import qnn_htp
        import onnx

        plan = self.recipe.plan or self.target.plan
        report = {}
        if self.recipe.smooth is not None:
            float_art, report["smoothing"] = self._smoothed(module, out_dir)
        with self.progress.step(f"quantize {plan.activations} activations / int8 weights "
                                f"({len(self.feeds.calib)} calibration samples)"):
            result = quantize_qdq(float_art.path, out_dir / "model.onnx", self.feeds.calib, plan)
        with self.progress.step("check the graph is integer-only"):
            check = check_integer_only(onnx.load(result.artifact.path))
        with self.progress.step("HTP op coverage (QNN, CPU fallback disabled)"):
            cov = qnn_htp.coverage(result.artifact.path)
        report["calibration"] = {"source": self.feeds.calib_source, "observer": plan.observer,
                                 "observers_chosen": result.observers}
        report["precision"] = {**plan.to_dict(),
                               "int16_why": plan.why_16bit if plan.activations == "uint16" else None}
        report["npu"] = {"backend": self.target.npu_backend, **cov.to_dict(),
                         "coverage": cov.fraction, "integer_only": check.integer_only,
                         "integer_violations": check.violations[:50],
                         "int16_tensors": result.int16_reasons(check.int16_tensors)}
        return Built([result.artifact], report, cov.runs_fully)

    def _smoothed(self, module: torch.nn.Module, out_dir: Path) -> tuple[Artifact, dict]:
        """The float graph the quantizer sees: smoothed, equivalent to `module`."""
        from edgec.passes.smooth import smooth

        calib = [torch_inputs(f) for f in self.feeds.calib]
        with self.progress.step(f"smooth activation outliers (alpha {self.recipe.smooth.alpha})"):
            result = smooth(module, calib, self.recipe.smooth)
            art = export_onnx(result.module, self.feeds.example, self.output_names(module),
                              self.scratch / f"{out_dir.name}-smoothed.onnx")
        return art, {**self.recipe.smooth.to_dict(), **result.to_dict()}

    def _build_dynamic(self, module: torch.nn.Module, out_dir: Path) -> Built:
        from edgec.exporters.executorch import export_pte
        from edgec.exporters.onnx_cpu import export_cpu_int8, graph_note

        cfg = self.model.config
        with self.progress.step("export int8 ONNX for ORT CPU"):
            art = export_cpu_int8(module, self.feeds.example, out_dir / "model.onnx",
                                  num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size,
                                  output_names=self.output_names(module))
        with self.progress.step("export int8 ExecuTorch program (XNNPACK)"):
            calib = [torch_inputs(f) for f in self.feeds.calib[:4]]
            pte = export_pte(module, torch_inputs(self.feeds.example), out_dir / "model.pte", calib)
        return Built([art, pte], {"calibration": {"source": "none needed: int8 weights, activations "
                                                            "quantized per call"},
                                  "graph": graph_note(self.model.kind)})

    def _accuracy(self, reference: list, built: Built) -> dict:
        per_runtime = {f"{a.path.name}@{on_cpu(a).runtime}": self.metric(
            reference, self.run_all(session(on_cpu(a)), a.path.name)) for a in built.artifacts}
        if built.htp_ok:
            n = self.recipe.htp_eval_samples or (8 if self.model.kind == "text" else 100)
            per_runtime["model.onnx@qnn-htp"] = self.metric(
                reference[:n], self.run_all(session(built.artifacts[0]), "on the HTP simulator", n))
        return per_runtime

    def _measure(self, baseline: Artifact, primary: Built, qonly: Built | None) -> None:
        reference = self.run_all(session(baseline), "float ONNX")
        per_runtime = self._accuracy(reference, primary)
        self.report["accuracy"] = {
            "metric": "pooled sentence-embedding cosine to float" if self.model.kind == "text" else
                      ("top-1 accuracy" if self.feeds.labels is not None else "top-1 agreement with float"),
            "data": self.feeds.eval_source,
            "float": 1.0 if self.model.kind == "text" else self.metric(reference, reference)["value"],
            "quantized": next(iter(per_runtime.values()))["value"], "per_runtime": per_runtime}
        timed = [("float.onnx@ort-cpu", baseline)] + [
            (f"{a.path.name}@{on_cpu(a).runtime}", on_cpu(a)) for a in primary.artifacts]
        if qonly is not None:
            timed += [(f"quantized-only {a.path.name}@{on_cpu(a).runtime}", on_cpu(a)) for a in qonly.artifacts]
        self.report["latency_ms"] = self._latency(timed, primary)
        self.report["float_bytes"] = baseline.bytes
        if qonly is not None:
            self.report["compared_to_quantized_only"] = self._versus(reference, primary, qonly)

    def _versus(self, reference: list, primary: Built, qonly: Built) -> dict:
        """What the compression passes changed, against float and against quantization alone."""
        q_acc = self._accuracy(reference, Built(qonly.artifacts))
        lat = self.report["latency_ms"]
        out = {}
        for a, q in zip(primary.artifacts, qonly.artifacts):
            key = f"{a.path.name}@{on_cpu(a).runtime}"
            out[key] = {
                "accuracy": self.report["accuracy"]["per_runtime"][key]["value"],
                "accuracy_quantized_only": q_acc[key]["value"],
                "bytes": a.bytes, "bytes_quantized_only": q.bytes,
                "latency_vs_quantized_only": {label: round(t["median"] / lat[f"quantized-only {key}"][label]["median"], 3)
                                              for label, t in lat[key].items()},
                "latency_vs_float": {label: round(t["median"] / lat["float.onnx@ort-cpu"][label]["median"], 3)
                                     for label, t in lat[key].items()}}
        return out

    def _latency(self, timed: list[tuple[str, Artifact]], primary: Built) -> dict:
        runs, out = self.recipe.bench_runs, {}
        with self.progress.step(f"latency: {runs} warm runs per runtime and input"):
            for name, art in timed:
                run = session(art)
                out[name] = {label: bench(lambda: run(feed), runs=runs).to_dict()
                             for label, feed in self.feeds.bench.items()}
            if primary.htp_ok:  # the simulator's time says nothing about a device: few runs, marked
                run = session(primary.artifacts[0])
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


@dataclass
class Prepared:
    """A loaded model with its data: shared by every export of a sweep."""

    source: str
    target: Target
    model: LoadedModel
    feeds: Feeds
    load_seconds: float


def prepare(source: str, target_name: str, calib: Path | None, recipe: Recipe, progress: Progress) -> Prepared:
    target = resolve(target_name)  # before loading: a typo fails at once
    t0 = time.perf_counter()
    with progress.step(f"load {source}"):
        model = load(source)
    feeds = build_feeds(model, calib, recipe)
    return Prepared(source, target, model, feeds, round(time.perf_counter() - t0, 1))


def export(source: str, target_name: str, out: Path, calib: Path | None = None,
           recipe: Recipe = Recipe(), progress: Progress | None = None) -> dict:
    progress = progress or Progress(quiet=True)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file: give a directory path")
    return export_prepared(prepare(source, target_name, calib, recipe, progress), out, recipe, progress)


def export_prepared(prepared: Prepared, out: Path, recipe: Recipe, progress: Progress) -> dict:
    model, target, feeds = prepared.model, prepared.target, prepared.feeds
    t0 = time.perf_counter()
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
            "step_seconds": dict(progress.timings),
            "load_seconds": prepared.load_seconds,
            "export_seconds": round(time.perf_counter() - t0, 1),
        }
        (work / "report.json").write_text(json.dumps(report, indent=2))
        (work / "report.md").write_text(render_markdown(report))
        _publish(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return report
