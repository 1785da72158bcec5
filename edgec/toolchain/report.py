"""report.md: the same facts as report.json, for a person."""

from __future__ import annotations

MAX_ROWS = 20  # longer lists stay in report.json


def _kb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in r) + " |" for r in rows), ""]


def render_markdown(r: dict) -> str:
    m = r["model"]
    lines = [f"# edgec export: {m['name']} for {r['target']}", "",
             f"{r['target_description']}.", "",
             f"Model: `{m['architecture']}` ({m['kind']}), {m['parameters']:,} parameters. "
             f"Loading took {r['load_seconds']} s, the export {r['export_seconds']} s.", "", "## Artifacts", ""]
    lines += _table(["file", "format", "runtime", "size", "vs float ONNX"],
                    [[f"`{a['path']}`", a["format"], a["runtime"], _kb(a["bytes"]),
                      f"{r['size_ratio'][a['path']]:.3f}x"] for a in r["artifacts"]])
    lines.append(f"Float ONNX baseline: {_kb(r['float_bytes'])}.")
    lines.append("")
    acc = r["accuracy"]
    lines += ["## Accuracy", "", f"Metric: {acc['metric']}, on {acc['data']}. Float: {acc['float']:.4f}. "
              f"Headline: **{acc['quantized']:.4f}** on `{acc['headline']}`.", ""]
    rows = [[f"`{k}`", f"{v['value']:.4f}", f"{v['float']:.4f}", f"{v['min']:.4f}" if "min" in v else "",
             f"{v['max_abs_diff']:.2e}" if "max_abs_diff" in v else "", v["samples"], f"{v['seconds']} s"]
            for k, v in acc["per_runtime"].items()]
    lines += _table(["artifact@runtime", "value", "float, same samples", "worst sample", "max abs diff to float",
                     "samples", "time taken"], rows)
    slow = [k for k in acc["per_runtime"] if r["runtimes"].get(k.rsplit("@", 1)[1], {}).get("simulated")]
    if slow:
        sim = lambda k: r["runtimes"][k.rsplit("@", 1)[1]].get("simulator", "simulator")
        lines += [f"`{k}` runs on a {sim(k)}: {acc['per_runtime'][k]['samples']} held-out samples took "
                  f"{acc['per_runtime'][k]['seconds']} s." for k in slow] + [""]
    lines += _latency(r)
    lines += _compression(r)
    if "graph" in r:
        lines += ["## What the graph does", "", r["graph"], ""]
    lines += npu_section(r)
    lines += gpu_section(r)
    if "calibration" in r:
        c = r["calibration"]
        lines += ["## Calibration", "", f"Data: {c['source']}."]
        if c.get("observers_chosen"):
            lines.append(f"Observer: {c['observer']}; ranges chosen per tensor: "
                         + ", ".join(f"{k} {v}" for k, v in c["observers_chosen"].items()) + ".")
        lines.append("")
    return "\n".join(lines)



def gpu_section(r: dict) -> list[str]:
    """Each IREE module: what it is for, and whether it ran here or was only compiled."""
    if "gpu" not in r:
        return []
    g = r["gpu"]
    found = "; ".join(f"{api}: {', '.join(d) or 'none'}" for api, d in g["devices"].items())
    lines = ["## GPU modules", "", f"API: {g['api']}; precision: {g['precision']} ({g['precision_note']}). "
             f"Devices here: {found}. All modules come from the same `model.onnx` (export {g['export']}).", ""]
    lines += _table(["module", "api", "architecture", "size", "compile", "status"],
                    [[f"`{m['path']}`", m["api"], m["arch"], _kb(m["bytes"]), f"{m['compile_seconds']} s", m["status"]]
                     for m in g["modules"]])
    lines += ["A module runs only on the GPU family it was compiled for: one for a real GPU would run on the "
              "software device and return garbage, so the runtime refuses it.", "",
              f"{g['int8'][0].upper()}{g['int8'][1:]}.", ""]
    return lines


