"""End to end: `edgec export ZOO --target cpu`: int8 ONNX for ORT CPU plus an int8 ExecuTorch program."""

import json

import numpy as np
import pytest

from edgec.runtimes import executorch, ort_cpu
from helpers import run_native

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


# ---- the C++ desktop runner (integrations/desktop) on the same bundles, next to Python's ExecuTorch

NON_ASCII = ["Ça va très bien, merci beaucoup !", "Die Größe des Maßbands überrascht.", "Привет, как дела сегодня?",
             "Η γλώσσα είναι όμορφη.", "東京は日本の首都です。", "مرحبا بالعالم", "Naïve café résumé — 100% 🙂👍🏽"]


def test_desktop_runner_embeds_like_python_executorch(exported, desktop_runner, tmp_path):
    from tokenizers import Tokenizer

    from edgec.calibration.text import builtin_sentences, encode_fixed
    from edgec.tasks.text import embedding

    out = exported["minilm"]
    texts = builtin_sentences("heldout")[:17] + NON_ASCII
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    r = run_native(desktop_runner, out, "--texts", tmp_path / "texts.txt", "--json")
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    native, stats = lines[:-1], lines[-1]["stats"]
    assert [n["text"] for n in native] == texts
    session = executorch.load(out / "model.pte")
    tok = Tokenizer.from_file(str(out / "tokenizer" / "tokenizer.json"))
    for n in native:
        feed = encode_fixed(tok, [n["text"]])
        want = embedding(session.run(feed), feed)[0]
        got = np.asarray(n["embedding"])
        assert float(want @ got / np.linalg.norm(want) / np.linalg.norm(got)) >= 0.9999, n["text"]
    assert stats["runs"] == len(texts) - 1 and stats["median_ms"] > 0 and stats["peak_rss_mb"] > 0


def test_desktop_runner_classifies_like_python_executorch(exported, desktop_runner, tmp_path):
    from edgec.calibration.digits import load_digits_split

    out = exported["vit-digits"]
    pixels = load_digits_split("test")[0][:40]
    np.save(tmp_path / "pixels.npy", pixels)
    r = run_native(desktop_runner, out, "--pixels", tmp_path / "pixels.npy", "--json")
    assert r.returncode == 0, r.stderr
    native = [json.loads(x) for x in r.stdout.splitlines()[:-1]]
    session = executorch.load(out / "model.pte")
    want = [int(session.run({"pixel_values": p[None]})[0].argmax()) for p in pixels]
    assert [n["top1"] for n in native] == want


@pytest.mark.parametrize("name", ["vit-digits", "minilm"])
def test_desktop_selftest_reproduces_the_golden_vectors(exported, desktop_runner, name):
    r = run_native(desktop_runner, exported[name], "--selftest")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "selftest passed: 3 of 3" in r.stdout
    assert "load" in r.stderr and "peak memory" in r.stderr
    if name == "minilm":
        assert r.stdout.count("tokens identical") == 3


def test_desktop_runner_refuses_a_broken_bundle_in_one_line(exported, desktop_runner, tmp_path):
    import shutil

    def bundle(name):
        dst = tmp_path / name
        shutil.copytree(exported["minilm"], dst, ignore=shutil.ignore_patterns("model.onnx"))
        return dst

    def refused(folder, *words):
        r = run_native(desktop_runner, folder, "--selftest")
        assert r.returncode == 1, r.stdout + r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgec-run: "), r.stderr
        assert all(w in lines[0] for w in words), lines[0]

    broken = bundle("broken")
    (broken / "manifest.json").write_text((broken / "manifest.json").read_text()[:-40])
    refused(broken, "manifest.json", "re-export")
    missing = bundle("missing")
    (missing / "model.pte").unlink()
    refused(missing, "lacks model.pte", "copy")
    truncated = bundle("truncated")
    data = (truncated / "model.pte").read_bytes()
    (truncated / "model.pte").write_bytes(data[: len(data) // 2])
    refused(truncated, "model.pte", "truncated")
    # cut short with the manifest edited to match: ExecuTorch itself must refuse it, not crash
    m = json.loads((truncated / "manifest.json").read_text())
    next(a for a in m["artifacts"] if a["path"] == "model.pte")["bytes"] = len(data) // 2
    (truncated / "manifest.json").write_text(json.dumps(m))
    refused(truncated, "model.pte", "not a valid ExecuTorch program")
    refused(tmp_path / "nowhere", "no manifest.json")
    no_tokenizer = bundle("no-tokenizer")
    shutil.rmtree(no_tokenizer / "tokenizer")
    refused(no_tokenizer, "tokenizer/tokenizer.json")
