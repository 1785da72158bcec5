"""`edgec export --target gpu`: IREE modules verified on the software Vulkan device (Mesa's lavapipe)."""

import json
import shutil
import sys

import numpy as np
import pytest

from helpers import vulkan_skip_reason


pytestmark = pytest.mark.skipif(vulkan_skip_reason() is not None, reason=vulkan_skip_reason() or "")
FAST = {"eval_samples": 20, "htp_eval_samples": 3, "bench_runs": 1, "compare_quantized_only": False}


@pytest.fixture(scope="module")
def vit_bundle(tmp_path_factory, export_zoo):
    return export_zoo(tmp_path_factory.mktemp("gpu"), "gpu", ("vit-digits",),
                      {**FAST, "gpu_arch": ["valhall"]})["vit-digits"]


def test_vit_digits_modules_and_their_status(vit_bundle):
    report = json.loads((vit_bundle / "report.json").read_text())
    manifest = json.loads((vit_bundle / "manifest.json").read_text())
    arts = {a["path"]: a for a in manifest["artifacts"]}
    assert set(arts) == {"model.onnx", "model.vulkan-llvmpipe.vmfb", "model.vulkan-valhall.vmfb"}
    soft, phone = arts["model.vulkan-llvmpipe.vmfb"], arts["model.vulkan-valhall.vmfb"]
    assert soft["verified_on"] == ["iree-vulkan"] and soft["gpu"]["arch"] == "llvmpipe"
    assert phone["verified_on"] == [] and "compiled, not run" in phone["not_run"] and "golden" not in phone
    assert soft["gpu"]["export"] == phone["gpu"]["export"] and soft["gpu"]["iree_runtime"]
    assert soft["inputs"] == arts["model.onnx"]["inputs"]  # the app feeds what the ONNX takes
    acc = report["accuracy"]["per_runtime"]["model.vulkan-llvmpipe.vmfb@iree-vulkan"]
    assert acc["value"] == acc["float"] and acc["max_abs_diff"] <= 1e-4
    md = (vit_bundle / "report.md").read_text()
    assert "software Vulkan device (lavapipe)" in md and "correctness only, not device speed" in md
    assert "model.vulkan-llvmpipe.vmfb@iree-vulkan" not in report["latency_ms"]  # never set beside CPU times


def test_gpu_bundle_golden_outputs_reproduce(vit_bundle, run_cli):
    from helpers import check_bundle

    check_bundle(run_cli, vit_bundle)


def test_software_module_runs_on_plain_iree(vit_bundle):
    """What an app does, with no edgec code: IREE's runtime on the Vulkan device, the manifest's entry
    function and input dtypes, the golden inputs in, the golden outputs back (through a staging buffer)."""
    import iree.runtime as rt

    manifest = json.loads((vit_bundle / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["path"] == "model.vulkan-llvmpipe.vmfb")
    golden = np.load(vit_bundle / art["golden"]["path"])
    config = rt.Config("vulkan")
    context = rt.SystemContext(vm_modules=[rt.VmModule.mmap(config.vm_instance, str(vit_bundle / art["path"]))],
                               config=config)
    fn = context.modules.module[art["gpu"]["entry"]]
    device = config.device
    inputs = [golden[f"input/{t['name']}"][:1].astype(t["dtype"]) for t in art["inputs"]]
    view = fn(*inputs)._buffer_view
    staging = device.allocator.allocate_buffer(
        memory_type=int(rt.MemoryType.HOST_LOCAL | rt.MemoryType.DEVICE_VISIBLE),
        allowed_usage=int(rt.BufferUsage.TRANSFER_TARGET | rt.BufferUsage.MAPPING_SCOPED),
        allocation_size=view.get_buffer().byte_length())
    sem = device.create_semaphore(0)
    device.queue_copy(view.get_buffer(), staging, wait_semaphores=rt.HalFence.create_at(sem, 0),
                      signal_semaphores=rt.HalFence.create_at(sem, 1))
    rt.HalFence.create_at(sem, 1).wait()
    got = np.array(staging.map().asarray(view.shape, np.dtype(art["outputs"][0]["dtype"])))
    expected = golden[f"output/iree-vulkan/{art['outputs'][0]['name']}"][:1]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_bench_sets_no_software_device_time_beside_the_cpu(vit_bundle, run_cli):
    code, stdout, err = run_cli("bench", vit_bundle, "--runs", "2")
    assert code == 0, err
    rows = {line.split()[0]: line for line in stdout.splitlines()[1:] if "@" in line.split()[0]}
    assert set(rows) == {"model.vulkan-llvmpipe.vmfb@iree-vulkan", "model.onnx@ort-cpu"}
    assert rows["model.vulkan-llvmpipe.vmfb@iree-vulkan"].endswith("correctness only, not device speed")
    assert "faster" not in stdout


def test_module_for_another_gpu_is_refused_in_one_line(vit_bundle):
    from edgec import runtimes
    from edgec.errors import BackendError

    with pytest.raises(BackendError, match="compiled for vulkan valhall GPUs and this machine has llvmpipe"):
        runtimes.load("iree-vulkan", vit_bundle / "model.vulkan-valhall.vmfb")
    with pytest.raises(BackendError, match="not a valid IREE module"):
        bad = vit_bundle.parent / "truncated.vmfb"
        bad.write_bytes((vit_bundle / "model.vulkan-llvmpipe.vmfb").read_bytes()[:4096])
        runtimes.load("iree-vulkan", bad)


def test_module_from_another_export_is_refused(vit_bundle, tmp_path, run_cli):
    """A module swapped in from another export, its manifest entry edited to match its bytes."""
    import onnx

    from edgec.exporters import iree
    from edgec.exporters.artifact import sha256

    bundle = tmp_path / "b"
    shutil.copytree(vit_bundle, bundle)
    other = tmp_path / "other.onnx"
    model = onnx.load(bundle / "model.onnx")
    model.graph.initializer[0].raw_data = bytes(len(model.graph.initializer[0].raw_data))  # another export
    onnx.save(model, other)
    iree.import_onnx(other).write(tmp_path / "m.mlirbc", {"edgec.api": "vulkan", "edgec.arch": "llvmpipe",
                                                           "edgec.export": sha256(other)[:16]})
    target = bundle / "model.vulkan-llvmpipe.vmfb"
    iree.compile_module(tmp_path / "m.mlirbc", target, "vulkan", "llvmpipe", "fp32")
    manifest = json.loads((bundle / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["path"] == target.name)
    entry.update(bytes=target.stat().st_size, sha256=sha256(target))
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli("run", bundle, "--runtime", "iree-vulkan", "--check")
    assert code != 0 and "comes from another export" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_without_iree_the_gpu_target_says_how_to_install(run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "iree.compiler", None)  # import fails as when not installed
    code, _, err = run_cli("export", "vit-digits", "--target", "gpu", "-o", tmp_path / "o", "-q")
    assert code == 2 and "pip install 'edgec[gpu]'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_unknown_architecture_is_one_line(run_cli, tmp_path):
    code, _, err = run_cli("export", "vit-digits", "--target", "gpu", "--gpu-arch", "nosuchgpu", "-o",
                           tmp_path / "o", "-q")
    assert code != 0 and "does not know the vulkan architecture 'nosuchgpu'" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