def npu_section(r: dict) -> list[str]:
    """HTP coverage, the integer-only verdict, 16-bit tensors and every rejected node's fix."""
    if "npu" not in r:
        return []
    n, lines = r["npu"], []
    lines += ["## NPU", "",
              f"Backend: {n['backend']} (simulated on x86-64), CPU fallback disabled.", "",
              f"- HTP op coverage: {n['coverage']:.1%} ({n['htp_nodes']}/{n['total_nodes']} nodes); "
              f"runs whole on the HTP: {'yes' if n['runs_fully'] else 'no'}",
              f"- integer-only graph: {'yes' if n['integer_only'] else 'no'}"]
    if "kv_cache" in r["precision"]:  # a decoder: every activation and the cache are 16-bit
        kv = r["precision"]["kv_cache"]
        lines += [f"- activations: {r['precision']['activations']} everywhere, weights "
                  f"{r['precision']['weights']}; KV cache: {kv['dtype']}", "", f"Cache update: {kv['update']}.", ""]
    else:
        lines += [f"- 16-bit tensors: {len(n['int16_tensors'])} ({r['precision'].get('int16_why') or 'none'})", ""]
    needed = [t for t in n.get("int16_tensors", []) if t["reason"].startswith("needed")]
    if needed:
        lines += [f"{len(needed)} of them need 16 bits by their own range (8-bit SQNR below "
                  f"30 dB); the worst:", ""]
        lines += _table(["tensor", "8-bit SQNR (dB)"],
                        [[t["tensor"], t["sqnr8_db"]] for t in
                         sorted(needed, key=lambda t: t["sqnr8_db"])[:10]])
    if n.get("unsupported_ops"):
        shown = n["unsupported_ops"][:MAX_ROWS]
        lines += _table(["node", "op", "reason", "rewrite that fixes it"],
                        [[u["name"], u["op_type"], u["reason"], u["rewrite"]] for u in shown])
        if len(n["unsupported_ops"]) > MAX_ROWS:
            lines += [f"... and {len(n['unsupported_ops']) - MAX_ROWS} more in report.json.", ""]
    if n.get("integer_violations"):
        lines += _table(["node", "op", "why it is not integer-only"],
                        [[v["node"], v["op"], v["reason"]] for v in n["integer_violations"][:MAX_ROWS]])
    return lines + _contexts(n.get("contexts", []))


def _contexts(rows: list[dict]) -> list[str]:
    """Each precompiled QNN context: its SoC, size, and what creating a session from it saves."""
    if not rows:
        return []
    s = lambda v: "" if v is None else f"{v:.3f} s"
    lines = ["### QNN context binaries", "",
             "The QDQ graph compiled ahead of time for one SoC's HTP: an app opens the `.onnx` with the QNN EP "
             "(the `.bin` beside it) and skips compiling the graph on the phone. Compile: creating a session from "
             "the QDQ graph for that SoC; load: creating one from the context (one of each, this machine). Diff: "
             "max abs difference of outputs to the QDQ graph compiled for the same SoC, on the golden inputs.", ""]
    lines += _table(["context", "SoC", "HTP", "size", "compile", "load", "diff", "status"],
                    [[f"`{c['path']}` + `{c['binary']}`", f"{c['soc']} ({c['product']})", c["htp_arch"],
                      _kb(c["bytes"]), s(c["compile_seconds"]), s(c["load_seconds"]),
                      "" if c["max_abs_diff_to_qdq"] is None else f"{c['max_abs_diff_to_qdq']:.1e}", c["status"]]
                     for c in rows])
    return lines


