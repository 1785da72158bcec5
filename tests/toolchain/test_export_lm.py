"""Language models end to end: `edgec export` for cpu and npu, the bundle its engines read, `edgec generate`."""

import json
import shutil

import numpy as np
import pytest
import torch

from helpers import assert_clean_failure, run_native
from edgec.zoo.seeded import seeded_decoder_dir

PROMPT = "And God said, Let there be light"
PPL_RATIO = 1.10  # a seeded one-layer model's 4-bit perplexity over its float one (tinylm's: bench.llm_export)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """A Llama 3.x checkpoint (llama3 RoPE scaling) saved in bfloat16, as the Hub ships them."""
    return seeded_decoder_dir(tmp_path_factory.mktemp("llama") / "model", "llama3", dtype=torch.bfloat16,
                              num_hidden_layers=1)


def _export(run_cli, model, out, target, **recipe):
    code, _, err = run_cli("export", model, "--target", target, "-o", out, "--recipe", _recipe(out.parent, **recipe),
                           "-q")
    assert code == 0, err
    return json.loads((out / "report.json").read_text()), json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def cpu_bundle(llama_dir, tmp_path_factory):
    """One cpu export shared by the tests below (int4 ONNX for GenAI, 8da4w .pte)."""
    from _pytest.monkeypatch import MonkeyPatch

    from edgec.toolchain import cli

    out = tmp_path_factory.mktemp("cpu") / "bundle"
    mp = MonkeyPatch()
    mp.setattr("sys.argv", ["edgec", "export", str(llama_dir), "--target", "cpu", "-o", str(out), "-q",
                            "--recipe", str(_recipe(out.parent, context=128))])
    try:
        cli.main()
    except SystemExit as e:
        assert not e.code
    finally:
        mp.undo()
    return out


def _recipe(folder, **fields):
    path = folder / "recipe.json"
    path.write_text(json.dumps({"eval_samples": 4, "compare_quantized_only": False, **fields}))
    return path


def test_cpu_bundle_is_what_each_engine_reads(cpu_bundle):
    import onnxruntime_genai as og

    from edgec.toolchain.bundle import open_bundle
    from edgec.toolchain.golden import read_golden

    b = open_bundle(cpu_bundle)  # schema, sizes and hashes
    m = b.manifest
    assert m["task"] == "text-generation" and m["generation"]["context_length"] == 128
    assert {a["path"]: a["runtime"] for a in m["artifacts"]} == {"model.onnx": "ort-genai", "model.pte": "executorch",
                                                                 "model.gguf": "llama-cpp"}
    assert (cpu_bundle / "genai_config.json").is_file() and (cpu_bundle / "tokenizer.json").is_file()
    onnx_entry, pte_entry, gguf_entry = m["artifacts"]
    assert gguf_entry["engine"]["quant"] == "Q4_0" and gguf_entry["golden"]["runtimes"] == ["llama-cpp"]
    assert "intra_op_num_threads" not in (cpu_bundle / "genai_config.json").read_text()
    assert m["generation"]["num_bos"] == 1 and pte_entry["engine"]["metadata_methods"]["get_n_bos"] == 1
    assert onnx_entry["external_data"][0]["path"] == "model.onnx.data"  # counted, hashed
    assert [t["name"] for t in pte_entry["inputs"]] == ["input_ids", "cache_position"]
    assert pte_entry["engine"]["metadata_methods"]["get_max_context_len"] == 128
    assert onnx_entry["engine"]["config"] == "genai_config.json"
    # ONNX Runtime GenAI generates from the bundle folder alone, and reproduces the golden tokens
    golden = read_golden(cpu_bundle / m["artifacts"][0]["golden"]["path"])
    model = og.Model(str(cpu_bundle))
    params = og.GeneratorParams(model)
    prompt = golden["prompt/0"]
    want = golden["tokens/ort-genai/0"]
    params.set_search_options(do_sample=False, max_length=len(prompt) + len(want))
    gen = og.Generator(model, params)
    gen.append_tokens(prompt.astype(np.int32))
    got = []
    while not gen.is_done() and len(got) < len(want):
        gen.generate_next_token()
        got.append(int(gen.get_next_tokens()[0]))
    assert got == want.tolist()


