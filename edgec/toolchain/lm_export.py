"""model -> pruning -> target's decoder artifacts -> perplexity, speed and golden tokens per runtime.

The counterpart of `pipeline.Export` for language models: an LM is measured
by what it predicts over held-out text and how fast it generates, through each
engine's own loop, not by one forward pass per sample.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgec import runtimes
from edgec.exporters.artifact import Artifact
from edgec.progress import Progress
from edgec.runtimes.llm import Sampling
from edgec.targets import Build, Built, Target
from edgec.tasks.base import Feeds, torch_batches
from edgec.tasks.generation import GOLDEN_TOKENS, context, perplexity, window_nll
from edgec.toolchain.lm_speed import measure
from edgec.toolchain.report_lm import render_lm

SPEED_TOKENS = 64
REFERENCE = "torch"  # transformers' eager float model: the baseline of every ratio


class LMExport:
    render = staticmethod(render_lm)  # report.json -> report.md

    def __init__(self, model, target: Target, feeds: Feeds, recipe, work: Path, scratch: Path,
                 progress: Progress):
        self.model, self.target, self.feeds, self.recipe = model, target, feeds, recipe
        self.task, self.work, self.progress = model.task, work, progress
        self.job = Build(model, self.task, feeds, recipe, scratch, progress)
        self.tokenizer = model.source_dir / "tokenizer.json"
        self.output_names = ["logits"]
        self.report: dict = {}
        self.sessions: dict[tuple[Path, str], object] = {}

    @property
    def info(self) -> dict:
        return self.task.generation_info(self.model, self.recipe)

    def build(self) -> dict:
        module = self._prune(self.model.module)
        built = self.target.build_lm(self.job, module, self.work)
        self.artifacts = built.artifacts
        self.report.update(built.report)
        self.report["perplexity"] = self._perplexity(module, built)
        self.report["generation_speed"] = self._speed(built, module)
        self.report["float_bytes"] = 4 * sum(p.numel() for p in self.model.module.parameters())
        self.report["context_length"] = context(self.model.config, self.recipe)
        return self.report

    def _prune(self, module: torch.nn.Module) -> torch.nn.Module:
        if self.recipe.prune is None or self.recipe.prune.ratio <= 0:
            return module
        from edgec.passes.prune import prune

        feeds = self.feeds.prune_calib
        with self.progress.step(f"prune {self.recipe.prune.ratio:.0%} ({self.recipe.prune.method}, "
                                f"{len(feeds)} calibration windows)"):
            result = prune(module, torch_batches(feeds), self.recipe.prune)
        self.report["pruning"] = {**self.recipe.prune.to_dict(), **result.to_dict()}
        return result.module

    def name(self, path: Path) -> str:
        """A shipped file by its bundle path; a reference by its path in the scratch folder."""
        path = Path(path)
        if path.is_relative_to(self.work):
            return str(path.relative_to(self.work))
        if path.is_relative_to(self.job.scratch):
            return f"reference {path.relative_to(self.job.scratch)}"
        return path.name

    def session(self, art: Artifact, runtime: str):
        if (art.path, runtime) not in self.sessions:
            info = {**self.info, **art.manifest}
            self.sessions[art.path, runtime] = runtimes.runtime(runtime).load_lm(art.path, self.tokenizer, info)
        return self.sessions[art.path, runtime]

    def _limit(self, runtime: str) -> int | None:
        if not runtimes.runtime(runtime).simulated:
            return None
        return self.recipe.htp_eval_samples or self.task.simulator_windows(self.model.config, self.recipe)

    def _perplexity(self, module: torch.nn.Module, built: Built) -> dict:
        """Each artifact on each runtime, and the eager float model on the same windows; every window is
        reduced to its log-likelihood as it is scored."""
        with torch.no_grad():
            eager = [window_nll(module(torch.from_numpy(f["input_ids"])).numpy(), f)
                     for f in self.progress.track(self.feeds.eval, "perplexity: eager float")]
        out = {"data": self.feeds.eval_source, "float": perplexity(eager)["value"], "per_runtime": {}}
        for art, kind in [(a, "artifact") for a in built.artifacts] + [(a, "reference") for a in built.references]:
            for rt in art.runtimes:
                n = self._limit(rt) or len(self.feeds.eval)
                s = self.session(art, rt)
                got = [window_nll(s.score(f["input_ids"][0]), f)
                       for f in self.progress.track(self.feeds.eval[:n], f"perplexity: {self.name(art.path)}@{rt}",
                                                    total=n)]
                out["per_runtime"][f"{self.name(art.path)}@{rt}"] = {
                    **perplexity(got), "float": perplexity(eager[:n])["value"], "kind": kind, "bytes": art.bytes}
        return out

    def _bound(self, rows: dict, runs: list, module, position: float, built: Built) -> dict:
        """Bytes each row reads per decoded token and the fraction of the memory read bound it reaches."""
        from edgec.toolchain import decode_bound as db

        threads = max(int(v["threads"] or 1) for v in rows.values())
        with self.progress.step(f"memory read bandwidth ({threads} threads)"):
            bandwidth = db.read_bandwidth(threads)
        manifests = {a.path: a for a in built.artifacts + built.references}
        for rt, path, _ in runs:
            v = rows.get(f"{self.name(path)}@{rt}")
            if v is None:
                continue
            art = manifests.get(path)
            read = db.bytes_per_token(self.model.module, rt, position) if art is None else \
                db.bytes_per_token(module, rt, position, art.path, art.format, art.manifest)
            if read is None:
                continue
            v["bytes_per_token"] = read
            v["bandwidth_fraction"] = round(db.fraction(v["decode_tokens_per_s"], read, bandwidth), 3)
        return {"bytes_per_s": round(bandwidth), "threads": threads, "method": db.bandwidth_method(),
                "mean_position": position}

    def _speed(self, built: Built, module) -> dict:
        """Prefill and decode tokens/s, time to first token and peak memory, one process per runtime;
        a simulator's wall time is reported apart and never as device speed."""
        feed = next(iter(self.feeds.bench.values()))
        ctx = context(self.model.config, self.recipe)
        prompt = [int(t) for t in feed["input_ids"][0]][:ctx // 2]  # room for the new tokens
        new_tokens = min(SPEED_TOKENS, ctx - len(prompt))
        info = self.info
        runs = [(REFERENCE, self.model.source_dir, "float eager")]
        runs += [(rt, a.path, kind) for a, kind in [(a, "artifact") for a in built.artifacts]
                 + [(a, "reference") for a in built.references] for rt in a.runtimes]
        out, sim = {}, {}
        with self.progress.step(f"generation speed: {new_tokens} new tokens after a {len(prompt)}-token "
                                "prompt, one process per runtime"):
            for rt, path, kind in runs:
                name = f"{self.name(path)}@{rt}"
                art_info = {**info, **next((a.manifest for a in built.artifacts + built.references
                                            if a.path == path), {})}
                if runtimes.runtime(rt).simulated:
                    g = self.session(next(a for a in built.artifacts if a.path == path), rt).generate(
                        prompt, 4, Sampling())
                    sim[name] = {**g.stats(), "note": "simulator wall time on x86-64, not device speed"}
                    continue
                out[name] = {**measure(rt, Path(path), self.tokenizer, art_info, prompt, new_tokens),
                             "kind": kind}
        base = out[f"{self.model.source_dir.name}@{REFERENCE}"]["decode_tokens_per_s"]
        for v in out.values():
            v["decode_vs_float_eager"] = round(v["decode_tokens_per_s"] / base, 2)
        result = {"prompt": f"first {len(prompt)} tokens of a held-out chapter", "new_tokens": new_tokens,
                  "per_runtime": out,
                  "bound": self._bound(out, runs, module, len(prompt) + new_tokens / 2, built)}
        if sim:
            result["simulator"] = sim
        return result

    def golden(self, work: Path) -> dict[str, dict]:
        """Greedy tokens after each golden prompt, per artifact and runtime: a native runner's check."""
        from edgec.toolchain.golden import FOLDER, save_golden

        (work / FOLDER).mkdir(exist_ok=True)
        prompts = [[int(t) for t in f["input_ids"][0]] for f in self.feeds.golden]
        entries = {}
        for art in (a for a in self.artifacts if a.runtimes):
            arrays = {f"prompt/{i}": np.asarray(p, np.int64) for i, p in enumerate(prompts)}
            for rt in art.runtimes:
                picks = prompts[:1] if runtimes.runtime(rt).simulated else prompts
                for i, p in enumerate(picks):
                    g = self.session(art, rt).generate(p, GOLDEN_TOKENS, Sampling())
                    arrays[f"tokens/{rt}/{i}"] = np.asarray(g.tokens, np.int64)
            path = work / FOLDER / f"{art.path.name}.npz"
            save_golden(path, arrays)
            entries[art.path.name] = {"path": f"{FOLDER}/{path.name}", "samples": len(prompts),
                                      "runtimes": list(art.runtimes)}
        return entries
