"""`edgec generate`: a model (transformers, the reference) or a bundle (its engines) from a prompt."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgec import runtimes
from edgec.errors import InputError
from edgec.models import DECODER_TYPES
from edgec.models.special_ids import eos_ids
from edgec.runtimes.kv_tiers import KVOptions
from edgec.runtimes.llm import Generation, OnText, Sampling
from edgec.runtimes.tokens import TokenBytes


TIERED = "ort-tiered"


@dataclass
class Opened:
    """A session ready to generate, and what it is."""

    session: object
    tokens: TokenBytes
    label: str  # "model.pte on executorch"
    context: int
    eos: list[int]


def open_lm(source: str, runtime: str | None, kv: KVOptions | None = None) -> Opened:
    """A bundle folder (manifest.json) runs on its engines; a zoo name or HF directory on torch, or with a
    tiered KV cache (`kv`) on ONNX Runtime over its decoder stages."""
    if kv is not None:
        kv.check()
        if runtime not in (None, TIERED):
            raise InputError(f"the --kv-* options choose how {TIERED} keeps the KV cache: drop --runtime "
                             f"{runtime} or give --runtime {TIERED}")
        runtime = TIERED
    if (Path(source) / "manifest.json").is_file():
        if runtime == TIERED:
            return _open_bundle_tiered(Path(source), kv or KVOptions())
        return _open_bundle(Path(source), runtime)
    return _open_model(source, runtime or "torch", kv)


def _open_model(source: str, runtime: str, kv: KVOptions | None = None) -> Opened:
    if runtime == TIERED:
        return _open_tiered(source, kv or KVOptions())
    from edgec.toolchain.load import inspect

    if runtime != "torch":
        runtimes.runtime(runtime)  # an unknown name fails first, with the list
        raise InputError(f"--runtime {runtime} runs an exported bundle: run edgec export {source} --target "
                         f"{'npu' if runtime == 'qnn-htp' else 'cpu'} -o OUT, then edgec generate OUT "
                         f"--runtime {runtime}")
    src = inspect(source)
    _check_lm(src)
    tokenizer = src.path / "tokenizer.json"
    session = runtimes.runtime("torch").load_lm(src.path, tokenizer, {})
    return Opened(session, TokenBytes(tokenizer), f"{src.name} on torch (transformers, float32)", session.context,
                  eos_ids(src.config, src.path))


def _open_tiered(source: str, kv: KVOptions) -> Opened:
    """Without torch or transformers once the stages exist: the process holds the stages and the cache only."""
    import json

    from types import SimpleNamespace

    from edgec.toolchain.stages import stages_for_model
    from edgec.toolchain.zoo import ZOO

    path = ZOO[source].locate() if source in ZOO else Path(source)
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{source} has no readable config.json ({e.__class__.__name__}): give a Hugging Face "
                         f"decoder directory or a zoo name ({', '.join(ZOO)})") from None
    if config.get("model_type") not in DECODER_TYPES:
        raise InputError(f"{source} is a {config.get('model_type')} model, not a language model: the tiered KV "
                         f"cache takes {' or '.join(DECODER_TYPES)} decoders")
    tokenizer = path / "tokenizer.json"
    if not tokenizer.is_file():
        raise InputError(f"{path} has no tokenizer.json: save the model's fast tokenizer there")
    name = source if source in ZOO else path.name
    eos = eos_ids(SimpleNamespace(eos_token_id=config.get("eos_token_id")), path)
    session = runtimes.runtime(TIERED).load_lm(stages_for_model(path, name), tokenizer,
                                               {"eos_token_ids": eos, "kv": kv})
    return Opened(session, TokenBytes(tokenizer), f"{name} on {TIERED} ({describe(kv)})", session.context, eos)


def _open_bundle_tiered(root: Path, kv: KVOptions) -> Opened:
    """The bundle's GenAI decoder (its model.onnx, weights as exported), cut into stages."""
    from edgec.toolchain.bundle import open_bundle
    from edgec.toolchain.stages import stages_for_bundle

    b = open_bundle(root)
    if b.manifest["task"] != "text-generation":
        raise InputError(f"{root} holds a {b.manifest['task']} model: run it with edgec run {root}")
    art = next((a for a in b.manifest["artifacts"] if a["runtime"] == "ort-genai"), None)
    if art is None:
        raise InputError(f"{root} has no ONNX Runtime GenAI decoder (model.onnx) to run with a tiered KV cache: "
                         f"export it with --target cpu")
    gen = b.manifest["generation"]
    attention = art.get("engine", {}).get("attention")
    session = runtimes.runtime(TIERED).load_lm(stages_for_bundle(root / art["path"], b.manifest["model"], attention),
                                               root / b.manifest["tokenizer"]["path"], {**gen, "kv": kv})
    return Opened(session, TokenBytes(root / b.manifest["tokenizer"]["path"]),
                  f"{art['path']} on {TIERED} ({describe(kv)})", session.context, gen["eos_token_ids"])


