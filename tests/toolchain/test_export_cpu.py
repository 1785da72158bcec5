"""End to end: `edgec export ZOO --target cpu`: int8 ONNX for ORT CPU plus an int8 ExecuTorch program."""

import json

import numpy as np
import pytest

from edgec.runtimes import executorch, ort_cpu

FAST = {"eval_samples": 100, "bench_runs": 3}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, export_zoo):
    return export_zoo(tmp_path_factory.mktemp("cpu"), "cpu", ("vit-digits", "minilm"), FAST)


@pytest.mark.parametrize("name", ["vit-digits", "minilm"])
def test_bundle_has_onnx_and_pte(exported, name):
    out = exported[name]
    report = json.loads((out / "report.json").read_text())
    assert {a["path"] for a in report["artifacts"]} == {"model.onnx", "model.pte"}
    assert report["target"] == "cpu" and "npu" not in report
    for art in report["artifacts"]:  # the size ratio is the file's own size over the float graph's
        assert report["size_ratio"][art["path"]] == round(art["bytes"] / report["float_bytes"], 4)
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
        assert v["samples"] == FAST["eval_samples"]
        assert v["float"] - v["value"] <= 0.02


def test_minilm_padding_free_graph_is_faster_on_short_input(exported):
    report = json.loads((exported["minilm"] / "report.json").read_text())
    lat = report["latency_ms"]
    typical = next(k for k in lat["float.onnx@ort-cpu"] if k.startswith("typical"))
    for mode in ("hot", "cold"):
        assert lat["model.onnx@ort-cpu"][typical][mode]["median"] < lat["float.onnx@ort-cpu"][typical][mode]["median"]
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
    b = executorch.load(out / "model.pte").run({"input_ids": ids, "attention_mask": mask})[0]
    assert a.shape == b.shape == tuple(onnx_entry["outputs"][0]["shape"])
    pa, pb = a[0, :5].mean(0), b[0, :5].mean(0)
    assert float(pa @ pb / np.linalg.norm(pa) / np.linalg.norm(pb)) > 0.98
    assert np.all(a[0, 5:] == 0)  # padded rows are exactly zero in the padding-free graph


@pytest.mark.parametrize("name", ["vit-digits", "minilm"])
def test_edgec_run_reproduces_golden_outputs(exported, run_cli, name):
    from helpers import check_bundle, replay_golden_with_plain_engines

    manifest = check_bundle(run_cli, exported[name])
    assert replay_golden_with_plain_engines(exported[name]) == 6  # 3 inputs x (model.onnx, model.pte)
    pte = next(a for a in manifest["artifacts"] if a["path"] == "model.pte")
    onnx_entry = next(a for a in manifest["artifacts"] if a["path"] == "model.onnx")
    assert pte["outputs"] == [{**o, "quantization": None} for o in onnx_entry["outputs"]]


def test_shipped_tokenizer_pads_and_truncates_to_the_export_length(exported):
    from tokenizers import Tokenizer

    out = exported["minilm"]
    manifest = json.loads((out / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(out / manifest["tokenizer"]["path"]))
    s = manifest["artifacts"][0]["inputs"][0]["shape"][1]
    short, long = tok.encode("Hello world"), tok.encode("word " * 1000)
    assert len(short.ids) == len(long.ids) == s == manifest["tokenizer"]["max_length"]
    assert short.attention_mask[:4] == [1, 1, 1, 1] and short.attention_mask[-1] == 0
    assert short.ids[-1] == manifest["tokenizer"]["pad_token_id"] and long.ids[-1] == 102  # [SEP] kept


def test_edgec_run_prints_an_embedding(exported, run_cli):
    code, stdout, err = run_cli("run", exported["minilm"], "--text", "Ein schöner Tag am Meer.", "-r", "executorch")
    assert code == 0, err
    assert "model.pte on executorch" in stdout and "384 dims" in stdout


def test_cpu_target_refuses_npu_only_recipe_settings(run_cli, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("smooth: {alpha: 0.5}\n")
    code, _, err = run_cli("export", "vit-digits", "--target", "cpu", "-o", tmp_path / "o", "--recipe", recipe, "-q")
    assert code == 2 and "'smooth'" in err and "--target npu" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
