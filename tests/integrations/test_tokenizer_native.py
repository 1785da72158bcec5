"""The desktop runner's C++ tokenizer (integrations/desktop) gives exactly the ids, attention masks and
decoded text of the `tokenizers` library, on edgec's own text and on generated strings that stress
Unicode handling, special tokens, truncation and padding: for the zoo's BERT WordPiece and GPT-2-style
byte-level BPE tokenizers and edits of them, and for tokenizers built here with the pipelines of the
LLM families (Llama 3, Qwen2/3, SmolLM, Gemma, Llama 2, Mistral)."""

from __future__ import annotations

import json
import random
import shutil
import string
import subprocess
import unicodedata
from pathlib import Path

import pytest
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from edgec.calibration import prose
from edgec.calibration.text import builtin_sentences, fixed_length, load_tokenizer
from edgec.toolchain.zoo import ZOO

DESKTOP = Path(__file__).resolve().parents[2] / "integrations" / "desktop"
SOURCES = [DESKTOP / "src" / "json.cpp", DESKTOP / "src" / "tokenizer.cpp", DESKTOP / "src" / "regex.cpp",
           DESKTOP / "tools" / "edgec_tokenize.cpp"]
SEED = 1234
GENERATED = 2600

# The C++ Unicode tables come from Python 3.11's unicodedata (Unicode 14.0); the Rust crates behind
# tokenizers are older or newer, so two sets of code points tokenize differently there (measured by
# running every code point through both in several contexts):
# - the 508 below: marks, punctuation and format characters assigned or re-categorized since the
#   Unicode 8-era tables of the `unicode_categories` crate (BertNormalizer, BertPreTokenizer, e.g.
#   U+061D, U+166D Po->So, U+1734 Mn->Mc) or of its NFD (combining classes, U+11938's decomposition);
# - code points unassigned in Unicode 14 that Unicode 15-16 made letters (Oniguruma's \p{L} in the
#   GPT-2 pattern, Rust's lowercasing): generation draws no unassigned (Cn) code point but the
#   noncharacters, which are Cn in every version.
# Every other code point agrees.
UNICODE_VERSION_SKEW = [
    0x061D, 0x07FD, (0x0890, 0x0891), (0x0898, 0x089F), (0x08CA, 0x08E2), (0x09FD, 0x09FE), 0x0A76, (0x0AFA, 0x0AFF),
    0x0B55, 0x0C04, 0x0C3C, 0x0C77, 0x0C84, 0x0D00, (0x0D3B, 0x0D3C), 0x0D81, 0x0EBA, 0x166D, 0x1715, 0x1734, 0x180F,
    (0x1885, 0x1886), (0x1ABF, 0x1ACE), (0x1B7D, 0x1B7E), (0x1DF6, 0x1DFB), (0x2E43, 0x2E4F), (0x2E52, 0x2E5D),
    0xA82C, 0xA8C5, 0xA8FF, 0xA9BD, (0x10D24, 0x10D27), (0x10EAB, 0x10EAD), (0x10F46, 0x10F50), (0x10F55, 0x10F59),
    (0x10F82, 0x10F89), 0x11070, (0x11073, 0x11074), 0x110C2, 0x110CD, 0x111C9, 0x111CF, 0x1123E, 0x1133B,
    (0x11438, 0x1143F), (0x11442, 0x11444), 0x11446, (0x1144B, 0x1144F), (0x1145A, 0x1145B), (0x1145D, 0x1145E),
    (0x11660, 0x1166C), 0x116B9, (0x1182F, 0x11837), (0x11839, 0x1183B), 0x11938, (0x1193B, 0x1193E),
    (0x11943, 0x11946), (0x119D4, 0x119D7), (0x119DA, 0x119DB), 0x119E0, 0x119E2, (0x11A01, 0x11A0A),
    (0x11A33, 0x11A38), (0x11A3B, 0x11A47), (0x11A51, 0x11A56), (0x11A59, 0x11A5B), (0x11A8A, 0x11A96),
    (0x11A98, 0x11A9C), (0x11A9E, 0x11AA2), (0x11C30, 0x11C36), (0x11C38, 0x11C3D), 0x11C3F, (0x11C41, 0x11C45),
    (0x11C70, 0x11C71), (0x11C92, 0x11CA7), (0x11CAA, 0x11CB0), (0x11CB2, 0x11CB3), (0x11CB5, 0x11CB6),
    (0x11D31, 0x11D36), 0x11D3A, (0x11D3C, 0x11D3D), (0x11D3F, 0x11D45), 0x11D47, (0x11D90, 0x11D91), 0x11D95,
    0x11D97, (0x11EF3, 0x11EF4), (0x11EF7, 0x11EF8), 0x11FFF, (0x12FF1, 0x12FF2), (0x13430, 0x13438),
    (0x16E97, 0x16E9A), 0x16F4F, 0x16FE2, 0x16FE4, (0x16FF0, 0x16FF1), (0x1CF00, 0x1CF2D), (0x1CF30, 0x1CF46),
    (0x1E000, 0x1E006), (0x1E008, 0x1E018), (0x1E01B, 0x1E021), (0x1E023, 0x1E024), (0x1E026, 0x1E02A),
    (0x1E130, 0x1E136), 0x1E2AE, (0x1E2EC, 0x1E2EF), (0x1E944, 0x1E94A), (0x1E95E, 0x1E95F),
]
SKEWED = {c for r in UNICODE_VERSION_SKEW for c in (range(r[0], r[1] + 1) if isinstance(r, tuple) else [r])}


