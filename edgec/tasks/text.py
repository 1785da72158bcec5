"""Sentence embeddings from a text encoder: mean pooling over the real (or kept) tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgec.calibration.source import calibration_texts
from edgec.calibration.text import builtin_sentences, encode_fixed, fixed_length
from edgec.errors import InputError
from edgec.passes.token_budget import SPECIALS
from edgec.tasks.base import Feed, Feeds, Outputs, Task, pool_size, rows
from edgec.tasks.metrics import cosine, pooled

DEFAULT_SEQ_LEN = 128
GOLDEN_SENTENCES = 3


def seq_len(recipe) -> int:
    return recipe.seq_len or DEFAULT_SEQ_LEN


def pooling_mask(output_names: list[str]) -> str:
    """A token-budget model returns the mask of the tokens it kept: pooling over the input mask
    would average positions that no longer hold those tokens."""
    return "kept_mask" if "kept_mask" in output_names else "attention_mask"


def embedding(outputs: Outputs, feed: Feed) -> np.ndarray:
    mask = outputs[1] if len(outputs) > 1 else feed["attention_mask"]
    return pooled(outputs[0], mask)


class SentenceEmbedding(Task):
    name = "feature-extraction"
    kind = "text"
    simulator_eval_samples = 32

    def tokens(self, config, recipe) -> int:
        return seq_len(recipe) - SPECIALS

    def budget_size(self, config, recipe) -> int:
        return seq_len(recipe)

    def check(self, config, recipe) -> None:
        s, positions = seq_len(recipe), config.max_position_embeddings
        if s > positions:
            raise InputError(f"--seq-len {s} is longer than the model's {positions} position embeddings: "
                             f"give --seq-len {positions} or less")
        super().check(config, recipe)

    def attach(self, model) -> dict[str, torch.Tensor]:
        from edgec.calibration.text import load_tokenizer

        model.tokenizer = load_tokenizer(model.source_dir)
        return {"input_ids": torch.randint(5, model.config.vocab_size, (1, 16)),
                "attention_mask": torch.tensor([[1] * 12 + [0] * 4])}

    def feeds(self, model, calib: Path | None, recipe) -> Feeds:
        pool = calibration_texts(calib, pool_size(recipe))
        if not pool:
            raise InputError(f"calibration file {calib} holds no samples: give at least one, one per line")
        texts = pool[:recipe.calib_samples]
        held = builtin_sentences("heldout")[:recipe.eval_samples]
        tok = fixed_length(model.tokenizer, seq_len(recipe))
        enc = lambda t: rows(encode_fixed(tok, t))
        calib_rows, eval_rows = enc(texts), enc(held)
        # the export example must have padding, or a tracer may drop the mask (DESIGN: silent trap)
        calib_rows.sort(key=lambda f: int(f["attention_mask"].sum()) == seq_len(recipe))
        lengths = [int(f["attention_mask"].sum()) for f in eval_rows]
        order = np.argsort(lengths, kind="stable")
        typical = eval_rows[int(order[len(order) // 2])]
        full = enc([" ".join(held)])[0]
        # golden inputs: the shortest, a typical and the longest held-out sentence
        picks = sorted({int(order[0]), int(order[len(order) // 2]), int(order[-1])})[:GOLDEN_SENTENCES]
        return Feeds(calib_rows, eval_rows, None,
                     f"{len(texts)} sentences from {calib or 'the built-in calibration set'}",
                     f"{len(held)} built-in held-out sentences",
                     {f"typical ({int(typical['attention_mask'].sum())} tokens)": typical,
                      f"full ({seq_len(recipe)} tokens)": full}, enc(pool),
                     [eval_rows[i] for i in picks], {"texts": np.array([held[i] for i in picks])})

    def output_names(self, module: torch.nn.Module) -> list[str]:
        from edgec.passes.token_budget import TextTokenBudget

        return ["last_hidden_state", "kept_mask"] if isinstance(module, TextTokenBudget) else ["last_hidden_state"]

    def metric_name(self, feeds: Feeds) -> str:
        return "pooled sentence-embedding cosine to float"

    def metric(self, reference: list[Outputs], candidate: list[Outputs], feeds: Feeds) -> dict:
        pairs = [(embedding(r, f), embedding(c, f)) for r, c, f in zip(reference, candidate, feeds.eval)]
        cs = [cosine(a, b) for a, b in pairs]
        return {"value": float(np.mean(cs)), "min": float(np.min(cs)), "samples": len(cs),
                "max_abs_diff": float(max(np.abs(a - b).max() for a, b in pairs))}

    def bundle(self, model, recipe, output_names: list[str], work: Path) -> dict:
        (work / "tokenizer").mkdir()
        tok = fixed_length(model.tokenizer, seq_len(recipe))
        tok.save(str(work / "tokenizer" / "tokenizer.json"))
        return {"tokenizer": {"path": "tokenizer/tokenizer.json", "max_length": seq_len(recipe),
                              "padding": "right", "truncation": True,
                              "pad_token_id": tok.padding["pad_id"]},
                "pooling": {"method": "mean", "output": output_names[0], "mask": pooling_mask(output_names)}}

    def user_input(self, bundle: Path, manifest: dict, text: str | None, image: Path | None) -> Feed:
        from tokenizers import Tokenizer

        if text is None:
            raise InputError("this bundle embeds text: give --text \"...\"")
        tok = Tokenizer.from_file(str(bundle / manifest["tokenizer"]["path"]))
        return encode_fixed(tok, [text])

    def describe(self, outputs: Outputs, feed: Feed, manifest: dict) -> list[str]:
        e = embedding(outputs, feed)[0]
        tokens = int((outputs[1] if len(outputs) > 1 else feed["attention_mask"]).sum())
        head = ", ".join(f"{v:+.4f}" for v in e[:8])
        return [f"sentence embedding: {e.size} dims, L2 norm {np.linalg.norm(e):.4f}, "
                f"mean of {tokens} token vectors ({manifest['pooling']['mask']})",
                f"first values: [{head}, ...]"]

    def agreement(self, expected: Outputs, got: Outputs, feed: Feed, manifest: dict) -> tuple[str, bool]:
        c = cosine(embedding(expected, feed), embedding(got, feed))
        return f"pooled cosine {c:.6f}", c >= 0.9999
