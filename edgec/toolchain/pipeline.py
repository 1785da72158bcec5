"""model -> passes -> target build -> runtimes -> report, for one target.

The pipeline knows no target, runtime or model kind by name: the target builds
artifacts and names the runtimes each is verified on, the runtime registry opens
them, and the model's task supplies data, outputs and the metric.

Everything is built in a hidden work directory beside OUT and renamed into
place at the end, so a failed export never leaves a half-written OUT.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

import edgec
from edgec import runtimes
from edgec.errors import InputError
from edgec.exporters.artifact import Artifact
from edgec.progress import Progress
from edgec.runtimes.timing import bench
from edgec.targets import Build, Built, Target, resolve
from edgec.tasks.base import Feed, Feeds, Outputs, torch_batches
from edgec.toolchain.golden import write_golden
from edgec.toolchain.lm_export import LMExport
from edgec.toolchain.load import LoadedModel, inspect, load
from edgec.toolchain.manifest import build_manifest
from edgec.toolchain.publish import atomic_dir
from edgec.toolchain.recipe import Recipe
from edgec.toolchain.report import render_markdown

Runner = Callable[[Feed], Outputs]
FLOAT = "float.onnx@ort-cpu"


def key(art: Artifact, runtime: str) -> str:
    return f"{art.path.name}@{runtime}"


class Export:
    """One export run: compress, build the target, measure against float (and quantized-only)."""

    render = staticmethod(render_markdown)  # report.json -> report.md

    def __init__(self, model: LoadedModel, target: Target, feeds: Feeds, recipe: Recipe,
                 work: Path, scratch: Path, progress: Progress):
        self.model, self.target, self.feeds, self.recipe = model, target, feeds, recipe
        self.task = model.task
        self.work, self.progress = work, progress
        self.job = Build(model, self.task, feeds, recipe, scratch, progress)
        self.report: dict = {}
        self.sessions: dict[tuple[str, str], runtimes.Session] = {}

    def build(self) -> dict:
        with self.progress.step("export float ONNX (baseline)"):
            baseline = self.job.float_onnx(self.model.module, "float.onnx")
        module = self._compress(self.model.module)
        compressed = module is not self.model.module
        float_art = self.job.float_onnx(module, "compressed-float.onnx") if compressed else baseline
        primary = self.target.build(self.job, module, self.work, float_art)
        self.report.update(primary.report)
        qonly = None
        if compressed and self.recipe.compare_quantized_only:  # what the compression passes buy
            (self.job.scratch / "quantized-only").mkdir()
            with self.progress.step("build the quantized-only model for comparison"):
                qonly = self.target.build(replace(self.job, comparison=True), self.model.module,
                                          self.job.scratch / "quantized-only", baseline)
        self._measure(baseline, primary, qonly)
        self.artifacts = primary.artifacts
        self.output_names = self.task.output_names(module)
        return self.report

    def golden(self, work: Path) -> dict[str, dict]:
        return {a.path.name: write_golden(work, a, self.feeds, self.session, self.output_names)
                for a in self.artifacts if a.runtimes}

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
            size = self.task.budget_size(self.model.config, self.recipe)
            with self.progress.step(f"token budget {self.recipe.token_budget.budget}"):
                result = apply_token_budget(module, self.recipe.token_budget, size)
            if result.changed:
                module = result.module
            self.report["token_budget"] = {**self.recipe.token_budget.to_dict(), **result.to_dict()}
        return module

    def session(self, art: Artifact, runtime: str) -> Runner:
        """All outputs of one run of `art` on `runtime`; one session per file and runtime."""
        if (art.path, runtime) not in self.sessions:
            self.sessions[art.path, runtime] = runtimes.load(runtime, art.path)
        return self.sessions[art.path, runtime].run

    def run_all(self, run: Runner, name: str, limit: int | None = None) -> list[Outputs]:
        feeds = self.feeds.eval[:limit]
        return [run(f) for f in self.progress.track(feeds, f"evaluate {name}", total=len(feeds))]

    def _limit(self, runtime: str) -> int | None:
        """A simulator evaluates fewer samples: enough to mean something, at a cost the report states."""
        if not runtimes.runtime(runtime).simulated:
            return None
        return self.recipe.htp_eval_samples or self.task.simulator_eval_samples

    def _accuracy(self, reference: list[Outputs], built: Built) -> dict:
        out = {}
        for art in built.artifacts:
            for rt in art.runtimes:
                n = self._limit(rt)
                t0 = time.perf_counter()
                got = self.run_all(self.session(art, rt), key(art, rt), n)
                ref = reference[:len(got)]
                out[key(art, rt)] = {**self.task.metric(ref, got, self.feeds),
                                     "float": self.task.metric(ref, ref, self.feeds)["value"],  # same samples
                                     "seconds": round(time.perf_counter() - t0, 1)}
        return out

    def _measure(self, baseline: Artifact, primary: Built, qonly: Built | None) -> None:
        reference = self.run_all(self.session(baseline, "ort-cpu"), "float ONNX")
        per_runtime = self._accuracy(reference, primary)
        head = key(primary.artifacts[0], primary.artifacts[0].runtime)
        self.report["accuracy"] = {
            "metric": self.task.metric_name(self.feeds), "data": self.feeds.eval_source,
            "float": self.task.metric(reference, reference, self.feeds)["value"],
            "headline": head, "quantized": per_runtime[head]["value"], "per_runtime": per_runtime}
        timed = [(FLOAT, baseline, "ort-cpu")] + [
            (key(a, rt), a, rt) for a in primary.artifacts for rt in a.runtimes]
        if qonly is not None:
            timed += [(f"quantized-only {key(a, rt)}", a, rt) for a in qonly.artifacts for rt in a.runtimes]
        self._latency(timed)
        self.report["float_bytes"] = baseline.bytes
        if qonly is not None:
            self.report["compared_to_quantized_only"] = self._versus(reference, primary, qonly)

    def _versus(self, reference: list[Outputs], primary: Built, qonly: Built) -> dict:
        """What the compression passes changed, against float and against quantization alone: both
        models on the same real runtime (a simulator would cost minutes and time nothing)."""
        lat = self.report["latency_ms"]
        ratio = lambda a, b: {label: {mode: round(t[mode]["median"] / b[label][mode]["median"], 3) for mode in t}
                              for label, t in a.items()}
        out = {}
        for a, q in zip(primary.artifacts, qonly.artifacts):
            rt = next((r for r in a.runtimes if not runtimes.runtime(r).simulated), a.runtime)
            q_acc = self._accuracy(reference, Built([Artifact(q.path, q.format, rt)]))
            k = key(a, rt)
            entry = {"accuracy": self.report["accuracy"]["per_runtime"][k]["value"],
                     "accuracy_quantized_only": q_acc[key(q, rt)]["value"],
                     "bytes": a.bytes, "bytes_quantized_only": q.bytes}
            if k in lat:
                entry["latency_vs_quantized_only"] = ratio(lat[k], lat[f"quantized-only {k}"])
                entry["latency_vs_float"] = ratio(lat[k], lat[FLOAT])
            out[k] = entry
        return out

    def _latency(self, timed: list[tuple[str, Artifact, str]]) -> None:
        """Hot (back to back) and cold (caches evicted first) latency on real runtimes; a simulator's
        wall time on its own, never as a device latency."""
        runs, lat, sim = self.recipe.bench_runs, {}, {}
        with self.progress.step(f"latency: {runs} hot and {runs} cold runs per runtime and input"):
            for name, art, rt in timed:
                run = self.session(art, rt)
                if runtimes.runtime(rt).simulated:
                    if name.startswith("quantized-only"):
                        continue
                    label, feed = next(iter(self.feeds.bench.items()))
                    sim[name] = {label: bench(lambda: run(feed), runs=3, warmup=1).to_dict()}
                    continue
                lat[name] = {label: {"hot": bench(lambda: run(feed), runs=runs).to_dict(),
                                     "cold": bench(lambda: run(feed), runs=runs, cold=True).to_dict()}
                             for label, feed in self.feeds.bench.items()}
        self.report["latency_ms"] = lat
        if sim:
            self.report["simulator_wall_ms"] = sim
        used = {rt for _, _, rt in timed}
        self.report["runtimes"] = {rt: self._runtime_info(rt) for rt in sorted(used)}

    def _runtime_info(self, name: str) -> dict:
        from edgec.runtimes.machine import package_version

        rt = runtimes.runtime(name)
        threads = {s.threads for (path, r), s in self.sessions.items() if r == name}
        devices = sorted({s.device_info.name for (path, r), s in self.sessions.items()
                          if r == name and hasattr(s, "device_info")})
        return {"description": rt.description, "version": package_version(rt.package), "simulated": rt.simulated,
                **({"simulator": rt.simulator_name} if rt.simulated else {}),
                **({"devices": devices} if devices else {}),
                "threads": threads.pop() if len(threads) == 1 else sorted(threads, key=str)}


JOBS = {"forward": Export, "lm": LMExport}  # a task's `export_job` -> the job that builds and measures it


@dataclass
class Prepared:
    """A loaded model with its data: shared by every export of a sweep."""

    source: str
    target: Target
    model: LoadedModel
    feeds: Feeds
    load_seconds: float


def check(source: str, target_name: str, recipes: list[Recipe]):
    """Every setting checked against the target and the model's config before any work starts."""
    target = resolve(target_name)
    src = inspect(source)
    for recipe in recipes:
        target.check(recipe)
        src.task.check(src.config, recipe)
    return target, src


