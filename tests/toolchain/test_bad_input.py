"""Bad input: one line naming the problem, exit code 2, no traceback, no OUT left behind."""

import json

import pytest


def assert_clean_failure(code, err, out_dir, *words):
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgec: error: ")
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    assert not out_dir.exists()
    assert not [p for p in out_dir.parent.iterdir() if ".partial-" in p.name]


def test_missing_model_path(run_cli, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("export", tmp_path / "nope", "--target", "npu", "-o", out, "-q")
    assert_clean_failure(code, err, out, "nope")


def test_unknown_target(run_cli, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("export", "vit-digits", "--target", "tpu", "-o", out, "-q")
    assert_clean_failure(code, err, out, "tpu", "cpu", "npu")


def test_corrupt_safetensors(run_cli, tmp_path, vit_copy):
    weights = vit_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    out = tmp_path / "out"
    code, _, err = run_cli("export", vit_copy, "--target", "npu", "-o", out, "-q")
    assert_clean_failure(code, err, out, "model.safetensors")


def test_garbage_config(run_cli, tmp_path, vit_copy):
    (vit_copy / "config.json").write_text("{not json")
    out = tmp_path / "out"
    code, _, err = run_cli("export", vit_copy, "--target", "npu", "-o", out, "-q")
    assert_clean_failure(code, err, out, "config.json")


def test_unsupported_architecture(run_cli, tmp_path):
    from transformers import GPT2Config, GPT2Model

    model_dir = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100)).save_pretrained(model_dir)
    out = tmp_path / "out"
    code, _, err = run_cli("export", model_dir, "--target", "npu", "-o", out, "-q")
    assert_clean_failure(code, err, out, "gpt2", "bert")


def test_empty_calibration_file(run_cli, tmp_path):
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n")
    out = tmp_path / "out"
    code, _, err = run_cli("export", "minilm", "--target", "npu", "-o", out, "--calib", calib, "-q")
    assert_clean_failure(code, err, out, "calib.txt")


def test_calibration_folder_for_text_model(run_cli, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_cli("export", "minilm", "--target", "npu", "-o", out, "--calib", tmp_path, "-q")
    assert_clean_failure(code, err, out, "folder")


@pytest.mark.parametrize("content, word", [("{\"seq_len\": 0}", "seq_len"), ("{\"bogus\": 1}", "bogus")])
def test_bad_recipe(run_cli, tmp_path, content, word):
    recipe = tmp_path / "r.json"
    recipe.write_text(content)
    out = tmp_path / "out"
    code, _, err = run_cli("export", "vit-digits", "-o", out, "--recipe", recipe, "-q")
    assert_clean_failure(code, err, out, word)


def test_failed_export_keeps_previous_out(run_cli, tmp_path, vit_copy):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text(json.dumps({"old": True}))
    (vit_copy / "model.safetensors").write_bytes(b"\0" * 64)
    code, _, err = run_cli("export", vit_copy, "--target", "npu", "-o", out, "-q")
    assert code == 2 and "Traceback" not in err
    assert json.loads((out / "report.json").read_text()) == {"old": True}
