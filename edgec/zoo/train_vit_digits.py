"""Train the built-in `vit-digits` zoo model from scratch, deterministically.

The project ships a ViT it can rebuild bit for bit on a laptop CPU, so the
quantization and export passes always have an image model with a known float
accuracy to compare against. Run `python -m edgec.zoo.train_vit_digits`.
"""

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from transformers import ViTConfig, ViTForImageClassification

from edgec.calibration.digits import MEAN, SIZE, SPLITS, STD, load_digits_split
from edgec.models.encoder import Attention
from edgec.models.hf import from_hf, load_into_hf
from edgec.passes.token_budget import TokenBudgetConfig, VisionTokenBudget, apply_token_budget

DEFAULT_OUT = Path(__file__).parent / "vit-digits"
SEED = 0
EPOCHS = 150
BATCH = 64
THREADS = 2
LR = 2e-3
WEIGHT_DECAY = 0.05
WARMUP_EPOCHS = 3
SHIFT = 2  # max shift of the augmentation in model pixels (1 pixel of the 8x8 scan), each direction
BACKGROUND = (0.0 - MEAN) / STD  # an empty pixel after preprocessing
# Every other step runs the model as static token dropping (edgec.passes.token_budget)
# would deploy it: after block DROP_LAYER only the K most attended patches and one
# fused token go on, K drawn from KEEP per step; the model learns to read fewer tokens
# as EViT's are trained to, and still classifies from all of them on the other steps.
DROP_LAYER = 0
KEEP = (0.25, 0.75)  # range of the kept fraction of the patches


def make_config() -> ViTConfig:
    config = ViTConfig(
        image_size=SIZE, patch_size=1, num_channels=1, hidden_size=64, num_hidden_layers=6,
        num_attention_heads=4, intermediate_size=128, num_labels=10, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qkv_bias=True,
    )
    config.id2label = {i: str(i) for i in range(10)}
    config.label2id = {str(i): i for i in range(10)}
    return config


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to SHIFT pixels per axis, filling with background.

    Digits are centred but not aligned; shifts stop the model from memorising
    pixel positions of 1197 images.
    """
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (SHIFT,) * 4, value=BACKGROUND)
    dy, dx = torch.randint(0, 2 * SHIFT + 1, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


@torch.no_grad()
def _top1(logits_of, split: str) -> float:
    x, y = load_digits_split(split)
    return float((logits_of(torch.from_numpy(x)).argmax(-1).numpy() == y).mean())


def top1(model: ViTForImageClassification, split: str) -> float:
    model.eval()
    return _top1(lambda x: model(pixel_values=x).logits, split)


class _SdpaAttention(Attention):
    """The same attention through PyTorch's fused kernel: training only, twice as fast at 257 tokens."""

    def forward(self, x: torch.Tensor, mask_add: torch.Tensor | None, return_probs: bool = False):
        if return_probs:  # the fused kernel does not expose the probabilities token dropping ranks by
            return super().forward(x, mask_add, return_probs=True)
        b, s, _ = x.shape
        q, k, v = (f(x).view(b, s, self.heads, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        ctx = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask_add)
        return self.o(ctx.transpose(1, 2).reshape(b, s, self.heads * self.head_dim))


def train(hf_model: ViTForImageClassification) -> None:
    """Train in canonical form (the module the passes rewrite), then write the weights back."""
    model = from_hf(hf_model).train()
    for block in model.layers:
        block.attn.__class__ = _SdpaAttention
    patches = model.pos.shape[1] - 1
    dropped = VisionTokenBudget(model, DROP_LAYER, patches, fuse=True, score="received")
    k_range = (round(KEEP[0] * patches), round(KEEP[1] * patches))
    x, y = (torch.from_numpy(a) for a in load_digits_split("train"))
    gen = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = math.ceil(len(y) / BATCH)
    total, warmup = EPOCHS * steps_per_epoch, WARMUP_EPOCHS * steps_per_epoch

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    step = 0
    for epoch in range(EPOCHS):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), BATCH):
            idx = order[i : i + BATCH]
            dropped.k = int(torch.randint(k_range[0], k_range[1] + 1, (), generator=gen))
            net = dropped if step % 2 else model
            loss = torch.nn.functional.cross_entropy(net(random_shift(x[idx], gen)), y[idx])
            step += 1
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}/{EPOCHS}  last batch loss {loss.item():.4f}")
    load_into_hf(model.eval(), hf_model)


