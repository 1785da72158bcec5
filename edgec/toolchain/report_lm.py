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
             f"{v['decode_vs_float_eager']:.2f}x", v["threads"]] for k, v in s["per_runtime"].items()]
    lines += _table(["artifact@runtime", "kind", "prefill tok/s", "decode tok/s", "first token ms",
                     "peak MB", "decode vs float eager", "threads"], rows)
    shipped = {k: v for k, v in s["per_runtime"].items() if v["kind"] == "artifact"}
    if shipped:
        best = max(shipped, key=lambda k: shipped[k]["decode_tokens_per_s"])
        lines += [f"Fastest decode of the shipped artifacts: `{best}`.", ""]
    for k, v in s.get("simulator", {}).items():
        lines += [f"`{k}`: the {v['prompt_tokens']}-token prompt took {v['time_to_first_token_ms']:.0f} ms to the "
                  f"first token, then {_num(v['decode_tokens_per_s'], '.2f')} tokens/s over {v['new_tokens']} tokens: "
                  f"{v['note']}.", ""]
    m = r["machine"]
    lines += [f"Machine: {m.get('cpu')}, {m.get('logical_cores')} logical cores.", ""]
    return lines