def test_the_8da4w_program_computes_what_torchao_describes(cpu_bundle, llama_dir):
    """XNNPACK runs the quantized program torchao describes; 4-bit noise keeps float's choice near the top."""
    import transformers

    from edgec.exporters.executorch_llm import StaticCacheLM, quantize_dynamic_int
    from edgec.models.hf_decoder import from_hf_decoder
    from edgec.runtimes.executorch_llm import load_lm

    hf = transformers.AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.float32).eval()
    lm = load_lm(cpu_bundle / "model.pte", cpu_bundle / "tokenizer.json")
    torch.manual_seed(0)
    ids = torch.randint(3, hf.config.vocab_size, (1, 100))
    ids[0, 0] = hf.config.bos_token_id
    got = lm.score(ids[0].numpy())
    eager = StaticCacheLM(from_hf_decoder(hf), 128, every_position=True).eval()
    quantize_dynamic_int(eager, 4)
    with torch.no_grad():
        same_scheme, ref = eager(ids, torch.arange(100))[0].numpy(), hf(ids).logits[0].numpy()
    assert (got.argmax(-1) == same_scheme.argmax(-1)).mean() >= 0.9
    top5 = np.argsort(-got, axis=-1)[:, :5]
    assert (top5 == ref.argmax(-1)[:, None]).any(-1).mean() >= 0.8
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.4
    r = json.loads((cpu_bundle / "report.json").read_text())
    assert r["size_ratio"]["model.pte"] < 0.5 and r["size_ratio"]["model.onnx"] < 0.7


def test_cpu_report_measures_every_engine(cpu_bundle):
    r = json.loads((cpu_bundle / "report.json").read_text())
    ppl = r["perplexity"]
    assert set(ppl["per_runtime"]) == {"model.onnx@ort-genai", "model.pte@executorch", "model.gguf@llama-cpp"}
    for v in ppl["per_runtime"].values():  # 4-bit weights, held to the float model on the same windows
        assert v["tokens"] == 4 * 127 and 0.9 < v["value"] / v["float"] < PPL_RATIO, (v["value"], v["float"])
    speed = r["generation_speed"]["per_runtime"]
    assert {"model@torch", "model.onnx@ort-genai", "model.pte@executorch", "model.gguf@llama-cpp"} <= set(speed)
    for v in speed.values():
        assert v["decode_tokens_per_s"] > 0 and v["peak_rss_mb"] > v["baseline_rss_mb"] > 0
    bound = r["generation_speed"]["bound"]  # every row: bytes a token reads, the share of the bandwidth
    assert bound["bytes_per_s"] > 1e8 and bound["threads"] >= 1
    for v in speed.values():
        want = v["decode_tokens_per_s"] * v["bytes_per_token"] / bound["bytes_per_s"]
        assert v["bandwidth_fraction"] == pytest.approx(want, abs=1e-3)
    assert all(speed[k]["bytes_per_token"] < 0.3 * speed["model@torch"]["bytes_per_token"]
               for k in ("model.onnx@ort-genai", "model.gguf@llama-cpp"))  # 4-bit weights read a quarter
    text = (cpu_bundle / "report.md").read_text()
    assert "## Perplexity" in text and "## Generation speed" in text and "Fastest decode" in text
    assert "MB read per token" in text and f"{bound['bytes_per_s'] / 1e9:.1f} GB/s" in text


@pytest.mark.parametrize("runtime", ["ort-genai", "executorch"])
def test_generate_streams_from_the_bundle(run_cli, cpu_bundle, runtime):
    code, out, err = run_cli("generate", cpu_bundle, "--prompt", PROMPT, "-n", "8", "--runtime", runtime, "--json")
    assert code == 0, err
    stats = json.loads(err.strip().splitlines()[-1])
    assert stats["new_tokens"] == 8 and stats["decode_tokens_per_s"] > 0 and stats["peak_rss_mb"] > 0
    assert runtime in stats["runtime"] and out.strip()