# ---------------------------------------------------------------------------------------------
# the text

def _chars(*ranges: tuple[int, int]) -> list[str]:
    return [chr(c) for a, b in ranges for c in range(a, b + 1)
            if c not in SKEWED and unicodedata.category(chr(c)) != "Cn"]


CHAR_POOLS = {
    "ascii": list(string.ascii_letters),
    "digits": list(string.digits),
    "ascii_punct": list(string.punctuation),
    "latin": _chars((0xC0, 0x24F)) + list("äöüÄÖÜßẞ"),
    "greek": _chars((0x370, 0x3FF), (0x1F00, 0x1F20)),
    "cyrillic": _chars((0x400, 0x4FF)),
    "cjk": _chars((0x4E00, 0x4E60), (0x3040, 0x30FF), (0xAC00, 0xAC30), (0xD7A0, 0xD7A3), (0xFF01, 0xFF5E),
                  (0x3000, 0x303F), (0xF900, 0xF910), (0x20000, 0x20008), (0x2F800, 0x2F805)),
    "arabic": _chars((0x600, 0x6FF), (0x750, 0x77F), (0xFB50, 0xFB60)),
    "hebrew_indic_thai": _chars((0x591, 0x5F4), (0x900, 0x97F), (0xE01, 0xE5B)),
    "marks": _chars((0x300, 0x36F), (0x483, 0x489), (0x1AB0, 0x1ABE), (0x1DC0, 0x1DF5), (0x20D0, 0x20F0)),
    "unicode_punct": list("“”‘’«»‹›—–…¿¡·•‰′″§¶†‡※‼⁇、。「」『』【】《》〈〉！？，．：；〜・"),
    "spaces": [" ", " ", "  ", "\t", "\n", "\r\n", "\r", "\x0b", "\x0c", "\u00a0", "\u2002", "\u2009", "\u200a",
               "\u3000", "\u2028", "\u2029", "\u0085", "\u1680", "\u202f", "\u205f", "\x1c", "\x1f", "\u180e"],
    "invisible": ["\u200b", "\u200c", "\u200d", "\ufeff", "\u00ad", "\u2060", "\u2061", "\u202e", "\ufe0f", "\ufe0e",
                  "\u034f", "\u061c"],
    "control": [chr(c) for c in range(0x20)] + ["\x7f"] + _chars((0x80, 0x9F)) +
               ["\ufffd", "\ue000", "\uf8ff", "\U000F0000", "\ufffe", "\uffff", "\U0010ffff", "\U000e0001"],
    "case": list("İıẞΣσςǅǄǈΩKÅﬁŉΐⅢⅻⒶⓐ𐐀ᎠꭰＡ") + ["\U0001E900", "\u1E9B", "\u0345"],
}
PIECE_POOLS = {
    "emoji": ["😀", "😂", "👍", "👍🏽", "👩🏿‍💻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "❤️", "🇩🇪", "🇯🇵", "✨", "🤷‍♀️", "🥹", "🫠", "☺︎", "🧑🏻‍🤝‍🧑🏿",
              "#️⃣", "🔥🔥"],
    "numbers": ["²", "³", "¹", "½", "¼", "Ⅻ", "ⅷ", "①", "٣", "۴", "३", "๓", "𝟙", "3.14", "1,000,000", "42", "007",
                "2024-01-31", "12:30", "$9.99", "-17", "1e10", "१२३"],
    "specials": ["[CLS]", "[SEP]", "[PAD]", "[MASK]", "[UNK]", "<s>", "</s>", "<pad>", "[cls]", "[CLS", "<s", "< s>",
                 "[MASK][MASK]", "[[SEP]]", "<s><s>", "##", "##ing", "Ġ", "Ċ",
                 # the added tokens of the variants below
                 "<mask>", " <mask> ", "<|user|>", "<|user|> ", "Ġthe", "Hello World", "hello world", "HELLO  WORLD",
                 "xyz", "axyz", "xyz!", "<sep>", " <sep>",
                 # the LLM families' special and added tokens, and SentencePiece's marks
                 "<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|im_start|>", "<|im_end|>",
                 "<|endoftext|>", "<think>", "</think>", " <think> ", "<bos>", "<eos>", "<start_of_turn>",
                 "<end_of_turn>", "<unk>", "[INST]", " [/INST] ", "<0x41>", "<0xE2>", "▁", "▁▁", "▁the"],
    "contractions": ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'RE", "n't", "do not", "don't", "I'm",
                     "it's", "we'll", "they'd", "'", "''", "’s"],
    "accented": ["e\u0301", "a\u0308\u0301", "o\u0323\u0302", "q\u0307\u0323", "a\u0316\u0301\u0345\u031b",
                 "\u1100\u1161\u11a8", "A\u030a", "\u212b", "\u1e9b\u0323", "ﬃ", "ǆ", "ŉ"],
}
WEIGHTS = {"ascii": 8, "digits": 2, "ascii_punct": 3, "latin": 3, "greek": 2, "cyrillic": 2, "cjk": 3, "arabic": 2,
           "hebrew_indic_thai": 2, "marks": 2, "unicode_punct": 2, "spaces": 3, "invisible": 1, "control": 1,
           "case": 1, "emoji": 2, "numbers": 2, "specials": 2, "contractions": 2, "accented": 2, "words": 6,
           "any": 2}
