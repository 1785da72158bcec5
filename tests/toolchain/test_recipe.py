"""Recipe: defaults, JSON/YAML files, validation errors the user can act on."""

import json

import pytest

from edgec.calibration.plan import PrecisionPlan
from edgec.errors import InputError
from edgec.toolchain.recipe import Recipe, load_recipe


def test_defaults():
    r = Recipe()
    assert (r.seq_len, r.calib_samples, r.eval_samples, r.htp_eval_samples, r.bench_runs, r.plan) == \
        (None, 32, None, None, 20, None)  # None: 128 tokens, every held-out sample, the task's default
    assert load_recipe(None) == r


def test_json_file_loads(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"seq_len": 64, "calib_samples": 8, "plan": {"activations": "uint8"}}))
    r = load_recipe(path)
    assert (r.seq_len, r.calib_samples, r.eval_samples) == (64, 8, None)
    assert r.plan == PrecisionPlan(activations="uint8")


@pytest.mark.parametrize("suffix", [".yaml", ".yml"])
def test_yaml_file_loads(tmp_path, suffix):
    path = tmp_path / f"r{suffix}"
    path.write_text("seq_len: 32\nhtp_eval_samples: 4\nplan:\n  observer: percentile\n")
    r = load_recipe(path)
    assert (r.seq_len, r.htp_eval_samples) == (32, 4)
    assert r.plan == PrecisionPlan(observer="percentile")


def test_empty_yaml_is_the_defaults(tmp_path):
    (tmp_path / "r.yaml").write_text("")
    assert load_recipe(tmp_path / "r.yaml") == Recipe()


def test_recipe_round_trips_through_its_dict(tmp_path):
    r = Recipe(seq_len=48, bench_runs=3, plan=PrecisionPlan(activations="uint8"))
    (tmp_path / "r.json").write_text(json.dumps(r.to_dict()))
    assert load_recipe(tmp_path / "r.json") == r == Recipe.from_dict(r.to_dict())


def test_soc_loads_lower_case_and_round_trips(tmp_path):
    (tmp_path / "r.yaml").write_text("soc: SM8650")
    r = load_recipe(tmp_path / "r.yaml")
    assert r.soc == ("sm8650",) and Recipe.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_unknown_key_names_the_key(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps({"seq_len": 64, "seqlen": 32}))
    with pytest.raises(InputError, match=r"unknown recipe keys \['seqlen'\]"):
        load_recipe(tmp_path / "r.json")


@pytest.mark.parametrize("text, match", [
    ("seq_len: 0", "seq_len must be >= 1, got 0"),
    ("calib_samples: -3", "calib_samples must be >= 1"),
    ("plan: {activations: int4}", "activations must be one of"),
    ("plan: {bits: 4}", "bits"),
    ("- 1\n- 2", "top level must be a mapping"),
    ("soc: [sm8650, sm9999]", "unknown SoC 'sm9999': choose from sm8350"),
])
def test_invalid_values_are_input_errors(tmp_path, text, match):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        load_recipe(path)
    assert str(path) in str(err.value)


def test_unparseable_files_are_input_errors(tmp_path):
    (tmp_path / "r.json").write_text("{not json")
    (tmp_path / "r.yaml").write_text("seq_len: [1,\n")
    with pytest.raises(InputError, match="invalid"):
        load_recipe(tmp_path / "r.json")
    with pytest.raises(InputError, match="cannot be parsed"):
        load_recipe(tmp_path / "r.yaml")


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_recipe(tmp_path / "absent.yaml")


def test_seq_len_zero_in_code_is_a_value_error():
    with pytest.raises(ValueError, match="seq_len"):
        Recipe(seq_len=0)


def test_with_overrides_ignores_none():
    r = Recipe(seq_len=64, calib_samples=8)
    o = r.with_overrides(seq_len=None, calib_samples=16, plan=None)
    assert (o.seq_len, o.calib_samples, o.plan) == (64, 16, None)
    assert r.calib_samples == 8  # a new recipe, the old one untouched
    assert r.with_overrides() == r
    with pytest.raises(ValueError, match="bench_runs"):
        r.with_overrides(bench_runs=0)
