"""End to end: `edgec export ZOO --target cpu`: int8 ONNX for ORT CPU plus an int8 ExecuTorch program."""

import json

import numpy as np
import pytest

from edgec.runtimes import executorch, ort_cpu

FAST = {"eval_samples": 24, "bench_runs": 3}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, export_zoo):
    return export_zoo(tmp_path_factory.mktemp("cpu"), "cpu", ("vit-digits", "minilm"), FAST)


@pytest.mark.parametrize("name", ["vit-digits", "minilm"])
def test_bundle_has_onnx_and_pte(exported, name):
    out = exported[name]
    report = json.loads((out / "report.json").read_text())
    assert {a["path"] for a in report["artifacts"]} == {"model.onnx", "model.pte"}
    assert report["target"] == "cpu" and "npu" not in report
    for art in report["artifacts"]:
        assert (out / art["path"]).stat().st_size == art["bytes"]
    # int8 weights and tables; vit-digits keeps its float position table (8% of its parameters)
    assert report["size_ratio"]["model.onnx"] < (0.35 if name == "minilm" else 0.4)
    # int8 linears and embedding rows; the tiny ViT's program overhead weighs more
    assert report["size_ratio"]["model.pte"] < (0.35 if name == "minilm" else 0.45)


def test_minilm_accuracy_on_both_runtimes(exported):
    acc = json.loads((exported["minilm"] / "report.json").read_text())["accuracy"]["per_runtime"]
    assert acc["model.onnx@ort-cpu"]["value"] >= 0.98
    assert acc["model.pte@executorch"]["value"] >= 0.99


def test_vit_digits_top1_drop(exported):
    acc = json.loads((exported["vit-digits"] / "report.json").read_text())["accuracy"]
    for v in acc["per_runtime"].values():
        assert acc["float"] - v["value"] <= 0.01


def test_minilm_padding_free_graph_is_faster_on_short_input(exported):
    report = json.loads((exported["minilm"] / "report.json").read_text())
    lat = report["latency_ms"]
    typical = next(k for k in lat["float.onnx@ort-cpu"] if k.startswith("typical"))
    assert lat["model.onnx@ort-cpu"][typical]["median"] < lat["float.onnx@ort-cpu"][typical]["median"]
    assert "Padding-free" in report["graph"]


def test_minilm_artifacts_run_on_plain_runtimes(exported):
    """An app feeds the manifest's inputs to the shipped files: both runtimes agree."""
    out = exported["minilm"]
    manifest = json.loads((out / "manifest.json").read_text())
    onnx_entry = next(a for a in manifest["artifacts"] if a["path"] == "model.onnx")
    s = onnx_entry["inputs"][0]["shape"][1]
    ids = np.zeros((1, s), np.int64)
    mask = np.zeros((1, s), np.int64)
    ids[0, :5] = [101, 7592, 2088, 999, 102]
    mask[0, :5] = 1
    a = ort_cpu.load(out / "model.onnx").run({"input_ids": ids, "attention_mask": mask})[0]
    b = executorch.load(out / "model.pte").run([ids, mask])[0]
    assert a.shape == b.shape == tuple(onnx_entry["outputs"][0]["shape"])
    pa, pb = a[0, :5].mean(0), b[0, :5].mean(0)
    assert float(pa @ pb / np.linalg.norm(pa) / np.linalg.norm(pb)) > 0.98
    assert np.all(a[0, 5:] == 0)  # padded rows are exactly zero in the padding-free graph


def test_vit_token_budget_on_cpu_runtimes(run_cli, tmp_path):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"eval_samples": 100, "bench_runs": 2}))
    out = tmp_path / "vit"
    code, _, err = run_cli("export", "vit-digits", "--target", "cpu", "-o", out, "--token-budget", "0.5",
                           "--recipe", recipe, "-q")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["token_budget"]["kept"] == 128
    for value in report["accuracy"]["per_runtime"].values():
        assert value["value"] >= 0.9