def _latency(r: dict) -> list[str]:
    """Hot and cold medians against float on the same input; a simulator's wall time on its own line."""
    lat = r["latency_ms"]
    labels = list(lat["float.onnx@ort-cpu"])
    base = lat["float.onnx@ort-cpu"]
    lines = ["## Latency", "",
             "Milliseconds, median / p90 of warm runs, this machine, one run. Hot: back to back, weights in "
             "cache. Cold: caches evicted before each run (an app that runs the model now and then). "
             "Ratios are to the float ONNX on ORT CPU in the same mode.", ""]
    rows = []
    for name, per_input in lat.items():
        row = [f"`{name}`"]
        for label in labels:
            for mode in ("hot", "cold"):
                t = per_input.get(label, {}).get(mode)
                row.append("" if t is None else
                           f"{t['median']:.2f} / {t['p90']:.2f} ({t['median'] / base[label][mode]['median']:.2f}x)")
        rows.append(row)
    lines += _table(["artifact@runtime", *(f"{label} {mode}" for label in labels for mode in ("hot", "cold"))], rows)
    for name, per_input in r.get("simulator_wall_ms", {}).items():
        for label, t in per_input.items():
            sim = r["runtimes"].get(name.rsplit("@", 1)[1], {}).get("simulator", "simulator")
            lines += [f"Wall time of `{name}` ({label}) on the {sim}: {t['median']:.0f} ms per run on this x86-64 "
                      f"machine: correctness only, not device speed.", ""]
    lines += ["Runtimes:", ""]
    lines += [f"- `{name}` {v['version'] or ''}: {v['description']}"
              + (f"; device: {', '.join(v['devices'])}" if v.get("devices") else "")
              + f"; threads: {'set by the ' + v.get('simulator', 'simulator') if v['simulated'] else v['threads']}"
              for name, v in r["runtimes"].items()]
    m = r["machine"]
    isa = ", ".join(k for k, v in m.get("isa", {}).items() if v) or "none of the listed"
    lines += ["", f"Machine: {m.get('cpu')}, {m.get('logical_cores')} logical cores; ISA: {isa}.", ""]
    return lines


def _compression(r: dict) -> list[str]:
    """Pruning and token dropping: what was removed, and what it cost and bought."""
    if "pruning" not in r and "token_budget" not in r:
        return []
    lines = ["## Compression", ""]
    if "pruning" in r:
        p = r["pruning"]
        lines += [f"Structured pruning ({p['method']}, ratio {p['ratio']}): {p['params_before']:,} -> "
                  f"{p['params_after']:,} parameters ({p['removed_fraction']:.1%} of the prunable ones).", ""]
        lines += _table(["layer", "heads kept", "heads removed", "MLP channels kept", "MLP channels removed",
                         "parameters", "parameters removed"],
                        [[l["layer"], len(l["heads_kept"]), len(l["heads_removed"]), len(l["channels_kept"]),
                          len(l["channels_removed"]), f"{l['params_before']:,} -> {l['params_after']:,}",
                          f"{l['params_before'] - l['params_after']:,} "
                          f"({(l['params_before'] - l['params_after']) / max(l['params_before'], 1):.1%})"]
                         for l in p["layers"]])
    if "token_budget" in r:
        t = r["token_budget"]
        lines += [f"Token budget: {t['kept']} of {t['total']} tokens kept after block {t['layer']} "
                  f"({t['tokens_after']} tokens in later blocks{', one fused' if t['fused'] else ''}).", ""]
    for key, v in r.get("compared_to_quantized_only", {}).items():
        line = (f"`{key}`: accuracy {v['accuracy']:.4f} (quantized only: {v['accuracy_quantized_only']:.4f}), "
                f"{v['bytes']:,} bytes (quantized only: {v['bytes_quantized_only']:,})")
        if "latency_vs_float" in v:
            fmt = lambda d: ", ".join(f"{k} {x['hot']:.2f}x hot, {x['cold']:.2f}x cold" for k, x in d.items())
            line += (f"; latency vs quantized only: {fmt(v['latency_vs_quantized_only'])}"
                     f"; vs float: {fmt(v['latency_vs_float'])}")
        lines += [line + ".", ""]
    return lines
