"""Small builders shared by tests: realistic LayerNorms, right-padded text feeds, seeded decoder directories."""

import subprocess
from pathlib import Path

import numpy as np
import torch


def run_native(runner: Path, *args) -> subprocess.CompletedProcess:
    """The desktop runner (`make desktop`) as an app's user runs it: a process of its own."""
    return subprocess.run([str(runner), *map(str, args)], capture_output=True, text=True, timeout=300)


def randomise_norms(model: torch.nn.Module) -> None:
    """Constructors leave LayerNorms at identity; real checkpoints do not."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)


def padded_feeds(lengths, seq: int, seed: int = 0, vocab: int = 100) -> list[dict[str, np.ndarray]]:
    """Right-padded int64 [1, seq] inputs with the given numbers of real tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        mask = (np.arange(seq) < n).astype(np.int64)[None]
        out.append({"input_ids": rng.integers(1, vocab, (1, seq)).astype(np.int64) * mask, "attention_mask": mask})
    return out


def check_bundle(run_cli, out) -> dict:
    """The bundle follows the manifest schema, and `edgec run --check` reproduces its golden outputs
    on every artifact and runtime it was verified on (through the manifest alone)."""
    import json

    import jsonschema

    from edgec.toolchain.manifest import schema

    manifest = json.loads((out / "manifest.json").read_text())
    jsonschema.validate(manifest, schema())
    for art in manifest["artifacts"]:
        if "not_run" in art:  # shipped unverified: no golden outputs to check
            assert not art["verified_on"] and "golden" not in art
            continue
        assert art["golden"]["runtimes"] == art["verified_on"]
        for rt in art["verified_on"]:
            # --runtime picks the first artifact verified there: check each such pair
            if next(a for a in manifest["artifacts"] if rt in a["verified_on"]) is not art:
                continue
            code, stdout, err = run_cli("run", out, "--runtime", rt, "--check")
            assert code == 0, err
            assert f"{art['path']} on {rt}: {art['golden']['samples']} golden outputs reproduced" in stdout
    return manifest


def replay_golden_with_plain_engines(out) -> int:
    """What an app does, with no edgec code: read manifest.json, feed each artifact's golden inputs to
    ONNX Runtime or ExecuTorch directly, and compare with the golden outputs; returns the runs checked."""
    import json

    import numpy as np
    import onnxruntime as ort
    import torch
    from executorch.runtime import Runtime

    manifest = json.loads((out / "manifest.json").read_text())
    checked = 0
    for art in manifest["artifacts"]:
        runtime = "ort-cpu" if art["path"].endswith(".onnx") else "executorch"
        if runtime not in art["verified_on"]:  # a QNN context runs on the HTP only
            continue
        golden = np.load(out / art["golden"]["path"])
        names = [t["name"] for t in art["inputs"]]
        n = art["golden"]["samples"]
        if art["path"].endswith(".onnx"):
            session = ort.InferenceSession(str(out / art["path"]), providers=["CPUExecutionProvider"])
            run = lambda feed: session.run(None, feed)
        else:
            method = Runtime.get().load_program(out / art["path"]).load_method("forward")
            run = lambda feed: [t.numpy() for t in method.execute([torch.from_numpy(feed[k]) for k in names])]
        for i in range(n):
            feed = {k: np.ascontiguousarray(golden[f"input/{k}"][i:i + 1]) for k in names}
            for t, got in zip(art["outputs"], run(feed)):
                expected = golden[f"output/{runtime}/{t['name']}"][i:i + 1]
                assert got.shape == expected.shape and got.dtype == np.dtype(t["dtype"])
                np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
            checked += 1
    return checked


def assert_clean_failure(code, err, out_dir, *words):
    """Bad input: one line naming the problem, exit code 2, no traceback, no OUT left behind."""
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("edgec: error: ")
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], lines[0]
    assert not out_dir.exists()
    assert not [p for p in out_dir.parent.iterdir() if ".partial-" in p.name]


def hf_greedy(hf, ids: list[int], n: int) -> list[int]:
    """transformers' own greedy new tokens after `ids`: the reference every engine is held to."""
    import torch

    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                          do_sample=False, max_new_tokens=n)
    return out[0, len(ids):].tolist()


def tmpfs(mnt: Path, size: str):
    """A size-limited tmpfs mounted at `mnt` while the generator is open (a fixture body): a full disk on
    demand. Skips where mounting is not allowed (not root, or a sandbox)."""
    import os
    import shutil
    import subprocess

    import pytest

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("this sandbox does not allow mounting a tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)



def vulkan_skip_reason() -> str | None:
    """Why the GPU tests cannot run here (no IREE, no Vulkan device), or None."""
    try:
        from edgec.runtimes import iree_gpu

        found = iree_gpu.devices("vulkan")
    except Exception as e:  # IREE missing: the runtime says how to install it
        return str(e)
    return None if found else "no Vulkan device: apt-get install mesa-vulkan-drivers (lavapipe)"