SEPARATORS = ["", " ", " ", " ", "  ", "\t", "\n", " \n ", "   "]


def _any_char(rng: random.Random) -> str:
    """An assigned code point from anywhere in Unicode."""
    while True:
        c = rng.randrange(0x110000)
        if not (0xD800 <= c <= 0xDFFF or c in SKEWED) and unicodedata.category(chr(c)) != "Cn":
            return chr(c)


def _generated(rng: random.Random, words: list[str], n: int) -> list[str]:
    classes = list(WEIGHTS)
    weights = [WEIGHTS[c] for c in classes]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 10)):
            cls = rng.choices(classes, weights)[0]
            if cls == "words":
                chunk = " ".join(rng.choice(words) for _ in range(rng.randint(1, 4)))
            elif cls == "any":
                chunk = "".join(_any_char(rng) for _ in range(rng.randint(1, 4)))
            elif cls in PIECE_POOLS:
                chunk = "".join(rng.choice(PIECE_POOLS[cls]) for _ in range(rng.randint(1, 2)))
            else:
                chunk = "".join(rng.choice(CHAR_POOLS[cls]) for _ in range(rng.randint(1, 6)))
            parts.append(chunk)
            parts.append(rng.choice(SEPARATORS))
        text = "".join(parts[:-1])
        if rng.random() < 0.1:
            text = rng.choice(SEPARATORS[1:]) + text + rng.choice(SEPARATORS[1:])
        out.append(text)
    return out


