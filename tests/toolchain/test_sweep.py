"""`edgec sweep` on a tiny grid: every point exported, table, plots and the Pareto front."""

import json

from edgec.toolchain.sweep import pareto


def test_pareto_front():
    pts = [{"accuracy": 0.9, "latency_ms": 10}, {"accuracy": 0.8, "latency_ms": 5},
           {"accuracy": 0.7, "latency_ms": 6}, {"accuracy": 0.9, "latency_ms": 12}]
    assert pareto(pts, "latency_ms") == pts[:2]


def test_sweep_tiny_grid(run_cli, tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"eval_samples": 40, "bench_runs": 3, "calib_samples": 8, "htp_eval_samples": 1,
                                  "prune_calib_samples": 32}))
    out = tmp_path / "sweep"
    code, stdout, err = run_cli("sweep", "vit-digits", "--target", "npu", "-o", out, "--prune", "0,0.2",
                                "--token-budget", "0.5", "--token-layer", "0", "--recipe", recipe, "-q")
    assert code == 0, err
    data = json.loads((out / "sweep.json").read_text())
    grid = {(p["prune"], p["token_budget"]) for p in data["points"]}
    assert grid == {(0.0, 0.5), (0.2, 0.5)}
    sizes = {(p["prune"], p["token_budget"]): p["bytes"] for p in data["points"]}
    assert sizes[(0.2, 0.5)] < sizes[(0.0, 0.5)]
    assert all(p["htp_coverage"] == 1.0 for p in data["points"])
    for png in ("accuracy_vs_latency.png", "accuracy_vs_bytes.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "accuracy_vs_latency.png" in md
    marked = {(float(cells[1]), float(cells[2])) for cells in
              (line.split("|") for line in md.splitlines() if line.startswith("| ") and line.rstrip().endswith("* |"))}
    assert marked == {(p["prune"], p["token_budget"]) for p in pareto(data["points"], "latency_ms")}
    assert all(p["artifact"] == "model.onnx@ort-cpu" for p in data["points"])  # not the simulator
    assert "`model.onnx@ort-cpu` (the runtime after the @)" in md
    for name in ("prune0-budget0.5", "prune0.2-budget0.5"):
        assert (out / "points" / name / "model.onnx").is_file()
    dropped = json.loads((out / "points" / "prune0.2-budget0.5" / "report.json").read_text())
    assert dropped["token_budget"]["layer"] == 0 and dropped["token_budget"]["kept"] == 128
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # published whole
