"""Text calibration data: sample files, the built-in sentence sets, and fixed-shape encoding.

Exported graphs have a static sequence length, so every batch is encoded to
exactly `seq_len` tokens, right-padded with a contiguous mask (the layout the
padded-position skipping in the exported graph relies on).
"""

import json
from importlib import resources
from pathlib import Path

import numpy as np

from edgec.errors import InputError

SPLITS = ("calib", "heldout")


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise InputError(f"calibration file {path} does not exist: check the path")
    if not path.is_file():
        raise InputError(f"calibration path {path} is not a file: give a .txt or .jsonl file")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"calibration file {path} is not UTF-8 text: save it as UTF-8") from None


def _jsonl_text(obj, path: Path, lineno: int) -> str:
    """Take "text", else "sentence", else the first string value, as datasets name it differently."""
    if isinstance(obj, dict):
        for key in ("text", "sentence"):
            if isinstance(obj.get(key), str):
                return obj[key]
        for value in obj.values():
            if isinstance(value, str):
                return value
    raise InputError(f"{path} line {lineno} has no text: give an object with a \"text\" field")


def read_text_samples(path: Path) -> list[str]:
    """Read one sample per line from a .txt file, or one JSON object per line from a .jsonl file."""
    path = Path(path)
    samples = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        if path.suffix.lower() == ".jsonl":
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                raise InputError(f"{path} line {lineno} is not valid JSON: write one JSON object per line") from None
            line = _jsonl_text(obj, path, lineno)
        samples.append(line.strip())
    samples = [s for s in samples if s]
    if not samples:
        raise InputError(f"calibration file {path} is empty: give at least one sample, one per line")
    return samples


def builtin_sentences(split: str) -> list[str]:
    """The shipped English sentences; "calib" calibrates, "heldout" only measures accuracy."""
    if split not in SPLITS:
        raise ValueError(f"unknown sentence split {split!r}; valid: {', '.join(SPLITS)}")
    text = resources.files("edgec.calibration").joinpath("data", f"sentences_{split}.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def load_tokenizer(model_dir: Path):
    """Load the model's fast tokenizer with the padding/truncation from tokenizer.json switched off.

    MiniLM's tokenizer.json pads every input to 128; left on, anyone using the
    backend directly would pool padding as if it were text.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError):
        raise InputError(f"cannot load a tokenizer from {model_dir}: give a Hugging Face model directory with a tokenizer.json") from None
    if not getattr(tokenizer, "is_fast", False):
        raise InputError(f"the tokenizer in {model_dir} is not a fast tokenizer: add a tokenizer.json")
    tokenizer._tokenizer.no_padding()
    tokenizer._tokenizer.no_truncation()
    return tokenizer


def fixed_length(tokenizer, seq_len: int):
    """A copy of the model's `tokenizers.Tokenizer` that truncates and right-pads to `seq_len`.

    Calibration, evaluation and the bundle's tokenizer.json all use it, so an app
    that loads the shipped file gets exactly the inputs edgec measured with.
    """
    from tokenizers import Tokenizer

    min_len = tokenizer.num_special_tokens_to_add() + 1
    if seq_len < min_len:
        raise InputError(f"sequence length {seq_len} is too short for this tokenizer: give at least {min_len}")
    tok = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pad_token = tokenizer.pad_token if tokenizer.pad_token is not None else tok.id_to_token(pad_id)
    tok.enable_truncation(max_length=seq_len)
    tok.enable_padding(direction="right", length=seq_len, pad_id=pad_id, pad_token=pad_token)
    return tok


def encode_fixed(tok, texts: list[str]) -> dict[str, np.ndarray]:
    """int64 `input_ids`/`attention_mask` [N, seq_len] from a `fixed_length` tokenizer."""
    encodings = tok.encode_batch(list(texts))
    return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64)}


def encode(tokenizer, texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    """Encode to int64 `input_ids`/`attention_mask` of shape [N, seq_len], truncated and right-padded."""
    return encode_fixed(fixed_length(tokenizer, seq_len), texts)
