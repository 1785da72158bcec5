"""The zoo's trained tinylm as an app runs it: its cpu bundle's .pte under the C++ runner gives the greedy
tokens that `edgec generate --runtime executorch` gives."""

import json

from tokenizers import Tokenizer

from edgec.calibration.prose import split
from edgec.runtimes.executorch_llm import load_lm
from edgec.runtimes.llm import Sampling
from helpers import run_native


def test_desktop_runner_continues_tinylm_like_edgec_generate(run_cli, desktop_runner, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"context": 128, "eval_samples": 2, "compare_quantized_only": False, "gguf": None}))
    out = tmp_path / "tinylm-cpu"
    code, _, err = run_cli("export", "tinylm", "--target", "cpu", "-o", out, "--recipe", recipe, "-q")
    assert code == 0, err
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    lm = load_lm(out / "model.pte", out / "tokenizer.json")  # the session `edgec generate` drives
    for i, chapter in enumerate(split("heldout")[:3]):
        prompt = " ".join(chapter.split()[:10 + 5 * i])
        r = run_native(desktop_runner, out, "--prompt", prompt, "--max-new-tokens", "24", "--json")
        assert r.returncode == 0, r.stderr
        native = json.loads(r.stdout.splitlines()[0])
        assert native["tokens"] == lm.generate(tok.encode(prompt).ids, 24, Sampling()).tokens
        code, text, err = run_cli("generate", out, "--prompt", prompt, "-n", "24", "--runtime", "executorch")
        assert code == 0, err
        assert text == native["text"] + "\n"
    r = run_native(desktop_runner, out, "--selftest")
    assert r.returncode == 0 and "selftest passed: 3 of 3" in r.stdout, r.stdout + r.stderr