def _handwritten(held: list[str]) -> list[str]:
    long_word = "supercalifragilisticexpialidocious" * 4
    return [
        "", " ", "   ", "\n", "\t \n", "\r\n", " leading", "trailing ", "  both  ", "\u3000ideographic\u3000",
        "[CLS] hi [SEP]", "[CLS]hi[SEP]", "<s>", "<s>hello</s>", "a<s>b", " <s> ", "[CLS][SEP]", "[PAD] [MASK]",
        "Hello, world!", "Don't stop: it's 5 o'clock, isn't it?", "They'll've gone; we'd... I'm sure!!!",
        "x" * 100, "x" * 101, "ab" * 60, "a" * 300, long_word, "e\u0301" * 60, "é" * 101, "日本" * 200,
        "😀" * 150, "İstanbul ΣΊΣΥΦΟΣ straße STRASSE", "Ǆemal ǅemal ǆemal", "Ⅻ ⅻ ① ½ ²", "ﬁne ﬂow ﬃ",
        "Crème brûlée à la française", "Ελληνικά κείμενα", "Русский текст", "中文文本测试", "日本語のテキスト",
        "한국어 텍스트", "العربية نص ٠١٢٣", "עברית", "हिन्दी पाठ", "ภาษาไทย", "a\u0316\u0301\u0345\u031bb",
        "\u0301start", "tab\tseparated\tvalues", "line1\nline2\r\nline3\rline4", "\x00\x01\x1f\x7f\x85\ufffd",
        "zero\u200bwidth\u200cjoin\u200dbom\ufeffsoft\u00adhyphen", "👨‍👩‍👧‍👦 family 👍🏽 thumbs 🏳️‍🌈",
        "1234567890 3.14159 1,000,000", "!!!???...,,,;;;:::", "(((nested))) [[brackets]] {{braces}}",
        "lll llll eee eeee ssss oooo ttt aaaa mmmmm", "!!!!!! ...... ------ ======", "\n\n\n\n x  \t\t y",
        "word " * 400, " ".join(held),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>",
        "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好<|im_end|>",
        "<think>\nhmm</think>\n\nOK", "<bos><start_of_turn>user\nhi<end_of_turn>", "[INST] hi [/INST]",
        "<s>[INST] hi [/INST]", "Qwen café\u0301 ﬁ Å\u0308 한\u11a8", "123456789 1.5 ١٢٣",
    ]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    sentences = builtin_sentences("calib") + builtin_sentences("heldout")
    chapters = prose.split("calib")[:24] + prose.split("heldout")[:24]
    words = sorted({w for s in sentences for w in s.split()})
    rng = random.Random(SEED)
    return sentences + chapters + _handwritten(builtin_sentences("heldout")) + _generated(rng, words, GENERATED)


# ---------------------------------------------------------------------------------------------
# the tokenizers

def _minilm() -> Path:
    return ZOO["minilm"].locate() / "tokenizer.json"


def _tinylm() -> Path:
    return ZOO["tinylm"].locate() / "tokenizer.json"


def _edited(src: Path, dst: Path, edit) -> Path:
    doc = json.loads(src.read_text(encoding="utf-8"))
    edit(doc)
    dst.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8")
    return dst


def _unpadded(doc: dict) -> None:
    doc["truncation"] = doc["padding"] = None


