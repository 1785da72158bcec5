"""A Hugging Face tokenizer.json as llama.cpp's vocabulary: tokens, types, merges, special ids and the
pre-tokenizer llama.cpp names for the same split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edgec.errors import ExportError, InputError
from edgec.exporters.llama_bindings import gguf_package


# pre-tokenizer regexes of HF tokenizer.json files -> the llama.cpp pre-tokenizer that splits the same way, and
# whether it looks a whole piece up in the vocabulary before merging (llama.cpp's ignore_merges, HF's too)
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
SPLITS = {_LLAMA3: ("llama-bpe", True), _QWEN2: ("qwen2", False)}


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special: dict[str, int]  # bos / eos / pad / unk -> id
    add_bos: bool
    add_eos: bool
    chat_template: str | None


def _pre_tokenizer(spec: dict | None, ignore_merges: bool) -> str:
    """llama.cpp's name for a byte-level BPE pre-tokenizer: GPT-2's ByteLevel regex, or a Split regex
    followed by a regex-free ByteLevel (Llama 3, Qwen2)."""
    spec = spec or {}
    byte_level = lambda p: p.get("type") == "ByteLevel" and not p.get("add_prefix_space", False)  # noqa: E731
    found = None
    if byte_level(spec) and spec.get("use_regex", True):
        found = ("gpt-2", False)
    steps = spec.get("pretokenizers", []) if spec.get("type") == "Sequence" else []
    if len(steps) == 2 and steps[0].get("type") == "Split" and byte_level(steps[1]) \
            and not steps[1].get("use_regex", True) and steps[0].get("behavior") == "Isolated" \
            and not steps[0].get("invert"):
        found = SPLITS.get(steps[0].get("pattern", {}).get("Regex"))
    if found is None or found[1] != ignore_merges:
        raise ExportError(f"llama.cpp has no pre-tokenizer that splits text like this tokenizer's "
                          f"({json.dumps(spec)[:60]}..., ignore_merges {ignore_merges}): edgec writes the "
                          "byte-level BPE of GPT-2, Llama 3 and Qwen2")
    return found[0]


def read_vocab(tokenizer_dir: Path, vocab_size: int, hf_config=None) -> Vocab:
    """The HF fast tokenizer in `tokenizer_dir` as GGUF's tokenizer keys (llama.cpp's "gpt2" BPE model)."""
    gguf = gguf_package()
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.is_file():
        raise InputError(f"{tokenizer_dir} has no tokenizer.json: a GGUF embeds the HF fast tokenizer")
    spec = json.loads(path.read_text(encoding="utf-8"))
    model = spec.get("model", {})
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "byte-fallback BPE (SentencePiece style)" if model.get("type") == "BPE" else model.get("type")
        raise ExportError(f"the tokenizer is {kind}: edgec writes byte-level BPE tokenizers into GGUF files")
    if (spec.get("normalizer") or {}).get("type") not in (None, "NFC"):
        raise ExportError(f"the tokenizer normalizes text ({spec['normalizer'].get('type')}), which llama.cpp's "
                          "BPE tokenizer does not")
    pre = _pre_tokenizer(spec.get("pre_tokenizer"), bool(model.get("ignore_merges", False)))
    ids = dict(model["vocab"])
    added = {t["id"]: t for t in spec.get("added_tokens", [])}
    ids.update({t["content"]: i for i, t in added.items()})
    n = max(ids.values()) + 1
    if n > vocab_size:
        raise ExportError(f"the tokenizer has {n} tokens and the model's embedding only {vocab_size}")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    for text, i in ids.items():
        tokens[i] = text
        types[i] = int(gguf.TokenType.NORMAL)
    for i, t in added.items():
        types[i] = int(gguf.TokenType.CONTROL if t.get("special") else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    config_path = Path(tokenizer_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    special = {}
    for kind in ("bos", "eos", "pad", "unk"):
        token = config.get(f"{kind}_token")
        token = token.get("content") if isinstance(token, dict) else token
        fallback = getattr(hf_config, f"{kind}_token_id", None)
        fallback = fallback[0] if isinstance(fallback, (list, tuple)) and fallback else fallback
        if token in ids:
            special[kind] = ids[token]
        elif isinstance(fallback, int):
            special[kind] = fallback
    add_bos = config.get("add_bos_token")
    if add_bos is None:  # from the post-processor: does a single sequence start with BOS?
        post = spec.get("post_processor") or {}
        template = next((p for p in [post, *post.get("processors", [])] if p.get("type") == "TemplateProcessing"), {})
        first = (template.get("single") or [{}])[0].get("SpecialToken", {}).get("id")
        add_bos = first is not None and ids.get(first) == special.get("bos")
    return Vocab(tokens, types, merges, pre, special, bool(add_bos), bool(config.get("add_eos_token", False)),
                 config.get("chat_template") if isinstance(config.get("chat_template"), str) else None)


# llama.cpp sets token attributes by general.name: a Phi-3 name makes it look these tokens up, and abort loading
# where the vocabulary lacks one
_PHI3_NAMES, _PHI3_TOKENS = ("phi3", "phi-3"), ("<unk>", "<s>", "<|endoftext|>", "</s>")


def model_name(hf_config, vocab: Vocab) -> str | None:
    """general.name: the checkpoint's folder name, left out where llama.cpp would trip over it."""
    name = Path(str(getattr(hf_config, "name_or_path", "") or "")).name or getattr(hf_config, "model_type", None)
    if name and any(n in name.lower() for n in _PHI3_NAMES) and not set(vocab.tokens).issuperset(_PHI3_TOKENS):
        return None
    return name or None


def write_vocab(writer, vocab: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    add = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "pad": writer.add_pad_token_id,
           "unk": writer.add_unk_token_id}
    for kind, i in vocab.special.items():
        add[kind](i)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