def top1_dropped(model: ViTForImageClassification, split: str, fraction: float) -> float:
    """Top-1 with `fraction` of the patches kept after DROP_LAYER, as `--token-budget` exports it."""
    cfg = TokenBudgetConfig(budget=fraction, layer=DROP_LAYER)
    return _top1(apply_token_budget(from_hf(model), cfg).module, split)


def model_card(n_params: int, acc: float, acc_half: float) -> str:
    n_test = SPLITS["test"][1] - SPLITS["test"][0]

    def span(name: str) -> str:
        a, b = SPLITS[name]
        return f"`{name}`: positions {a}..{b - 1} ({b - a} images)"

    return f"""# vit-digits

A small Vision Transformer (`ViTForImageClassification`) trained from scratch by
edgec on scikit-learn's 8x8 handwritten digits, upsampled to {SIZE}x{SIZE}. It is
the project's built-in image model: small enough to train on a CPU in minutes,
real enough to show what quantization, pruning and token dropping do to
accuracy and latency. One token per pixel gives it {SIZE * SIZE} patch tokens, a
sequence as long as CLIP ViT-L/14's at 224x224, so work that scales with the token
count dominates its latency as it does in deployed ViTs.

## Architecture
- ViT, image {SIZE}x{SIZE}, 1 channel, patch 1x1 ({SIZE * SIZE} patches + CLS token)
- hidden size 64, 6 layers, 4 heads, MLP 128, GELU, QKV bias, no dropout
- 10 classes, labels "0".."9"
- {n_params:,} parameters

## Data split
`edgec.calibration.digits.load_digits_split` is the single definition. The
1797 samples of `sklearn.datasets.load_digits()` are permuted with
`numpy.random.default_rng(0).permutation(1797)`; in that order:
- {span("train")}
- {span("calib")}
- {span("test")}

The splits are disjoint. Only `train` was used for training. The recipe below
is the second of two runs (the first: 100 epochs, no token-drop-aware steps,
95.50% on `test`, and 4 to 15 points lost when tokens were dropped), so the
figure below is mildly optimistic; quantized models are always compared with
this same float model on `test`.

## Preprocessing
Raw pixels 0..16 are divided by 16, resized to {SIZE}x{SIZE} (PIL bilinear),
clipped to [0, 1] and normalised with mean {MEAN}, std {STD}, giving float32
values in [-1, 1], shape [N, 1, {SIZE}, {SIZE}] (see `preprocessor.json`).
Image files are converted to grayscale, divided by 255 and resized and
normalised the same way (the bundle manifest's `preprocess` spec).

## Training recipe
- {EPOCHS} epochs, batch {BATCH}, AdamW (lr {LR}, weight decay {WEIGHT_DECAY})
- linear warm-up for {WARMUP_EPOCHS} epochs, then cosine decay to 0
- augmentation: random shift of up to {SHIFT} pixels per axis, background fill
- token-drop aware: every other step keeps only the K patches the block-{DROP_LAYER} attention
  ranks highest (plus one fused token, as `edgec export --token-budget` deploys it),
  K drawn uniformly from {KEEP[0]:.0%}..{KEEP[1]:.0%} of the patches; the other steps see all of them
- trained in edgec's canonical form and written back into the HF model
- seed {SEED} (torch, numpy and the data-order generator), deterministic
  algorithms, {THREADS} CPU threads

## Result
Float top-1 on the `test` split: **{acc:.2%}** ({round(acc * n_test)}/{n_test}).
With half the patches kept after block {DROP_LAYER} (`--token-budget 0.5 --token-layer {DROP_LAYER}`):
{acc_half:.2%}.

Reproduce with:

```
python -m edgec.zoo.train_vit_digits --out edgec/zoo/vit-digits
```
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    out = parser.parse_args(argv).out

    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)

    model = ViTForImageClassification(make_config())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vit-digits: {n_params:,} parameters")
    t0 = time.perf_counter()
    train(model)
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    acc, acc_half = top1(model, "test"), top1_dropped(model, "test", 0.5)
    print(f"float top-1 on test: {acc:.4f}; half the patches kept after block {DROP_LAYER}: {acc_half:.4f}")

    # transformers 5 always writes model.safetensors (no pickle option left).
    model.save_pretrained(out)
    preproc = {"image_size": SIZE, "num_channels": 1, "mean": MEAN, "std": STD, "input_range": [0, 16]}
    (out / "preprocessor.json").write_text(json.dumps(preproc, indent=2) + "\n")
    (out / "README.md").write_text(model_card(n_params, acc, acc_half))


if __name__ == "__main__":
    main()
