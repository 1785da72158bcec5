"""End to end: `edgec export ZOO --target npu` on both zoo models, through the CLI."""

import json

import onnx
import pytest

from edgec.exporters.integer_check import check_integer_only

FAST = {"eval_samples": 100, "bench_runs": 3, "calib_samples": 8, "htp_eval_samples": 2}
SOC = "sm8650"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, export_zoo):
    # vit-digits also ships a QNN context (a fraction of a second per run on the simulator); MiniLM's
    # context is measured by bench/qnn_context.py
    return {**export_zoo(tmp_path_factory.mktemp("npu"), "npu", ("vit-digits",), {**FAST, "soc": [SOC]}),
            **export_zoo(tmp_path_factory.mktemp("npu"), "npu", ("minilm",), FAST)}


@pytest.mark.parametrize("name", ["vit-digits", "minilm"])
def test_bundle_files(exported, name):
    out = exported[name]
    names = {p.name for p in out.iterdir()}
    assert {"model.onnx", "manifest.json", "report.json", "report.md"} <= names
    assert "model.pte" not in names
    assert not list(out.parent.glob(".*partial*"))


@pytest.mark.parametrize("name", ["vit-digits", "minilm"])
def test_runs_whole_on_htp_and_integer_only(exported, name):
    report = json.loads((exported[name] / "report.json").read_text())
    npu = report["npu"]
    assert npu["backend"] == "qnn-htp"
    assert npu["runs_fully"] is True and npu["coverage"] == 1.0 and npu["unsupported_ops"] == []
    assert npu["integer_only"] is True
    # the checker agrees when run independently on the shipped file
    assert check_integer_only(onnx.load(exported[name] / "model.onnx")).integer_only
    assert len(npu["int16_tensors"]) > 0 and report["precision"]["int16_why"]