@pytest.mark.parametrize("runtime", ["ort-genai", "executorch"])
def test_run_check_replays_the_golden_tokens(run_cli, cpu_bundle, runtime):
    code, out, err = run_cli("run", cpu_bundle, "--check", "--runtime", runtime)
    assert code == 0, err
    assert "3 golden generations reproduced" in out
    code, _, err = run_cli("run", cpu_bundle, "--text", "hello")
    assert code == 2 and "edgec generate" in err


def test_generate_with_a_tiered_cache_cuts_the_bundles_decoder(run_cli, cpu_bundle, tmp_path, monkeypatch):
    """The bundle's own int4 model.onnx, cut at its attention cores, with the cache on disk: GenAI's tokens."""
    monkeypatch.setenv("EDGEC_CACHE", str(tmp_path / "cache"))
    code, ref, err = run_cli("generate", cpu_bundle, "--prompt", PROMPT, "-n", "12", "--runtime", "ort-genai")
    assert code == 0, err
    code, out, err = run_cli("generate", cpu_bundle, "--prompt", PROMPT, "-n", "12", "--kv-offload", "disk",
                             "--kv-budget", "24KB", "--kv-chunk", "4", "--kv-dir", tmp_path / "kv", "--json")
    assert code == 0, err
    stats = json.loads(err.strip().splitlines()[-1])
    assert out == ref and "model.onnx on ort-tiered" in stats["runtime"] and stats["kv"]["chunks_read"] > 0
    assert list((tmp_path / "kv").iterdir()) == []


def test_generate_refuses_what_a_bundle_cannot_do(run_cli, cpu_bundle, tmp_path):
    code, _, err = run_cli("generate", cpu_bundle, "--prompt", PROMPT, "--runtime", "qnn-htp")
    assert code == 2 and err.count("\n") == 1 and "qnn-htp" in err
    long = tmp_path / "long.txt"
    long.write_text("and the earth was without form " * 80)
    code, _, err = run_cli("generate", cpu_bundle, "--prompt-file", long, "-n", "8")
    assert code == 2 and err.count("\n") == 1 and "context" in err


def test_generate_on_a_model_is_transformers(run_cli, llama_dir):
    code, out, err = run_cli("generate", llama_dir, "--prompt", PROMPT, "-n", "6", "--json")
    assert code == 0, err
    assert "torch" in json.loads(err.strip().splitlines()[-1])["runtime"]
    code, _, err = run_cli("generate", llama_dir, "--prompt", PROMPT, "--runtime", "executorch")
    assert code == 2 and "edgec export" in err


def test_a_model_without_tokenizer_is_refused(run_cli, llama_dir, tmp_path):
    model = tmp_path / "no-tokenizer"
    shutil.copytree(llama_dir, model)
    (model / "tokenizer.json").unlink()
    out = tmp_path / "out"
    code, _, err = run_cli("export", model, "--target", "cpu", "-o", out, "-q")
    assert_clean_failure(code, err, out, "tokenizer.json")


def test_an_unsupported_architecture_is_refused(run_cli, tmp_path):
    import transformers

    model = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(model)
    out = tmp_path / "out"
    code, _, err = run_cli("export", model, "--target", "cpu", "-o", out, "-q")
    assert_clean_failure(code, err, out, "gpt2", "llama")


def test_npu_export_runs_whole_on_the_htp(run_cli, llama_dir, tmp_path):
    out = tmp_path / "npu"
    report, manifest = _export(run_cli, llama_dir, out, "npu", context=64, prefill_chunk=16, htp_eval_samples=1)
    assert report["npu"]["runs_fully"] and report["npu"]["integer_only"]
    art = manifest["artifacts"][0]
    assert art["runtime"] == "qnn-htp" and "ort-cpu" in art["verified_on"] and art["engine"]
    assert "model.onnx@qnn-htp" in report["perplexity"]["per_runtime"]
    code, _, err = run_cli("generate", out, "--prompt", PROMPT, "--runtime", "executorch")
    assert code == 2 and "executorch" in err
    _first_token_with_plain_onnxruntime(out, manifest)


