"""The `edgec` command line. User errors end in one line and exit code 2."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from edgec.errors import EdgecError
from edgec.toolchain.quiet import quiet_libraries

EXIT_USER_ERROR = 2


def _quiet_torch() -> None:
    import torch  # noqa: F401  (torch resets its loggers on import; quiet them after)

    logging.getLogger("torch").setLevel(logging.ERROR)


def _fail(message: str) -> None:
    click.echo(f"edgec: error: {message}", err=True)
    sys.exit(EXIT_USER_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgec")
def cli() -> None:
    """Take a model to integer-only edge artifacts, verified on real runtimes."""


@cli.command()
@click.argument("model")
@click.option("--target", "-t", default="npu", show_default=True,
              help="cpu (int8 ONNX + ExecuTorch), npu (integer-only, Qualcomm HTP) or gpu (IREE modules).")
@click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path),
              help="Output directory (replaced whole when the export succeeds).")
@click.option("--calib", type=click.Path(path_type=Path),
              help="Calibration data: .txt/.jsonl (one sample per line) or a folder of images.")
@click.option("--calib-samples", type=int, help="Calibration samples to use [default: 32].")
@click.option("--seq-len", type=int, help="Static sequence length of text models [default: 128].")
@click.option("--prune", "prune_ratio", type=float,
              help="Structured pruning: fraction of prunable parameters (heads, MLP channels) to remove.")
@click.option("--prune-method", type=click.Choice(["flap", "magnitude"]), default=None,
              help="Pruning criterion [default: flap].")
@click.option("--token-budget", help="Tokens kept after an early layer: a fraction (0.5) or a count (8).")
@click.option("--token-layer", type=int, help="The layer whose attention picks the kept tokens [default: 0].")
@click.option("--gpu-api", type=click.Choice(["vulkan", "cuda"]), default=None,
              help="--target gpu: the GPU API [default: vulkan].")
@click.option("--gpu-arch", help="--target gpu: architectures, comma-separated, as IREE names them "
                                 "(adreno, valhall, rdna3, ampere; sm_80) [default: phone and desktop GPUs].")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default=None,
              help="--target gpu: precision inside the modules [default: fp32].")
@click.option("--soc", help="--target npu: also precompile a QNN context binary for each SoC's HTP, "
                            "comma-separated (sm8550, sm8650, sm8750, ...) [default: none].")
@click.option("--recipe", type=click.Path(path_type=Path), help="Recipe file (JSON or YAML).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def export(model, target, out, calib, calib_samples, seq_len, prune_ratio, prune_method, token_budget,
           token_layer, gpu_api, gpu_arch, precision, soc, recipe, quiet) -> None:
    """Export MODEL (a zoo name or a Hugging Face directory) for --target."""
    _quiet_torch()
    from edgec.toolchain.pipeline import export as run_export
    from edgec.progress import Progress
    from edgec.toolchain.recipe import load_recipe

    try:
        r = load_recipe(recipe)
        archs = None if gpu_arch is None else tuple(a for a in gpu_arch.split(",") if a.strip())
        socs = None if soc is None else tuple(s for s in soc.split(",") if s.strip())
        r = r.with_overrides(calib_samples=calib_samples, seq_len=seq_len, gpu_api=gpu_api, gpu_arch=archs,
                             precision=precision, soc=socs, prune=_prune_config(r, prune_ratio, prune_method),
                             token_budget=_budget_config(r, token_budget, token_layer))
    except ValueError as e:
        _fail(f"{e}: fix the option value")
    if prune_method is not None and r.prune is None:
        _fail("--prune-method needs a pruning ratio: give --prune RATIO (or 'prune' in the recipe)")
    progress = Progress(quiet)
    report = run_export(model, target, out, calib, r, progress)
    if not quiet and "perplexity" in report:
        ppl = report["perplexity"]
        rows = ", ".join(f"{k} {v['value']:.3f}" for k, v in ppl["per_runtime"].items() if v["kind"] == "artifact")
        progress.console.print(f"[bold]{report['model']['name']}[/] -> {out}  (perplexity: float "
                               f"{ppl['float']:.3f}; {rows})")
    elif not quiet:
        acc = report["accuracy"]
        progress.console.print(
            f"[bold]{report['model']['name']}[/] -> {out}  ({acc['metric']}: {acc['quantized']:.4f} on "
            f"{acc['headline']}, "
            f"size {min(report['size_ratio'].values()):.3f}x float)")
    click.echo(str(out / "report.md"))


def _prune_config(recipe, ratio: float | None, method: str | None):
    from edgec.passes.prune import PruneConfig

    if ratio is None and method is None:
        return None
    if recipe.prune is None and ratio is None:
        return None  # a method alone: refused by the caller
    base = recipe.prune or PruneConfig(ratio=0.0)
    return PruneConfig(**{**base.to_dict(), **({"ratio": ratio} if ratio is not None else {}),
                          **({"method": method} if method else {})})


def _budget_config(recipe, budget: str | None, layer: int | None = None):
    """"0.5" is a fraction of the tokens, "8" a count."""
    if budget is None:
        if layer is not None:
            raise ValueError("--token-layer needs --token-budget")
        return None
    return _token_budget(recipe, budget=_budget_value(budget), layer=layer)


def _budget_value(text: str) -> float | int:
    try:
        return int(text) if text.strip().isdigit() else float(text)
    except ValueError:
        raise ValueError(f"--token-budget {text!r} is neither a fraction nor a count") from None


def _token_budget(recipe, **changes):
    """The recipe's token-budget settings (all defaults if it has none) with the given, non-None changes."""
    from edgec.passes.token_budget import TokenBudgetConfig

    base = recipe.token_budget.to_dict() if recipe.token_budget else {"budget": 1.0}
    return TokenBudgetConfig(**{**base, **{k: v for k, v in changes.items() if v is not None}})