def _wordpiece_variant(doc: dict) -> None:
    """Bert post-processing, accents kept, extra added tokens (normalized, lstrip/rstrip, single_word)."""
    doc["normalizer"].update(strip_accents=False, handle_chinese_chars=False)
    doc["post_processor"] = {"type": "BertProcessing", "sep": ["[SEP]", 102], "cls": ["[CLS]", 101]}
    doc["decoder"]["cleanup"] = False
    doc["truncation"] = {"direction": "Left", "max_length": 40, "strategy": "OnlyFirst", "stride": 0}
    doc["padding"] = None
    for tok in doc["added_tokens"]:
        if tok["content"] == "[MASK]":
            tok.update(lstrip=True, rstrip=True)
    extra = [("Hello World", False, False, False, True, False), ("xyz", True, False, False, False, False),
             ("<sep>", False, True, False, False, True), ("é", False, False, False, True, False)]
    next_id = len(doc["model"]["vocab"])
    for content, single_word, lstrip, rstrip, normalized, special in extra:
        doc["added_tokens"].append({"id": next_id, "content": content, "single_word": single_word, "lstrip": lstrip,
                                    "rstrip": rstrip, "normalized": normalized, "special": special})
        next_id += 1


def _bpe_variant(doc: dict) -> None:
    """Lowercasing and NFD (byte-level ids show every code point they change), merges as strings, a
    Split+ByteLevel sequence with a prefix space, Roberta specials, left truncation, padding to a multiple."""
    doc["normalizer"] = {"type": "Sequence", "normalizers": [{"type": "Lowercase"}, {"type": "NFD"}]}
    gpt2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
    doc["model"]["merges"] = [" ".join(m) for m in doc["model"]["merges"]]
    doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": gpt2}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False}]}
    doc["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        {"type": "RobertaProcessing", "sep": ["</s>", 1], "cls": ["<s>", 0], "trim_offsets": True,
         "add_prefix_space": True}]}
    doc["truncation"] = {"direction": "Left", "max_length": 48, "strategy": "LongestFirst", "stride": 0}
    doc["padding"] = {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": 16, "pad_id": 2,
                      "pad_type_id": 0, "pad_token": "<pad>"}
    next_id = len(doc["model"]["vocab"])
    for content, lstrip, rstrip, special in [("<mask>", True, False, True), ("<|user|>", False, True, False),
                                              ("Ġthe", False, False, False)]:
        doc["added_tokens"].append({"id": next_id, "content": content, "single_word": False, "lstrip": lstrip,
                                    "rstrip": rstrip, "normalized": False, "special": special})
        next_id += 1


# The LLM families: each family's public pipeline (normalizer, pre-tokenizer, BPE options, decoder,
# post-processor, special and added tokens) on a small vocabulary trained here on edgec's text.

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = LLAMA3_PATTERN.replace(r"\p{N}{1,3}", r"\p{N}")  # single digits
FAMILIES = ["llama3", "qwen", "smollm", "gemma", "llama2", "mistral"]


def _training_text() -> list[str]:
    return prose.split("calib")[:24] + builtin_sentences("calib") + _handwritten([])


def _byte_level(pre_tokenizer, post_processor, normalizer=None, specials_first=(), specials_last=(), added=(),
                ignore_merges=False) -> Tokenizer:
    """GPT-2-style BPE over bytes; specials_first get the first ids (SmolLM), specials_last come after
    the vocabulary (Llama 3, Qwen)."""
    tok = Tokenizer(BPE(ignore_merges=ignore_merges))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=2000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                         special_tokens=list(specials_first), show_progress=False)
    tok.train_from_iterator(_training_text(), trainer)
    tok.add_special_tokens(list(specials_last))
    tok.add_tokens(list(added))
    tok.post_processor = post_processor(tok)
    return tok


def _bos_template(bos: str):
    return lambda tok: processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                     special_tokens=[(bos, tok.token_to_id(bos))])


