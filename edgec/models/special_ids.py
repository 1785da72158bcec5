"""The special token ids of a causal LM as its Hugging Face directory states them (no torch: the tiered
runtime reads them too)."""

from __future__ import annotations

import json
from pathlib import Path

from edgec.errors import InputError


def _ids(value) -> list[int]:
    """A token id field as a list: transformers allows one id, a list, or none."""
    return [int(e) for e in (value if isinstance(value, (list, tuple)) else [value]) if e is not None]


def eos_ids(config, source_dir: Path | None = None) -> list[int]:
    """Every id that ends generation: config.json's and generation_config.json's (instruct models list
    their end-of-turn ids there), each once, config.json's first."""
    ids = _ids(config.eos_token_id)
    gen = Path(source_dir) / "generation_config.json" if source_dir is not None else None
    if gen is not None and gen.is_file():
        try:
            ids += _ids(json.loads(gen.read_text()).get("eos_token_id"))
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            raise InputError(f"{gen} is not valid JSON: re-save the model directory") from None
    return list(dict.fromkeys(ids))


def num_bos(tokenizer, config, source_dir: Path) -> int:
    """How many BOS ids go before a prompt's ids encoded without special tokens (what ExecuTorch's runner
    calls num_bos): 1 where the tokenizer's template adds BOS or tokenizer_config.json asks for it."""
    if config.bos_token_id is None:
        return 0
    bos = int(config.bos_token_id)
    if tokenizer.encode("a").ids[:1] == [bos] and tokenizer.encode("a", add_special_tokens=False).ids[:1] != [bos]:
        return 1
    settings = Path(source_dir) / "tokenizer_config.json"
    try:
        return int(bool(settings.is_file() and json.loads(settings.read_text()).get("add_bos_token")))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return 0
