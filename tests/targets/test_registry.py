"""A new target plugs in with a subclass and one registration; the pipeline is not edited."""

import json
import re
import shutil
from pathlib import Path

import pytest

from edgec.exporters.artifact import Artifact
from edgec.targets import TARGETS, Built, Target, register
from edgec.toolchain.pipeline import export
from edgec.toolchain.recipe import Recipe


class FloatOnCpu(Target):
    name = "toy-float"
    description = "the float ONNX as it is, verified on ONNX Runtime CPU"

    def build(self, job, module, out_dir, float_onnx):
        path = Path(out_dir) / "model.onnx"
        shutil.copy(float_onnx.path, path)
        return Built([Artifact(path, "onnx", "ort-cpu")], {"graph": "the float graph, unchanged"})


@pytest.fixture
def toy_target():
    target = register(FloatOnCpu())
    yield target
    TARGETS.pop(target.name)


def test_toy_target_exports_measures_and_ships_a_valid_bundle(toy_target, tmp_path, monkeypatch, capsys):
    import sys

    from edgec.toolchain import cli

    out = tmp_path / "toy"
    report = export("vit-digits", "toy-float", out, recipe=Recipe(eval_samples=16, bench_runs=2))
    acc = report["accuracy"]
    assert acc["headline"] == "model.onnx@ort-cpu"
    assert acc["quantized"] == acc["float"]  # the same graph: the same top-1
    assert report["size_ratio"]["model.onnx"] == 1.0
    assert set(report["latency_ms"]) == {"float.onnx@ort-cpu", "model.onnx@ort-cpu"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == "toy-float" and manifest["artifacts"][0]["verified_on"] == ["ort-cpu"]
    monkeypatch.setattr(sys, "argv", ["edgec", "run", str(out), "--check"])
    cli.main()
    assert "3 golden outputs reproduced" in capsys.readouterr().out


def test_pipeline_names_no_target_runtime_or_model_kind():
    import edgec.toolchain.pipeline as pipeline

    source = Path(pipeline.__file__).read_text()
    assert not re.search(r"kind ==|\"(npu|cpu|text|image|qnn-htp|executorch)\"", source)