def _sentencepiece_merges() -> tuple[list[str], list[tuple[str, str]]]:
    """A SentencePiece-style BPE vocabulary: words begin with U+2581, and a small alphabet leaves most
    of Unicode to byte fallback."""
    tok = Tokenizer(BPE())
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
    tok.train_from_iterator(_training_text(), BpeTrainer(vocab_size=1500, limit_alphabet=120, show_progress=False))
    model = json.loads(tok.to_str())["model"]
    return sorted(model["vocab"], key=model["vocab"].get), [tuple(m) for m in model["merges"]]


def _sentencepiece(trained, specials: list[str], normalizer, pre_tokenizer, decoder, bos: str) -> Tokenizer:
    """The specials, then the 256 byte tokens <0x00>..<0xFF>, then the trained pieces, as converted
    SentencePiece models lay them out."""
    pieces, merges = trained
    head = specials + [f"<0x{b:02X}>" for b in range(256)]
    vocab = {t: i for i, t in enumerate(head + [t for t in pieces if t not in head])}
    tok = Tokenizer(BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoder
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
    tok.post_processor = _bos_template(bos)(tok)
    return tok


def _byte_level_split(pattern: str):
    return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def _byte_level_post(tok: Tokenizer):
    return processors.ByteLevel(trim_offsets=False)


def _families() -> dict[str, Tokenizer]:
    chatml = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trained = _sentencepiece_merges()
    sp_decoder = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    return {
        # tiktoken-converted: ignore_merges, a Split with its own regex, <|begin_of_text|> first
        "llama3": _byte_level(
            _byte_level_split(LLAMA3_PATTERN), ignore_merges=True,
            specials_last=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                           "<|eot_id|>"],
            post_processor=lambda tok: processors.Sequence([_byte_level_post(tok),
                                                             _bos_template("<|begin_of_text|>")(tok)])),
        # Qwen2 and Qwen3: NFC first; Qwen3's <think> tags are added tokens that are not special
        "qwen": _byte_level(
            _byte_level_split(QWEN2_PATTERN), normalizer=normalizers.NFC(), specials_last=chatml,
            added=[AddedToken(t, normalized=False, special=False) for t in ("<think>", "</think>")],
            post_processor=_byte_level_post),
        # SmolLM: each digit alone, then GPT-2's byte-level split
        "smollm": _byte_level(
            pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                     pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
            specials_first=chatml, post_processor=_byte_level_post),
        # Gemma: spaces become the mark, none is prepended (its Split on " " finds no space left)
        "gemma": _sentencepiece(
            trained, ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
            normalizers.Replace(" ", "▁"), pre_tokenizers.Split(" ", "merged_with_previous"),
            decoders.Sequence(sp_decoder), "<bos>"),
        # Llama 2 (legacy): a prefix mark on every text between added tokens
        "llama2": _sentencepiece(
            trained, ["<unk>", "<s>", "</s>"],
            normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")]), None,
            decoders.Sequence(sp_decoder + [decoders.Strip(" ", 1, 0)]), "<s>"),
        # Mistral (and non-legacy Llama): Metaspace, the prefix mark only at the very start
        "mistral": _sentencepiece(
            trained, ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], None,
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False),
            decoders.Sequence(sp_decoder + [decoders.Strip(" ", 1, 0)]), "<s>"),
    }


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """name -> (tokenizer.json, extra flags for the tool)."""
    tmp = tmp_path_factory.mktemp("tokenizers")
    bundle = tmp / "bundle.json"
    # as `edgec` writes a text bundle's tokenizer (SentenceEmbedding.bundle)
    fixed_length(load_tokenizer(_minilm().parent), 128).save(str(bundle))
    minilm, tinylm = _minilm(), _tinylm()
    families = {}
    for name, tok in _families().items():
        tok.save(str(tmp / f"{name}.json"))
        families[name] = (tmp / f"{name}.json", [])
        # without the post-processor's tokens, special tokens kept in the decode
        families[f"{name}-raw"] = (tmp / f"{name}.json", ["--no-special", "--keep-special"])
    return families | {
        "minilm": (minilm, []),
        "minilm-bundle": (bundle, []),
        "minilm-unpadded": (_edited(minilm, tmp / "unpadded.json", _unpadded), []),
        "minilm-variant": (_edited(minilm, tmp / "wp_variant.json", _wordpiece_variant), ["--keep-special"]),
        "minilm-variant-no-special": (tmp / "wp_variant.json", ["--no-special"]),
        "tinylm": (tinylm, []),
        "tinylm-variant": (_edited(tinylm, tmp / "bpe_variant.json", _bpe_variant), ["--keep-special"]),
        "tinylm-variant-no-special": (tmp / "bpe_variant.json", ["--no-special"]),
    }


