"""Model inputs for one export: an example, calibration samples and held-out samples.

Held-out data never overlaps calibration data: the zoo ships disjoint splits,
and a user's calibration file is only ever used to calibrate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgec.calibration.source import calibration_images, calibration_texts
from edgec.calibration.text import builtin_sentences, encode
from edgec.errors import InputError
from edgec.toolchain.load import LoadedModel
from edgec.toolchain.recipe import Recipe

Feed = dict[str, np.ndarray]


@dataclass
class Feeds:
    calib: list[Feed]
    eval: list[Feed]
    labels: np.ndarray | None  # image models with a labelled held-out split
    calib_source: str
    eval_source: str
    bench: dict[str, Feed]  # named latency inputs
    prune_calib: list[Feed]  # the calibration samples and more of the same source, for pruning

    @property
    def example(self) -> Feed:
        return self.calib[0]


def _rows(batch: dict[str, np.ndarray]) -> list[Feed]:
    n = len(next(iter(batch.values())))
    return [{k: v[i:i + 1] for k, v in batch.items()} for i in range(n)]


def _pool_size(recipe: Recipe) -> int:
    pruning = recipe.prune is not None and recipe.prune.ratio > 0
    return max(recipe.calib_samples, recipe.prune_calib_samples if pruning else 0)


def _text_feeds(model: LoadedModel, calib: Path | None, recipe: Recipe) -> Feeds:
    pool = calibration_texts(calib, _pool_size(recipe))
    if not pool:
        raise InputError(f"calibration file {calib} holds no samples: give at least one, one per line")
    texts = pool[:recipe.calib_samples]
    held = builtin_sentences("heldout")[:recipe.eval_samples]
    enc = lambda t: _rows(encode(model.tokenizer, t, recipe.seq_len))
    calib_rows, eval_rows = enc(texts), enc(held)
    # the export example must have padding, or a tracer may drop the mask (DESIGN: silent trap)
    calib_rows.sort(key=lambda f: int(f["attention_mask"].sum()) == recipe.seq_len)
    lengths = [int(f["attention_mask"].sum()) for f in eval_rows]
    typical = eval_rows[int(np.argsort(lengths)[len(lengths) // 2])]
    full = enc([" ".join(held)])[0]
    return Feeds(calib_rows, eval_rows, None,
                 f"{len(texts)} sentences from {calib or 'the built-in calibration set'}",
                 f"{len(held)} built-in held-out sentences",
                 {f"typical ({int(typical['attention_mask'].sum())} tokens)": typical,
                  f"full ({recipe.seq_len} tokens)": full}, enc(pool))


def _image_feeds(model: LoadedModel, calib: Path | None, recipe: Recipe) -> Feeds:
    n_pool = _pool_size(recipe)
    images = calibration_images(calib, n_pool, model.preprocess_file)
    labels, eval_source = None, ""
    if model.name == "vit-digits" and model.zoo:
        from edgec.calibration.digits import load_digits_split
        if images is None:
            images = load_digits_split("calib")[0][:n_pool]
        held, labels = load_digits_split("test")
        eval_source = f"{len(held)} digits test-split images (labelled)"
    elif images is None:
        raise InputError(f"model {model.name} has no built-in calibration images: give --calib FOLDER")
    else:
        held = images  # no labelled held-out set: agreement with float on these images
        eval_source = f"{len(held)} calibration images (no held-out set given): agreement with float"
    pool = _rows({"pixel_values": images.astype(np.float32)})
    calib_rows, eval_rows = pool[:recipe.calib_samples], _rows({"pixel_values": held.astype(np.float32)})
    return Feeds(calib_rows, eval_rows, labels,
                 f"{len(calib_rows)} images from {calib or 'the built-in calibration split'}",
                 eval_source, {"one image": eval_rows[0]}, pool)


def build_feeds(model: LoadedModel, calib: Path | None, recipe: Recipe) -> Feeds:
    return (_text_feeds if model.kind == "text" else _image_feeds)(model, calib, recipe)
