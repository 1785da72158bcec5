"""report.md for a language model: perplexity, generation speed, memory and sizes, per engine."""

from __future__ import annotations

from edgec.toolchain.report import _kb, _table, npu_section


def _num(x, fmt: str = ".1f") -> str:
    return "" if x is None or x != x else format(x, fmt)


def render_lm(r: dict) -> str:
    m = r["model"]
    lines = [f"# edgec export: {m['name']} for {r['target']}", "", f"{r.get('holds') or r['target_description']}.", "",
             f"Model: `{m['architecture']}` ({m['task']}), {m['parameters']:,} parameters, static context "
             f"{r['context_length']} tokens. Loading took {r['load_seconds']} s, the export {r['export_seconds']} s.",
             "", "## Artifacts", ""]
    lines += _table(["file", "format", "engine", "verified on", "size", "vs float32 weights"],
                    [[f"`{a['path']}`", a["format"], a["runtime"], ", ".join(a["verified_on"]), _kb(a["bytes"]),
                      f"{r['size_ratio'][a['path']]:.3f}x"] for a in r["artifacts"]])
    lines += [f"Float32 weights: {_kb(r['float_bytes'])}.", ""]
    lines += _perplexity(r["perplexity"])
    lines += _speed(r["generation_speed"], r)
    if r.get("engines"):
        lines += ["## How each engine reads its artifact", ""]
        lines += [f"- `{name}`: {note}" for name, note in r["engines"].items()] + [""]
    lines += npu_section(r)
    if "calibration" in r:
        lines += ["## Calibration", "", f"Data: {r['calibration']['source']}.", ""]
    return "\n".join(lines)


def _perplexity(p: dict) -> list[str]:
    lines = ["## Perplexity", "", f"On {p['data']}; lower is better. Eager float32 model: **{p['float']:.3f}**. "
             "Each row is compared with the float model on the same windows.", ""]
    rows = [[f"`{k}`", v["kind"], f"{v['value']:.3f}", f"{v['float']:.3f}", f"{v['value'] / v['float']:.4f}x",
             v["tokens"], _kb(v["bytes"])] for k, v in p["per_runtime"].items()]
    return lines + _table(["artifact@runtime", "kind", "perplexity", "float, same windows", "ratio",
                           "tokens scored", "file size"], rows)


def _speed(s: dict, r: dict) -> list[str]:
    lines = ["## Generation speed", "",
             f"Greedy, {s['new_tokens']} new tokens after the {s['prompt']}; each runtime in its own process, "
             "median of 3 runs after a warm-up. Prefill tokens/s = prompt tokens / time to first token. Peak "
             "memory is the engine process's peak resident set (VmHWM: Python, the runtime's libraries and the "
             "model). This machine, one run: compare ratios, not absolute times.", ""]
    rows = [[f"`{k}`", v["kind"], _num(v["prefill_tokens_per_s"]), _num(v["decode_tokens_per_s"]),
             _num(v["time_to_first_token_ms"]), f"{v['peak_rss_mb']:.0f}",
             f"{v['decode_vs_float_eager']:.2f}x", _num(v.get("bytes_per_token", 0) / 1e6 or None, ".2f"),
             _num(v.get("bandwidth_fraction"), ".2f"), v["threads"]] for k, v in s["per_runtime"].items()]
    lines += _table(["artifact@runtime", "kind", "prefill tok/s", "decode tok/s", "first token ms",
                     "peak MB", "decode vs float eager", "MB read per token", "of the bound", "threads"], rows)
    if s.get("bound"):
        b = s["bound"]
        lines += [f"The bound: a decoded token reads every weight once (the token table one row) and the KV "
                  f"cache so far (counted at position {b['mean_position']:.0f}, the mean of the decode), so "
                  f"decode tok/s x MB read per token cannot pass this machine's memory read bandwidth, "
                  f"measured at **{b['bytes_per_s'] / 1e9:.1f} GB/s** on {b['threads']} threads "
                  f"({b['method']}). \"of the bound\" is the fraction a row reaches.", ""]
    shipped = {k: v for k, v in s["per_runtime"].items() if v["kind"] == "artifact"}
    if shipped:
        best = max(shipped, key=lambda k: shipped[k]["decode_tokens_per_s"])
        lines += [f"Fastest decode of the shipped artifacts: `{best}`.", ""]
    lines += _slower_than_float(s["per_runtime"], r["machine"].get("llc_bytes"))
    for k, v in s.get("simulator", {}).items():
        lines += [f"`{k}`: the {v['prompt_tokens']}-token prompt took {v['time_to_first_token_ms']:.0f} ms to the "
                  f"first token, then {_num(v['decode_tokens_per_s'], '.2f')} tokens/s over {v['new_tokens']} tokens: "
                  f"{v['note']}.", ""]
    m = r["machine"]
    lines += [f"Machine: {m.get('cpu')}, {m.get('logical_cores')} logical cores.", ""]
    return lines


def _slower_than_float(rows: dict, llc: int | None) -> list[str]:
    """A shipped quantized artifact that decodes slower than the float reference on the same engine, and
    why: weights that fit in the last-level cache make decode compute-bound, where dequantizing costs more
    than the bytes it saves."""
    lines = []
    refs = {k.rpartition("@")[2]: v for k, v in rows.items() if v["kind"] == "reference"}
    for k, v in rows.items():
        ref = refs.get(k.rpartition("@")[2])
        if v["kind"] != "artifact" or ref is None or v["decode_tokens_per_s"] >= ref["decode_tokens_per_s"]:
            continue
        ratio = v["decode_tokens_per_s"] / ref["decode_tokens_per_s"]
        read = ref.get("bytes_per_token")
        if read and llc and read <= llc:
            why = (f"the float weights ({read / 1e6:.1f} MB read per token) fit in this CPU's "
                   f"{llc / 1e6:.0f} MB last-level cache, so decode is bound by compute, not memory, and "
                   "dequantizing costs more than the bytes it saves; on a model larger than the cache the "
                   "quantized file is the faster one")
        else:
            why = "this engine's quantized kernels are slower than its float ones at these shapes"
        lines += [f"`{k}` decodes at {ratio:.2f}x the float reference on the same engine: {why}.", ""]
    return lines
