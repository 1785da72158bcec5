"""End to end: pruning and token budgets composed with each target's quantization, through the CLI.

Each test exports its own compressed model; apart from the shared zoo exports, they run in a process of
their own."""

import json

FAST = {"eval_samples": 100, "bench_runs": 3, "calib_samples": 8, "htp_eval_samples": 2}


def test_pruning_and_token_budget_compose_with_npu_quantization(run_cli, tmp_path):
    out = tmp_path / "vit"
    recipe = tmp_path / "r.json"
    # what composes, not how well; the shipped graph gets a QNN context, the quantized-only one is not shipped
    recipe.write_text(json.dumps({**FAST, "prune_calib_samples": 32, "soc": ["sm8750"]}))
    code, _, err = run_cli("export", "vit-digits", "--target", "npu", "-o", out, "--prune", "0.2",
                           "--token-budget", "0.5", "--token-layer", "0", "--recipe", recipe, "-q")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert abs(report["pruning"]["removed_fraction"] - 0.2) < 0.05
    assert report["pruning"]["params_after"] < report["pruning"]["params_before"]
    budget = report["token_budget"]
    assert budget["layer"] == 0 and budget["kept"] == 128 and budget["tokens_after"] < 257
    assert report["npu"]["runs_fully"] and report["npu"]["coverage"] == 1.0 and report["npu"]["integer_only"]
    versus = report["compared_to_quantized_only"]["model.onnx@ort-cpu"]  # both on the same real runtime
    assert versus["bytes"] < versus["bytes_quantized_only"]
    assert set(versus) >= {"accuracy", "accuracy_quantized_only", "latency_vs_quantized_only", "latency_vs_float"}
    assert "quantized-only model.onnx@ort-cpu" in report["latency_ms"]
    (ctx,) = report["npu"]["contexts"]
    assert ctx["path"] == "model.qnn-sm8750.onnx" and ctx["max_abs_diff_to_qdq"] <= 1e-3
    assert list(report["compared_to_quantized_only"]) == ["model.onnx@ort-cpu"]
    assert report["accuracy"]["per_runtime"]["model.qnn-sm8750.onnx@qnn-htp"]["samples"] == FAST["htp_eval_samples"]
    md = (out / "report.md").read_text()
    assert "parameters removed" in md and "Token budget: 128 of 256 tokens kept after block 0" in md
    assert all(l["params_after"] <= l["params_before"] for l in report["pruning"]["layers"])


def test_vit_token_budget_on_cpu_runtimes(run_cli, tmp_path):
    """Without -q: progress goes to stderr, the report's path alone to stdout."""
    from helpers import check_bundle

    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"eval_samples": 40, "bench_runs": 1, "compare_quantized_only": False}))
    out = tmp_path / "vit"
    code, stdout, err = run_cli("export", "vit-digits", "--target", "cpu", "-o", out, "--token-budget", "0.5",
                                "--recipe", recipe)
    assert code == 0, err
    assert stdout.strip() == str(out / "report.md")
    assert "export int8 ExecuTorch program" in err and "golden outputs" in err and "Traceback" not in err
    report = json.loads((out / "report.json").read_text())
    assert report["token_budget"]["kept"] == 128
    assert report["accuracy"]["per_runtime"]["model.onnx@ort-cpu"]["samples"] == 40  # eval_samples applies
    for value in report["accuracy"]["per_runtime"].values():
        assert value["value"] >= 0.9
    check_bundle(run_cli, out)