@cli.command()
@click.argument("model")
@click.option("--target", "-t", default="npu", show_default=True, help="cpu or npu.")
@click.option("--out", "-o", "out", required=True, type=click.Path(path_type=Path), help="Output directory.")
@click.option("--prune", "ratios", default="0,0.1,0.2,0.3,0.4", show_default=True,
              help="Comma-separated pruning ratios.")
@click.option("--token-budget", "budgets", default="1.0,0.75,0.5,0.25", show_default=True,
              help="Comma-separated token budgets: fractions (0.5) or counts (8); 1.0 keeps every token.")
@click.option("--token-layer", type=int, help="The layer whose attention picks the kept tokens [default: 0].")
@click.option("--prune-method", type=click.Choice(["flap", "magnitude"]), default="flap", show_default=True)
@click.option("--calib", type=click.Path(path_type=Path), help="Calibration data, as for export.")
@click.option("--recipe", type=click.Path(path_type=Path), help="Recipe file (JSON or YAML).")
@click.option("--quiet", "-q", is_flag=True, help="No progress output.")
def sweep(model, target, out, ratios, budgets, token_layer, prune_method, calib, recipe, quiet) -> None:
    """Export MODEL at every pruning ratio x token budget and plot the trade-offs."""
    _quiet_torch()
    from edgec.progress import Progress
    from edgec.toolchain.recipe import load_recipe
    from edgec.toolchain.sweep import sweep as run_sweep

    try:
        grid_r = [float(x) for x in ratios.split(",")]
        grid_b = [_budget_value(x) for x in budgets.split(",")]
    except ValueError:
        _fail("--prune and --token-budget take comma-separated numbers, e.g. 0,0.2 and 1.0,0.5")
    r = load_recipe(recipe)
    try:
        if token_layer is not None:  # the budget itself varies per point
            r = r.with_overrides(token_budget=_token_budget(r, layer=token_layer))
        from edgec.toolchain.sweep import grid
        grid(r, grid_r, grid_b, prune_method)  # every point's settings are valid
    except ValueError as e:
        _fail(f"{e}: fix the option value")
    points = run_sweep(model, target, out, grid_r, grid_b, calib, r, prune_method, Progress(quiet))
    if not quiet:
        for p in points:
            click.echo(f"prune {p['prune']:<4g} budget {p['token_budget']:<5g} accuracy {p['accuracy']:.4f} "
                       f"latency {p['latency_vs_float']:.2f}x float ({p['artifact']}), {p['bytes']:,} bytes",
                       err=True)
    click.echo(str(out / "report.md"))