def describe(kv: KVOptions) -> str:
    if kv.offload == "none":
        where = "KV in memory"
    else:
        where = f"KV {kv.offload}, budget {kv.budget / 2**20:.1f} MB, {kv.dtype} chunks"
    policy = f"top-{kv.topk}" if kv.policy == "topk" else "exact"
    return f"{where}, {policy} attention over {kv.chunk}-token chunks"


def _check_lm(src) -> None:
    if src.kind != "causal-lm":
        raise InputError(f"{src.name} is a {src.config.model_type} model, not a language model: edgec generate "
                         f"takes {', '.join(DECODER_TYPES)} decoders")
    if not (src.path / "tokenizer.json").is_file():
        raise InputError(f"{src.path} has no tokenizer.json: save the model's fast tokenizer there")


def _open_bundle(root: Path, runtime: str | None) -> Opened:
    from edgec.toolchain.bundle import open_bundle

    b = open_bundle(root)
    if b.manifest["task"] != "text-generation":
        raise InputError(f"{root} holds a {b.manifest['task']} model: run it with edgec run {root}")
    if runtime == "torch":
        raise InputError("--runtime torch runs the Hugging Face model: give its directory or zoo name "
                         f"({b.manifest['model']}) instead of the bundle")
    art, rt = b.artifact(runtime)
    gen = b.manifest["generation"]
    tokenizer = root / b.manifest["tokenizer"]["path"]
    session = runtimes.runtime(rt).load_lm(root / art["path"], tokenizer, {**gen, **art})
    return Opened(session, TokenBytes(tokenizer), f"{art['path']} on {rt}", gen["context_length"],
                  gen["eos_token_ids"])


def generate(opened: Opened, prompt: str, max_new_tokens: int, sampling: Sampling,
             on_text: OnText | None = None) -> Generation:
    ids = opened.tokens.encode(prompt)
    if len(ids) + max_new_tokens > opened.context:
        raise InputError(f"the prompt is {len(ids)} tokens and --max-new-tokens {max_new_tokens} more, but "
                         f"{opened.label} holds {opened.context} tokens of context: shorten the prompt or ask "
                         f"for at most {max(opened.context - len(ids), 0)} new tokens")
    return opened.session.generate(ids, max_new_tokens, sampling, on_text)


def check_golden(root: Path, runtime: str | None) -> list[tuple[str, bool]]:
    """Each golden prompt through the bundle's engine: the same greedy tokens as edgec recorded there."""
    from edgec.toolchain.bundle import open_bundle
    from edgec.toolchain.golden import read_golden

    b = open_bundle(root)
    art, rt = b.artifact(runtime)
    if rt not in art["golden"]["runtimes"]:
        raise InputError(f"{art['path']} has no golden tokens for '{rt}' (it has {', '.join(art['golden']['runtimes'])})")
    arrays = read_golden(root / art["golden"]["path"])
    opened = _open_bundle(root, rt)
    results = []
    for i in range(art["golden"]["samples"]):
        want = arrays.get(f"tokens/{rt}/{i}")
        if want is None:
            continue  # a simulator records fewer prompts
        got = opened.session.generate([int(t) for t in arrays[f"prompt/{i}"]], len(want), Sampling()).tokens
        same = got == want.tolist()
        results.append((f"{len(want)} greedy tokens {'identical' if same else 'differ'}", same))
    return results