def _first_token_with_plain_onnxruntime(out, manifest):
    """An app's prefill from manifest.json alone: plain onnxruntime, rotary rows, mask and cache update by
    the documented rules, the cache starting at its zero point; the next token is the golden one."""
    import onnxruntime as ort

    from edgec.toolchain.golden import read_golden

    art = manifest["artifacts"][0]
    engine, golden = art["engine"], read_golden(out / art["golden"]["path"])
    prompt, want = golden["prompt/0"], golden["tokens/ort-cpu/0"]
    ctx, chunk, rope = engine["context"], engine["chunk"], engine["rope"]
    cache = {t["name"]: np.full(t["shape"], engine["cache"]["zero_point"][t["name"]], np.uint16)
             for t in engine["inputs"] if t["name"].startswith("past_")}
    assert [m["name"] for m in engine["masks"]] == ["mask"]  # no sliding window in this model
    session = ort.InferenceSession(str(out / art["path"]), providers=["CPUExecutionProvider"])
    for p in range(0, len(prompt), chunk):
        n = min(chunk, len(prompt) - p)
        rows = np.minimum(np.arange(chunk), n - 1)  # rows past the real tokens copy the last one
        feed = {}
        for (cos, sin), inv_freq, factor in zip(rope["inputs"], rope["inv_freq"], rope["attention_factor"]):
            freqs = (p + rows)[:, None] * np.asarray(inv_freq, np.float32)[None]
            angles = np.concatenate([freqs, freqs], -1).astype(np.float32)
            feed[cos], feed[sin] = np.cos(angles) * factor, np.sin(angles) * factor
        mask = np.full((1, 1, chunk, ctx + chunk), engine["mask_value"], np.float32)
        mask[..., :p] = 0
        for r in range(chunk):
            mask[0, 0, r, ctx:ctx + rows[r] + 1] = 0
        feed.update({"input_ids": prompt[p + rows][None].astype(np.int32), "mask": mask, **cache})
        names = ["logits", *(k.replace("past_", "new_") for k in cache)]
        logits, *new = session.run(names, feed)
        for k, v in zip(cache, new):
            cache[k][:, :, p:p + n] = v[:, :, :n]
    assert int(logits[0, n - 1].argmax()) == int(want[0])


def test_desktop_runner_generates_what_edgec_generate_does(cpu_bundle, desktop_runner, run_cli):
    """The C++ runner's greedy loop over the .pte: the tokens and text of `edgec generate --runtime executorch`."""
    from edgec.runtimes.executorch_llm import load_lm
    from edgec.runtimes.llm import Sampling
    from tokenizers import Tokenizer

    r = run_native(desktop_runner, cpu_bundle, "--prompt", PROMPT, "--max-new-tokens", "12", "--json")
    assert r.returncode == 0, r.stderr
    native = json.loads(r.stdout.splitlines()[0])
    ids = Tokenizer.from_file(str(cpu_bundle / "tokenizer.json")).encode(PROMPT).ids
    want = load_lm(cpu_bundle / "model.pte", cpu_bundle / "tokenizer.json").generate(ids, 12, Sampling()).tokens
    assert native["prompt_ids"] == ids and native["tokens"] == want
    code, text, err = run_cli("generate", cpu_bundle, "--prompt", PROMPT, "-n", "12", "--runtime", "executorch")
    assert code == 0, err
    assert text == native["text"] + "\n"
    r = run_native(desktop_runner, cpu_bundle, "--selftest")
    assert r.returncode == 0 and "selftest passed: 3 of 3" in r.stdout, r.stdout + r.stderr