@cli.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--text", help="Text to embed (text bundles).")
@click.option("--image", type=click.Path(path_type=Path), help="Image to classify (image bundles).")
@click.option("--runtime", "-r", help="Runtime to run on [default: the first artifact's own runtime].")
@click.option("--check", is_flag=True, help="Run the bundle's golden inputs and compare with its golden outputs.")
def run(bundle, text, image, runtime, check) -> None:
    """Run a bundle through its manifest alone, as an app would."""
    _quiet_torch()
    from edgec.toolchain.bundle import check_golden, open_bundle

    b = open_bundle(bundle)
    if b.manifest["task"] == "text-generation":
        _run_lm(b, runtime, check, text is not None or image is not None)
        return
    art, rt = b.artifact(runtime)
    if check:
        results = check_golden(b, art, rt)
        for i, (measure, ok) in enumerate(results):
            click.echo(f"golden {i}: {measure} {'ok' if ok else 'MISMATCH'}")
        if not all(ok for _, ok in results):
            _fail(f"{art['path']} on {rt} does not reproduce the bundle's golden outputs")
        click.echo(f"{art['path']} on {rt}: {len(results)} golden outputs reproduced")
        if text is None and image is None:
            return
    feed = b.task.user_input(b.root, b.manifest, text, image)
    outputs = b.session(art, rt).run(feed)
    click.echo(f"{b.manifest['model']} ({b.manifest['task']}), {art['path']} on {rt}")
    for line in b.task.describe(outputs, feed, b.manifest):
        click.echo(f"  {line}")


def _run_lm(b, runtime: str | None, check: bool, has_input: bool) -> None:
    """A language-model bundle: --check replays its golden prompts; text goes through edgec generate."""
    from edgec.toolchain.generate import check_golden

    if has_input or not check:
        _fail(f"{b.root} holds a language model: run it with edgec generate {b.root} --prompt \"...\"")
    art, rt = b.artifact(runtime)
    results = check_golden(b.root, runtime)
    for i, (measure, ok) in enumerate(results):
        click.echo(f"golden {i}: {measure} {'ok' if ok else 'MISMATCH'}")
    if not all(ok for _, ok in results):
        _fail(f"{art['path']} on {rt} does not reproduce the bundle's golden tokens")
    click.echo(f"{art['path']} on {rt}: {len(results)} golden generations reproduced")


@cli.command("bench")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--runtime", "-r", help="Runtime to measure [default: every runtime the bundle was verified on]; "
                                      "ORT CPU runs beside it as the reference.")
