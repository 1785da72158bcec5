"""Token id -> the bytes it stands for, so a stream can be decoded one token at a time.

Decoding each token to a string on its own breaks a character that a
byte-level tokenizer split over two tokens; the bytes do not.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte value."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars)}


class TokenBytes:
    """Callable: id -> bytes; special tokens (BOS, EOS, padding) give no bytes."""

    def __init__(self, tokenizer_json: Path):
        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        spec = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
        decoder = spec.get("decoder") or {}
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
        self.byte_level = "ByteLevel" in kinds
        self.special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}

    @lru_cache(maxsize=None)
    def __call__(self, token_id: int) -> bytes:
        if token_id in self.special:
            return b""
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if self.byte_level:
            table = _byte_level_table()
            return bytes(table[c] for c in piece if c in table)
        m = _BYTE_FALLBACK.match(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    def encode(self, text: str) -> list[int]:
        """The ids the model reads, with the special tokens (BOS) the tokenizer adds."""
        return self.tokenizer.encode(text).ids