def test_minilm_accuracy_and_size(exported):
    report = json.loads((exported["minilm"] / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["metric"].startswith("pooled")
    assert acc["per_runtime"]["model.onnx@ort-cpu"]["samples"] == FAST["eval_samples"]
    assert acc["quantized"] >= 0.99
    assert acc["per_runtime"]["model.onnx@qnn-htp"]["value"] >= 0.99
    assert report["size_ratio"]["model.onnx"] <= 0.30
    # the float graph holds MiniLM's encoder (22.7M parameters with the unused pooler) in float32
    assert 22e6 * 4 < report["float_bytes"] < 23e6 * 4


def test_vit_digits_top1_drop(exported):
    acc = json.loads((exported["vit-digits"] / "report.json").read_text())["accuracy"]
    assert acc["metric"] == "top-1 accuracy"
    assert acc["float"] >= 0.95
    cpu = acc["per_runtime"]["model.onnx@ort-cpu"]
    assert cpu["samples"] == FAST["eval_samples"] and cpu["float"] - cpu["value"] <= 0.02
    htp = acc["per_runtime"]["model.onnx@qnn-htp"]
    assert htp["value"] == acc["quantized"] and htp["samples"] == FAST["htp_eval_samples"]


@pytest.mark.parametrize("name", ["vit-digits", "minilm"])
def test_latency_is_measured_for_float_and_artifact(exported, name):
    lat = json.loads((exported[name] / "report.json").read_text())["latency_ms"]
    for key in ("float.onnx@ort-cpu", "model.onnx@ort-cpu"):
        for per_input in lat[key].values():
            for mode in ("hot", "cold"):
                timing = per_input[mode]
                assert timing["runs"] == FAST["bench_runs"] and 0 < timing["median"] <= timing["p90"]
    assert not [k for k in lat if "qnn-htp" in k]  # the simulator's time is no device latency


def test_simulator_time_is_its_own_line_and_the_headline_is_the_htp(exported):
    report = json.loads((exported["minilm"] / "report.json").read_text())
    assert list(report["simulator_wall_ms"]) == ["model.onnx@qnn-htp"]
    acc = report["accuracy"]
    assert acc["headline"] == "model.onnx@qnn-htp"
    assert acc["quantized"] == acc["per_runtime"]["model.onnx@qnn-htp"]["value"]
    assert acc["per_runtime"]["model.onnx@qnn-htp"]["samples"] == FAST["htp_eval_samples"]
    md = (exported["minilm"] / "report.md").read_text()
    sim_lines = [line for line in md.splitlines() if "qnn-htp" in line and " ms " in line]
    assert sim_lines and all("not device speed" in line and "x)" not in line for line in sim_lines)
    assert report["runtimes"]["ort-cpu"]["threads"] == 2
    assert report["machine"]["cpu"] and "avx2" in report["machine"]["isa"]


def test_htp_evaluates_32_sentences_by_default():
    from edgec.tasks import TASKS
    from edgec.toolchain.recipe import Recipe

    assert Recipe().htp_eval_samples is None
    assert TASKS["text"].simulator_eval_samples >= 32 and TASKS["image"].simulator_eval_samples >= 100


def test_minilm_manifest(exported):
    out = exported["minilm"]
    manifest = json.loads((out / "manifest.json").read_text())
    art = manifest["artifacts"][0]
    assert [i["name"] for i in art["inputs"]] == ["input_ids", "attention_mask"]
    assert all(i["shape"] == [1, 128] and i["dtype"].startswith("int") for i in art["inputs"])
    assert art["outputs"][0]["name"] == "last_hidden_state" and art["outputs"][0]["shape"] == [1, 128, 384]
    assert art["outputs"][0]["quantization"]["dtype"] == "uint16"
    assert manifest["pooling"] == {"method": "mean", "output": "last_hidden_state", "mask": "attention_mask"}


@pytest.mark.parametrize("name", ["vit-digits", "minilm"])
def test_edgec_run_reproduces_golden_outputs_on_the_htp_and_cpu(exported, run_cli, name):
    from helpers import check_bundle, replay_golden_with_plain_engines

    manifest = check_bundle(run_cli, exported[name])
    assert manifest["artifacts"][0]["verified_on"] == ["qnn-htp", "ort-cpu"]
    assert replay_golden_with_plain_engines(exported[name]) == 3  # the QDQ file on plain ONNX Runtime


def test_qnn_context_is_listed_and_reproduces_the_qdq_graph_as_an_app_loads_it(exported):
    """An app's view: the manifest names the context, its SoC and binary; ONNX Runtime with the QNN EP
    registered (no edgec code) loads it and gives the QDQ graph's outputs for that SoC within 1e-3."""
    import numpy as np
    import onnxruntime as ort
    import onnxruntime_qnn

    out = exported["vit-digits"]
    arts = {a["path"]: a for a in json.loads((out / "manifest.json").read_text())["artifacts"]}
    qdq, ctx = arts["model.onnx"], arts[f"model.qnn-{SOC}.onnx"]
    assert ctx["format"] == "onnx-qnn-context" and ctx["verified_on"] == ["qnn-htp"]
    assert ctx["qnn"]["soc"] == SOC.upper() and ctx["qnn"]["htp_arch"] == "v75" and ctx["qnn"]["qnn_sdk"]
    assert ctx["qnn"]["compiled_from"] == "model.onnx"
    assert ctx["inputs"] == qdq["inputs"] and ctx["outputs"] == qdq["outputs"]
    (binary,) = ctx["external_data"]
    assert binary["path"] == f"model.qnn-{SOC}.bin" and (out / binary["path"]).stat().st_size == binary["bytes"]
    assert ctx["bytes"] == (out / ctx["path"]).stat().st_size + binary["bytes"]

    try:
        ort.register_execution_provider_library(onnxruntime_qnn.EP_NAME, onnxruntime_qnn.get_library_path())
    except Exception as e:  # this process registered it when it exported
        assert "already registered" in str(e)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == onnxruntime_qnn.EP_NAME]

    def session(path, **provider):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        options.add_provider_for_devices(devices, {"backend_path": onnxruntime_qnn.get_qnn_htp_path(), **provider})
        return ort.InferenceSession(str(path), options)

    golden = np.load(out / ctx["golden"]["path"])
    feeds = [{t["name"]: golden[f"input/{t['name']}"][i:i + 1] for t in ctx["inputs"]}
             for i in range(ctx["golden"]["samples"])]
    compiled = session(out / "model.onnx", soc_model=str(ctx["qnn"]["soc_model"]))  # compiles for that SoC
    want = [compiled.run(None, f) for f in feeds]
    app = session(out / ctx["path"])  # created last: the simulator runs one HTP generation at a time
    for i, (feed, expected) in enumerate(zip(feeds, want)):
        (got,) = app.run(None, feed)
        np.testing.assert_allclose(got, expected[0], atol=1e-3, rtol=0)
        np.testing.assert_array_equal(got, golden[f"output/qnn-htp/{ctx['outputs'][0]['name']}"][i:i + 1])

    row = json.loads((out / "report.json").read_text())["npu"]["contexts"][0]
    assert row["soc"] == "SM8650" and row["bytes"] == ctx["bytes"] and row["max_abs_diff_to_qdq"] <= 1e-3
    assert 0 < row["load_seconds"] < row["compile_seconds"]
    assert f"`model.qnn-{SOC}.onnx` + `model.qnn-{SOC}.bin` | SM8650 (Snapdragon 8 Gen 3) | v75" in (
        out / "report.md").read_text()


@pytest.mark.parametrize("model, args, words", [
    ("vit-digits", ("--soc", "sm9999"), ("unknown SoC 'sm9999'", "sm8650", "sm8750")),
    ("vit-digits", ("--soc", "sm8650", "--target", "cpu"), ("'soc' is a setting of the npu target",)),
    ("tinylm", ("--soc", "sm8650"), ("--soc", "language models")),
])
def test_bad_soc_is_one_line_before_any_work(run_cli, tmp_path, model, args, words):
    from helpers import assert_clean_failure

    code, _, err = run_cli("export", model, "-o", tmp_path / "out", *args, "-q")
    assert_clean_failure(code, err, tmp_path / "out", *words)


def test_edgec_run_refuses_broken_bundles(exported, run_cli, tmp_path):
    import shutil

    def broken(change) -> tuple[int, str]:
        copy = tmp_path / f"b{len(list(tmp_path.iterdir()))}"
        shutil.copytree(exported["vit-digits"], copy)
        change(copy)
        code, _, err = run_cli("run", copy, "--check")
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("edgec: error: ") and "Traceback" not in err
        return lines[0]

    def truncate(b):
        data = (b / "model.onnx").read_bytes()
        (b / "model.onnx").write_bytes(data[:len(data) // 2])

    def drop_field(b):
        m = json.loads((b / "manifest.json").read_text())
        del m["artifacts"][0]["inputs"]
        (b / "manifest.json").write_text(json.dumps(m))

    assert "model.onnx" in broken(truncate) and "truncated" in broken(truncate)
    assert "manifest.json" in broken(lambda b: (b / "manifest.json").write_text("{oops"))
    assert "inputs" in broken(drop_field)
    assert "golden" in broken(lambda b: shutil.rmtree(b / "golden"))
    assert "no edgec bundle" in broken(lambda b: (b / "manifest.json").unlink())


def test_report_md_renders_the_figures(exported):
    text = (exported["minilm"] / "report.md").read_text()
    report = json.loads((exported["minilm"] / "report.json").read_text())
    assert f"{report['accuracy']['quantized']:.4f}" in text
    assert "HTP op coverage: 100.0%" in text and "integer-only graph: yes" in text


def test_smoothing_recipe_is_applied_and_reported(run_cli, tmp_path):
    recipe = tmp_path / "smooth.yaml"
    recipe.write_text("eval_samples: 40\nbench_runs: 2\ncalib_samples: 8\nhtp_eval_samples: 1\n"
                      "smooth: {alpha: 0.5}\n")
    out = tmp_path / "vit"
    code, _, err = run_cli("export", "vit-digits", "-o", out, "--recipe", recipe, "-q")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["recipe"]["smooth"]["alpha"] == 0.5
    from edgec.toolchain.zoo import ZOO

    layers = json.loads((ZOO["vit-digits"].locate() / "config.json").read_text())["num_hidden_layers"]
    assert len(report["smoothing"]["smoothed"]) == layers * 3  # ln1, ln2 and V->O in each pre-LN block
    assert report["npu"]["runs_fully"] and report["npu"]["integer_only"]
    assert report["accuracy"]["float"] - report["accuracy"]["quantized"] <= 0.05


@pytest.mark.parametrize("args, named", [(("--token-budget", "lots"), "token-budget"),
                                         (("--token-layer", "0"), "needs --token-budget"),
                                         (("--token-budget", "0.5", "--token-layer", "-1"), "layer")])
def test_bad_token_budget_is_a_clean_error(run_cli, tmp_path, args, named):
    code, _, err = run_cli("export", "vit-digits", "-o", tmp_path / "o", *args, "-q")
    assert code == 2 and named in err and "Traceback" not in err


def test_image_folder_calibration(run_cli, tmp_path):
    """A user's folder of images calibrates vit-digits (held-out data stays the test split)."""
    from PIL import Image

    from edgec.calibration.digits import load_digits_split

    images, _ = load_digits_split("calib")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, x in enumerate(images[:6]):
        pixels = ((x[0] * 0.5 + 0.5) * 255).clip(0, 255).astype("uint8")
        Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    out = tmp_path / "vit"
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps({"eval_samples": 100, "bench_runs": 2, "htp_eval_samples": 1}))
    code, _, err = run_cli("export", "vit-digits", "-o", out, "--calib", folder, "--recipe", recipe, "-q")
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["source"].startswith("6 images from")
    assert report["npu"]["runs_fully"]
    assert report["accuracy"]["quantized"] >= 0.9