@click.option("--runs", type=click.IntRange(min=1), default=20, show_default=True, help="Timed runs after warm-up.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def bench_cmd(bundle, runtime, runs, as_json) -> None:
    """Latency, throughput and device memory of a bundle's artifacts, against ORT CPU in the same run."""
    import json

    from edgec.toolchain.bench_bundle import bench_bundle, render
    from edgec.toolchain.bundle import open_bundle

    rows = bench_bundle(open_bundle(bundle), runtime, runs)
    if as_json:
        click.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    for line in render(rows):
        click.echo(line)


@cli.command()
@click.argument("source")
@click.option("--prompt", "-p", help="The prompt text.")
@click.option("--prompt-file", type=click.Path(path_type=Path), help="Read the prompt from a UTF-8 file.")
@click.option("--max-new-tokens", "-n", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--runtime", "-r",
              help="torch (a model: transformers' generate), or a bundle's ort-genai, executorch, qnn-htp, "
                   "ort-cpu, iree-vulkan or iree-cuda [default: torch for a model, the bundle's first "
                   "artifact's engine].")
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 is greedy.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as one JSON line on stderr.")
@click.option("--kv-offload", type=click.Choice(["none", "host", "disk"]),
              help="Tiered KV cache (runtime ort-tiered): chunks beyond --kv-budget go to host RAM or disk.")
@click.option("--kv-budget", metavar="BYTES", help="KV state kept in memory, e.g. 64MB or 1GiB.")
@click.option("--kv-policy", type=click.Choice(["exact", "topk"]),
              help="exact: every chunk is attended; topk: the sink, the recent chunk and the top --kv-topk "
                   "chunks per KV head by Quest's bound [default: exact].")
@click.option("--kv-topk", type=click.IntRange(min=1), help="Chunks per KV head for --kv-policy topk [default: 8].")
@click.option("--kv-chunk", type=click.IntRange(min=1), help="Tokens per chunk [default: 64].")
@click.option("--kv-dtype", type=click.Choice(["float32", "float16", "int8"]),
              help="How offloaded chunks are stored (int8: per-token scales) [default: float32].")
@click.option("--kv-dir", type=click.Path(path_type=Path),
              help="Folder for disk chunks [default: a temporary folder]; each run keeps its own subfolder "
                   "and removes it at exit.")
def generate(source, prompt, prompt_file, max_new_tokens, runtime, temperature, top_p, seed, as_json,
             kv_offload, kv_budget, kv_policy, kv_topk, kv_chunk, kv_dtype, kv_dir) -> None:
    """Generate text from SOURCE (a model directory, a zoo name or an exported bundle), streamed to stdout."""
    if kv_offload is None and runtime != "ort-tiered":
        _quiet_torch()  # the tiered runtime needs neither torch nor transformers once its stages exist
    import json

    from edgec.runtimes.llm import Sampling
    from edgec.toolchain.generate import generate as run_generate, open_lm
    from edgec.toolchain.lm_speed import peak_rss_mb

    if (prompt is None) == (prompt_file is None):
        _fail("give the prompt as --prompt TEXT or --prompt-file FILE (one of them)")
    if prompt_file is not None:
        try:
            prompt = Path(prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            _fail(f"cannot read --prompt-file {prompt_file} ({e.__class__.__name__}): give a UTF-8 text file")
    kv = _kv_options(kv_offload, kv_budget, kv_policy, kv_topk, kv_chunk, kv_dtype, kv_dir)
    opened = open_lm(source, runtime, kv)
    out = click.get_text_stream("stdout")
    g = run_generate(opened, prompt, max_new_tokens, Sampling(temperature, top_p, seed),
                     on_text=lambda t: (out.write(t), out.flush()))
    out.write("\n")
    out.flush()
    stats = {**g.stats(), "peak_rss_mb": round(peak_rss_mb(), 1), "runtime": opened.label,
             "threads": opened.session.threads}
    cache = getattr(opened.session, "last_cache", None)
    if cache is not None:
        stats["kv"] = cache.summary()
    if as_json:
        click.echo(json.dumps(stats), err=True)
    else:
        click.echo(f"[{opened.label}] {stats['prompt_tokens']} prompt tokens, {stats['new_tokens']} new; "
                   f"prefill {stats['prefill_tokens_per_s']} tokens/s, decode {stats['decode_tokens_per_s']} "
                   f"tokens/s, first token after {stats['time_to_first_token_ms']} ms, peak memory "
                   f"{stats['peak_rss_mb']:.0f} MB (process), {stats['threads']} threads", err=True)
        if "kv" in stats:
            k = stats["kv"]
            click.echo(f"[KV cache] {k['tokens']} tokens in {k['chunks']} chunks per layer; {k['spilled']} chunks "
                       f"moved out of memory, {k['chunks_read']} read back ({k['mb_read']:.1f} MB) over "
                       f"{k['steps']} steps", err=True)


def _kv_options(offload, budget, policy, topk, chunk, dtype, kv_dir):
    """KVOptions when any --kv-* option is given, else None (the runtime's own cache)."""
    from edgec.runtimes.kv_tiers import KVOptions

    given = {k: v for k, v in dict(offload=offload, budget=budget, policy=policy, topk=topk, chunk=chunk,
                                   dtype=dtype, dir=kv_dir).items() if v is not None}
    if not given:
        return None
    if "budget" in given:
        given["budget"] = _bytes(budget, "--kv-budget")
    return KVOptions(**given)


_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30}


def _bytes(text: str, option: str) -> int:
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if m is None or m.group(2).lower() not in _UNITS or float(m.group(1)) <= 0:
        _fail(f"{option} '{text}' is not a size: give bytes, e.g. 64MB, 512KiB or 1GB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@cli.group()
def zoo() -> None:
    """Built-in models."""


@zoo.command("list")
def zoo_list() -> None:
    """List the built-in models."""
    from edgec.toolchain.zoo import ZOO

    for entry in ZOO.values():
        click.echo(f"{entry.name:12s} {entry.description}")


def _terminate(signum, frame) -> None:
    from edgec.toolchain.publish import Terminated

    raise Terminated()


def main() -> None:
    from edgec.toolchain.publish import Terminated

    quiet_libraries()
    previous = signal.signal(signal.SIGTERM, _terminate)  # clean up as on Ctrl-C
    try:
        cli(standalone_mode=False)
    except EdgecError as e:
        _fail(str(e))
    except click.exceptions.Abort:
        _fail("interrupted")
    except click.ClickException as e:
        _fail(e.format_message())
    except KeyboardInterrupt:
        _fail("interrupted")
    except Terminated:
        _fail("terminated (SIGTERM): nothing was written")
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    main()
