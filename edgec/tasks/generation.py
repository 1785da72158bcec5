"""Text generation with a decoder-only LM: perplexity on held-out text, tokens per second.

Data is token windows. Calibration and pruning read windows of the
calibration text (the built-in prose's calibration chapters unless --calib
names a file); perplexity is measured on windows of held-out chapters the
built-in model never trained on; prompts for golden outputs and speed come
from held-out chapters too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

from edgec.calibration import prose
from edgec.calibration.source import calibration_texts
from edgec.errors import InputError
from edgec.models.hf_decoder import static_positions
from edgec.models.special_ids import eos_ids, num_bos
from edgec.tasks.base import Feed, Feeds, Outputs, Task

SIMULATOR_TOKENS = 2048  # held-out tokens scored on a simulator: about half a second per 32-token chunk
EVAL_TOKENS = 8192  # held-out tokens scored by default (recipe eval_samples: windows): a stable perplexity
DEFAULT_CONTEXT = 512
GOLDEN_PROMPTS, GOLDEN_TOKENS = 3, 16
PROMPT_TOKENS = 64  # the speed prompt
PROBE_TOKENS = 64  # the load-time check that the rebuild computes what transformers computes


def context(config, recipe) -> int:
    """The static KV-cache length: what the exported programs can attend over."""
    return recipe.context or min(static_positions(config), DEFAULT_CONTEXT)


def window(config, recipe) -> int:
    """Tokens per calibration and perplexity window: the whole context, so every position an artifact
    serves is calibrated and scored (recipe seq_len makes them shorter)."""
    return min(recipe.seq_len or context(config, recipe), context(config, recipe))


def _windows(ids: np.ndarray, length: int, limit: int | None = None) -> list[Feed]:
    n = len(ids) // length if limit is None else min(limit, len(ids) // length)
    return [{"input_ids": ids[i * length:(i + 1) * length][None].astype(np.int64)} for i in range(n)]


def _stream(tokenizer, texts: list[str], eos: int | None) -> np.ndarray:
    tail = [eos] if eos is not None else []
    return np.concatenate([np.asarray(e.ids + tail, np.int64) for e in tokenizer.encode_batch(texts)])


class TextGeneration(Task):
    name = "text-generation"
    kind = "causal-lm"
    simulator_eval_samples = 4  # windows of a 512-token context: SIMULATOR_TOKENS

    def simulator_windows(self, config, recipe) -> int:
        """Held-out windows scored on a simulator: SIMULATOR_TOKENS tokens' worth, at least one."""
        return max(1, SIMULATOR_TOKENS // window(config, recipe))

    export_job = "lm"  # measured through each engine's own generation loop

    def tokens(self, config, recipe) -> int:
        return window(config, recipe)

    def budget_size(self, config, recipe) -> int:
        return window(config, recipe)

    def check(self, config, recipe) -> None:
        if recipe.token_budget is not None:
            raise InputError("--token-budget drops input tokens of encoders; decoders keep every token: "
                             "remove it")
        if recipe.soc is not None:
            raise InputError("--soc precompiles encoder graphs; language models are not offered it yet: remove it")
        if recipe.prune is not None and (recipe.prune.refit or recipe.prune.prune_layers):
            raise InputError("refit and prune_layers are encoder-only pruning settings: remove them")
        ctx, positions = context(config, recipe), static_positions(config)
        if ctx > positions:
            raise InputError(f"context {ctx} is longer than the model's {positions} positions: give {positions} "
                             "or less")
        if recipe.prefill_chunk is not None and recipe.prefill_chunk > ctx:
            raise InputError(f"prefill_chunk {recipe.prefill_chunk} is longer than the context {ctx}: make it "
                             "smaller")

    def attach(self, model) -> dict[str, torch.Tensor]:
        from tokenizers import Tokenizer

        path = model.source_dir / "tokenizer.json"
        if not path.is_file():
            raise InputError(f"{model.source_dir} has no tokenizer.json: save the model's fast tokenizer "
                             "there (tokenizer.save_pretrained(dir))")
        try:
            model.tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises its own exception type
            raise InputError(f"{path} cannot be read ({str(e).splitlines()[0][:120]}): re-save the tokenizer") from None
        if model.tokenizer.get_vocab_size() > model.config.vocab_size:
            raise InputError(f"{path} has {model.tokenizer.get_vocab_size()} tokens but the model only "
                             f"{model.config.vocab_size}: it belongs to another model")
        model.config.eos_token_id = eos_ids(model.config, model.source_dir)
        # real text at a seeded place in the held-out chapters: what the rebuilt model must reproduce
        ids = _stream(model.tokenizer, prose.split("heldout")[:4], None)
        n = min(PROBE_TOKENS, static_positions(model.config))  # LongRoPE's static table: its original length
        start = int(np.random.default_rng(0).integers(0, max(len(ids) - n, 1)))
        return {"input_ids": torch.from_numpy(ids[start:start + n][None].copy())}

    def feeds(self, model, calib: Path | None, recipe) -> Feeds:
        cfg, tok = model.config, model.tokenizer
        eos = (eos_ids(cfg, model.source_dir) or [None])[0]
        length = window(cfg, recipe)
        texts = prose.split("calib") if calib is None else calibration_texts(calib, 10 ** 9)
        if not texts:
            raise InputError(f"calibration file {calib} holds no text: give at least one line")
        calib_ids = _stream(tok, texts, eos)
        pool = _windows(calib_ids, length)
        if not pool:
            raise InputError(f"calibration text {calib} has fewer than {length} tokens: give more text")
        held_texts = prose.split("heldout")
        held = _windows(_stream(tok, held_texts, eos), length, recipe.eval_samples or max(1, EVAL_TOKENS // length))
        room = max(1, min(PROMPT_TOKENS, context(cfg, recipe) - GOLDEN_TOKENS))  # the golden tokens must fit
        prompts = [tok.encode(t).ids[:room] for t in held_texts[:GOLDEN_PROMPTS]]
        bench_prompt = tok.encode(held_texts[-1]).ids[:room]
        source = "the built-in calibration chapters" if calib is None else str(calib)
        return Feeds(pool[:recipe.calib_samples], held, None,
                     f"{min(len(pool), recipe.calib_samples)} windows of {length} tokens from {source}",
                     f"{len(held)} windows of {length} tokens of {len(held_texts)} held-out chapters of the "
                     "built-in prose (the King James Bible)",
                     {f"prompt ({len(bench_prompt)} tokens)": {"input_ids": np.asarray([bench_prompt], np.int64)}},
                     pool[:recipe.prune_calib_samples],
                     [{"input_ids": np.asarray([p], np.int64)} for p in prompts],
                     {"texts": np.array([tok.decode(p) for p in prompts])})

    def output_names(self, module: torch.nn.Module) -> list[str]:
        return ["logits"]

    def metric_name(self, feeds: Feeds) -> str:
        return "perplexity on held-out text (lower is better)"

    def metric(self, reference: list[Outputs], candidate: list[Outputs], feeds: Feeds) -> dict:
        """Perplexity of the candidate's logits on the eval windows (the reference is not needed)."""
        return perplexity([window_nll(out[0], feed) for out, feed in zip(candidate, feeds.eval)])

    def bundle(self, model, recipe, output_names: list[str], work: Path) -> dict:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (model.source_dir / name).is_file() and not (work / name).exists():
                shutil.copy(model.source_dir / name, work / name)
        return {"tokenizer": {"path": "tokenizer.json"}, "generation": self.generation_info(model, recipe)}

    def generation_info(self, model, recipe) -> dict:
        """What every engine's loop needs beside the weights: special ids, how many BOS ids go before a
        prompt's ids, and the static context."""
        config = model.config
        return {"bos_token_id": config.bos_token_id, "eos_token_ids": eos_ids(config, model.source_dir),
                "num_bos": num_bos(model.tokenizer, config, model.source_dir),
                "pad_token_id": config.pad_token_id, "context_length": context(config, recipe),
                "vocab_size": config.vocab_size}

    def user_input(self, bundle: Path, manifest: dict, text: str | None, image: Path | None) -> Feed:
        raise InputError(f"{bundle} holds a language model: run it with edgec generate {bundle} --prompt \"...\"")

    def describe(self, outputs: Outputs, feed: Feed, manifest: dict) -> list[str]:
        return [f"next token: {int(np.argmax(outputs[0].reshape(-1, outputs[0].shape[-1])[-1]))}"]

    def agreement(self, expected: Outputs, got: Outputs, feed: Feed, manifest: dict) -> tuple[str, bool]:
        same = np.array_equal(np.asarray(expected[0]).ravel(), np.asarray(got[0]).ravel())
        return ("greedy tokens identical" if same else "greedy tokens differ"), same


def window_nll(logits: np.ndarray, feed: Feed) -> tuple[float, int]:
    """A window's summed next-token negative log-likelihood and the tokens it scores: each window is
    reduced as it is scored, so no list of [tokens, vocab] logits is ever kept."""
    logits, ids = logits.reshape(-1, logits.shape[-1])[:-1], feed["input_ids"].reshape(-1)[1:]
    nll = 0.0
    for a in range(0, len(ids), 64):  # float64 rows a block at a time: a big vocabulary stays small
        z = logits[a:a + 64].astype(np.float64)
        top = z.max(-1)
        logz = top + np.log(np.exp(z - top[:, None]).sum(-1))
        nll += float((logz - z[np.arange(len(z)), ids[a:a + 64]]).sum())
    return nll, len(ids)


def perplexity(parts: list[tuple[float, int]]) -> dict:
    nll, count = sum(n for n, _ in parts), sum(c for _, c in parts)
    return {"value": float(np.exp(nll / count)), "tokens": count, "samples": len(parts)}
