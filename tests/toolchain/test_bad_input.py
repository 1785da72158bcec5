"""Bad input: one line naming the problem, exit code 2, no traceback, no OUT left behind."""

import json

import pytest

from helpers import assert_clean_failure


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


def _fast_recipe(tmp_path):
    recipe = tmp_path / "fast.json"
    recipe.write_text(json.dumps({"eval_samples": 4, "bench_runs": 1, "calib_samples": 2, "htp_eval_samples": 1}))
    return recipe


@pytest.mark.parametrize("model, args, words", [
    ("vit-digits", ("--token-budget", "0.5", "--token-layer", "6"), ("--token-layer 6", "0..5")),
    ("minilm", ("--token-budget", "126"), ("--token-budget 126", "126 droppable")),
    ("vit-digits", ("--token-budget", "300"), ("300", "256 droppable")),
    ("minilm", ("--seq-len", "1000"), ("--seq-len 1000", "512 position")),
    ("vit-digits", ("--seq-len", "64"), ("--seq-len", "text models")),
    ("vit-digits", ("--prune-method", "magnitude"), ("--prune-method", "--prune RATIO")),
])
def test_settings_a_model_cannot_honour_fail_before_any_work(run_cli, tmp_path, model, args, words):
    import time

    out = tmp_path / "out"
    t0 = time.perf_counter()
    code, _, err = run_cli("export", model, "-o", out, *args, "-q")
    assert_clean_failure(code, err, out, *words)
    assert time.perf_counter() - t0 < 5  # refused from config.json, before weights are loaded


def test_sweep_refuses_an_output_that_is_a_file_before_exporting(run_cli, tmp_path):
    out = tmp_path / "sweep.out"
    out.write_text("keep me")
    code, _, err = run_cli("sweep", "vit-digits", "-o", out, "--prune", "0", "--token-budget", "1.0", "-q")
    assert code == 2 and "is a file" in err and "Traceback" not in err
    assert out.read_text() == "keep me"


def test_sweep_refuses_a_token_count_above_the_model_tokens(run_cli, tmp_path):
    out = tmp_path / "sweep"
    code, _, err = run_cli("sweep", "vit-digits", "-o", out, "--prune", "0", "--token-budget", "1.0,300", "-q")
    assert_clean_failure(code, err, out, "300", "256 droppable")


def test_sweep_token_count_is_a_count_not_a_full_budget():
    from edgec.toolchain.recipe import Recipe
    from edgec.toolchain.sweep import grid

    points = {budget: r.token_budget for _, budget, r in grid(Recipe(), [0.0], [1.0, 8, 0.5], "flap")}
    assert points[1.0] is None
    assert points[8].budget == 8 and isinstance(points[8].budget, int)
    assert points[0.5].budget == 0.5