@pytest.fixture(scope="module")
def tool(tmp_path_factory) -> Path:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ is not installed: the native tokenizer is C++17 (apt-get install g++)")
    # `make test` installs Oniguruma, the regex engine the tokenizer links (as `tokenizers` does)
    probe = subprocess.run([cxx, "-E", "-x", "c++", "-"], input="#include <oniguruma.h>\n", capture_output=True,
                           text=True)
    if probe.returncode != 0:
        pytest.skip("Oniguruma is not installed: the native tokenizer links it (apt-get install libonig-dev)")
    out = tmp_path_factory.mktemp("native")
    flags = ["-std=c++17", "-O2", "-Wall", "-Wextra", "-Werror", f"-I{DESKTOP / 'src'}"]
    objects = [out / (src.stem + ".o") for src in SOURCES]
    # the units in parallel: the compile is most of this file's time
    jobs = [subprocess.Popen([cxx, *flags, "-c", str(src), "-o", str(obj)], stderr=subprocess.PIPE, text=True)
            for src, obj in zip(SOURCES, objects)]
    errors = [job.communicate()[1] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), "".join(errors)
    binary = out / "edgec-tokenize"
    link = subprocess.run([cxx, *map(str, objects), "-lonig", "-o", str(binary)], capture_output=True, text=True)
    assert link.returncode == 0, link.stderr
    return binary


# ---------------------------------------------------------------------------------------------