def prepare(source: str, target_name: str, calib: Path | None, recipe: Recipe, progress: Progress,
            variants: list[Recipe] | None = None) -> Prepared:
    target, src = check(source, target_name, variants or [recipe])
    t0 = time.perf_counter()
    with progress.step(f"load {source}"):
        model = load(src)
    feeds = model.task.feeds(model, calib, recipe)
    return Prepared(source, target, model, feeds, round(time.perf_counter() - t0, 1))


def check_out(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} is a file: give a directory path")
    return out


def export(source: str, target_name: str, out: Path, calib: Path | None = None,
           recipe: Recipe = Recipe(), progress: Progress | None = None) -> dict:
    progress = progress or Progress(quiet=True)
    out = check_out(out)
    return export_prepared(prepare(source, target_name, calib, recipe, progress), out, recipe, progress)


def export_prepared(prepared: Prepared, out: Path, recipe: Recipe, progress: Progress) -> dict:
    # the float graph, its compressed twin and the quantized-only build: an estimate, said as one
    needs = 3 * 4 * sum(p.numel() for p in prepared.model.module.parameters())
    with atomic_dir(out, needs) as (work, scratch):
        return export_into(prepared, work, scratch, recipe, progress)


def export_into(prepared: Prepared, work: Path, scratch: Path, recipe: Recipe, progress: Progress) -> dict:
    """The bundle, written into the (hidden) folder `work`."""
    from edgec.runtimes.machine import machine_info

    model, target = prepared.model, prepared.target
    t0 = time.perf_counter()
    exp = JOBS[model.task.export_job](model, target, prepared.feeds, recipe, work, scratch, progress)
    body = exp.build()
    task_fields = model.task.bundle(model, recipe, exp.output_names, work)
    with progress.step(f"golden outputs ({len(prepared.feeds.golden)} inputs per artifact and runtime)"):
        golden = exp.golden(work)
    manifest = build_manifest(model, target.name, exp.artifacts, work, task_fields, golden)
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2))
    report = {
        "edgec_version": edgec.__version__,
        "model": {"name": model.name, "architecture": model.config.model_type, "kind": model.kind,
                  "task": model.task.name, "parameters": sum(p.numel() for p in model.module.parameters())},
        "target": target.name, "target_description": target.description,
        "recipe": recipe.to_dict(),
        "artifacts": [a.to_dict(work) for a in exp.artifacts],
        **body,
        "size_ratio": {str(a.path.relative_to(work)): round(a.bytes / body["float_bytes"], 4) for a in exp.artifacts},
        "machine": machine_info(),
        "step_seconds": dict(progress.timings),
        "load_seconds": prepared.load_seconds,
        "export_seconds": round(time.perf_counter() - t0, 1),
    }
    (work / "report.json").write_text(json.dumps(report, indent=2))
    (work / "report.md").write_text(exp.render(report))
    return report
