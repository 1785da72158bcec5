"""`edgec generate --kv-offload`: the decoder stages under ONNX Runtime with a tiered cache give
transformers' tokens, and an interrupted run leaves no chunk behind."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import hf_greedy

from edgec.runtimes.kv_tiers import KVOptions
from edgec.zoo.seeded import seeded_decoder_dir

EDGEC = [sys.executable, "-m", "edgec.toolchain.cli"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """A seeded one-layer Llama (2048 positions) and a stage cache that the CLI fills on first use."""
    root = tmp_path_factory.mktemp("kv")
    model = seeded_decoder_dir(root / "llama", max_position_embeddings=2048, num_hidden_layers=1)
    return model, root / "cache"


@pytest.fixture
def env(seeded, monkeypatch):
    monkeypatch.setenv("EDGEC_CACHE", str(seeded[1]))
    return {**os.environ, "EDGEC_CACHE": str(seeded[1])}


@pytest.fixture(scope="module")
def stages(seeded):
    """The stages the CLI will find in its cache (exported here once)."""
    from edgec.toolchain.stages import stages_for_model

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEC_CACHE", str(seeded[1]))
        return stages_for_model(seeded[0], "llama")


def _prompt(model):
    from tokenizers import Tokenizer

    from edgec.calibration import prose

    tok = Tokenizer.from_file(str(model / "tokenizer.json"))
    return [0] + tok.encode(prose.split("heldout")[3][:600]).ids[:100]


@pytest.mark.parametrize("kv", [KVOptions(), KVOptions("disk", budget=40_000, chunk=8, io_threads=2)],
                         ids=["memory", "disk"])
def test_tiered_greedy_tokens_equal_transformers(seeded, stages, kv, tmp_path):
    from edgec.runtimes import runtime
    from edgec.runtimes.llm import Sampling
    from edgec.runtimes.torch_lm import load_hf_lm

    model = seeded[0]
    hf = load_hf_lm(model)
    ids = _prompt(model)
    kv = KVOptions(**{**kv.__dict__, "dir": tmp_path})
    lm = runtime("ort-tiered").load_lm(stages, model / "tokenizer.json", {"kv": kv})
    got = lm.generate(ids, 32, Sampling())
    assert got.tokens == hf_greedy(hf, ids, 32)
    if kv.offload == "disk":
        assert lm.last_cache.stats.chunks_read > 0 and lm.last_cache.stats.chunks_spilled > 0
    assert list(tmp_path.iterdir()) == []
    import torch

    with torch.no_grad():
        want = hf(input_ids=torch.tensor([ids])).logits[0].numpy()
    assert np.abs(lm.score(np.asarray(ids)) - want).max() < 1e-3


def test_cli_disk_topk_streams_text_and_cleans_up(seeded, stages, env, run_cli, tmp_path):
    model = seeded[0]
    base = ["generate", model, "--prompt", "And the LORD said unto Moses,", "-n", "24"]
    code, ref, _ = run_cli(*base)
    assert code == 0
    code, out, err = run_cli(*base, "--kv-offload", "disk", "--kv-budget", "22KB", "--kv-chunk", "4",
                             "--kv-dir", tmp_path, "--json")
    assert code == 0, err
    assert out == ref  # exact attention: the same greedy text as transformers
    import json

    stats = json.loads(err.strip().splitlines()[-1])
    assert stats["kv"]["spilled"] > 0 and "ort-tiered" in stats["runtime"]
    code, out, err = run_cli(*base, "--kv-offload", "disk", "--kv-budget", "22KB", "--kv-chunk", "4",
                             "--kv-policy", "topk", "--kv-topk", "2", "--kv-dtype", "int8", "--kv-dir", tmp_path)
    assert code == 0 and len(out.strip()) > 10, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, words", [
    (["--kv-budget", "lots"], "is not a size"),
    (["--kv-offload", "disk"], "needs --kv-budget"),
    (["--kv-dtype", "int8"], "--kv-dtype applies"),
    (["--kv-offload", "disk", "--kv-budget", "1KB"], "too small"),
    (["--kv-offload", "host", "--kv-budget", "1MB", "--runtime", "executorch"], "drop --runtime"),
])
def test_bad_kv_options_are_one_line(seeded, stages, env, run_cli, args, words):
    code, out, err = run_cli("generate", seeded[0], "--prompt", "In the beginning", "-n", "4", *args)
    assert code == 2 and err.count("\n") == 1 and words in err and "Traceback" not in err, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_generation_removes_its_chunks(seeded, stages, env, sig, tmp_path):
    kv_dir = tmp_path / "kv"
    proc = subprocess.Popen([*EDGEC, "generate", str(seeded[0]), "--prompt", "In the beginning", "-n", "1900",
                             "--kv-offload", "disk", "--kv-budget", "300KB", "--kv-chunk", "8", "--kv-dir",
                             str(kv_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # a shell's background job ignores SIGINT, and Python keeps that: undo it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(list(kv_dir.glob("*/*.kv"))) < 4:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.strip().count("\n") == 0, err
    assert list(kv_dir.iterdir()) == []