def _run(tool: Path, path: Path, flags: list[str], texts: list[str]) -> list[tuple[list[int], list[int], str]]:
    stdin = "".join(json.dumps(t) + "\n" for t in texts)
    r = subprocess.run([str(tool), str(path), "--decode", *flags], input=stdin.encode(), capture_output=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr.decode()
    rows = []
    for line in r.stdout.decode("utf-8").split("\n")[:-1]:
        ids, mask, decoded = line.split(" | ", 2)
        rows.append(([int(x) for x in ids.split()], [int(x) for x in mask.split()], json.loads(decoded)))
    return rows


def _short(value, n: int = 160) -> str:
    s = repr(value)
    return s if len(s) <= n else s[:n] + "..."


@pytest.mark.parametrize("name", ["minilm", "minilm-bundle", "minilm-unpadded", "minilm-variant",
                                  "minilm-variant-no-special", "tinylm", "tinylm-variant",
                                  "tinylm-variant-no-special", *FAMILIES, *(f"{f}-raw" for f in FAMILIES)])
def test_matches_tokenizers(name, tool, tokenizers, texts):
    path, flags = tokenizers[name]
    add_special, skip_special = "--no-special" not in flags, "--keep-special" not in flags
    ref = Tokenizer.from_file(str(path))
    # one at a time: a batch pads to its longest member under BatchLongest padding
    expected = [ref.encode(t, add_special_tokens=add_special) for t in texts]
    decoded = ref.decode_batch([e.ids for e in expected], skip_special_tokens=skip_special)
    got = _run(tool, path, flags, texts)
    assert len(got) == len(texts)
    bad = []
    for text, e, d, (ids, mask, dec) in zip(texts, expected, decoded, got):
        for field, want, have in (("ids", e.ids, ids), ("attention_mask", e.attention_mask, mask), ("decode", d, dec)):
            if want != have:
                bad.append(f"{field} of {_short(text)}:\n    tokenizers {_short(want)}\n    edgec      {_short(have)}")
                break
    assert not bad, f"{len(bad)} of {len(texts)} strings differ, the first:\n" + "\n".join(bad[:5])


def test_decode_of_any_ids(tool, tokenizers):
    """Id sequences encode never gives: unknown ids, stray special tokens, word pieces first, byte
    tokens that split or break UTF-8 (decoded lossily)."""
    rng = random.Random(SEED)
    for name, flags in (("minilm", []), ("minilm-variant", ["--keep-special"]), ("tinylm", []),
                        ("tinylm-variant", ["--keep-special"]), *((f, []) for f in FAMILIES),
                        *((f, ["--keep-special"]) for f in FAMILIES)):
        path = tokenizers[name][0]
        ref = Tokenizer.from_file(str(path))
        size = ref.get_vocab_size(with_added_tokens=True)
        specials = [ref.token_to_id(t) for t in ("[CLS]", "[SEP]", "[PAD]", "<s>", "</s>", "<pad>", "<bos>",
                                                 "<|begin_of_text|>", "<|im_start|>", "<think>")]
        picks = [[rng.choice([rng.randrange(size), rng.randrange(size), rng.randrange(300), size + rng.randrange(9),
                              rng.choice([i for i in specials if i is not None])])
                  for _ in range(rng.randint(0, 24))] for _ in range(400)]
        r = subprocess.run([str(tool), str(path), "--decode-ids", *flags], input="".join(f"{p}\n" for p in picks),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        got = [json.loads(line) for line in r.stdout.splitlines()]
        want = ref.decode_batch(picks, skip_special_tokens="--keep-special" not in flags)
        bad = [f"{ids}: tokenizers {w!r}, edgec {g!r}" for ids, w, g in zip(picks, want, got) if w != g]
        assert len(got) == len(picks) and not bad, f"{name}: {len(bad)} decodes differ, the first:\n" + "\n".join(bad[:5])


def test_vocab_size(tool, tokenizers):
    for name in ("minilm", "tinylm", "minilm-variant", "tinylm-variant", *FAMILIES):
        path, _ = tokenizers[name]
        r = subprocess.run([str(tool), str(path), "--vocab-size"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert int(r.stdout) == Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True), name


def test_unsupported_and_bad_input_fail_in_one_line(tool, tmp_path):
    unigram = tmp_path / "tokenizer.json"
    unigram.write_text(json.dumps({"version": "1.0", "model": {"type": "Unigram", "vocab": [["a", 0.0]]}}))
    r = subprocess.run([str(tool), str(unigram)], input="", capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr == f"edgec-tokenize: {unigram}: model type 'Unigram' is not supported (WordPiece and BPE are)\n"

    broken = tmp_path / "broken.json"
    broken.write_text('{"model": {"type": "BPE",\n  "vocab": {"a": 0,}}}')
    r = subprocess.run([str(tool), str(broken)], input="", capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert f"{broken}: line 2, column 20: expected a string key" in r.stderr

    # a part these pipelines never use, and a pattern the regex engine refuses: one line naming it
    for part, value, words in (
            ("normalizer", {"type": "NFKC"}, "normalizer type 'NFKC' is not supported"),
            ("pre_tokenizer", {"type": "Split", "pattern": {"Regex": "(a"}, "behavior": "Isolated", "invert": False},
             "pre_tokenizer Split Regex '(a' does not compile"),
            ("decoder", {"type": "CTC"}, "decoder type 'CTC' is not supported")):
        path = _edited(_tinylm(), tmp_path / f"{part}.json", lambda doc, p=part, v=value: doc.update({p: v}))
        r = subprocess.run([str(tool), str(path)], input="", capture_output=True, text=True)
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr

    r = subprocess.run([str(tool), str(_minilm())], input='"\\ud800"\n', capture_output=True, text=True)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "surrogate" in r.stderr
