"""Image classification: top-1 on a labelled held-out split, or agreement with float without one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgec.calibration.preprocess import preprocess_file
from edgec.calibration.source import calibration_images
from edgec.errors import InputError
from edgec.tasks.base import Feed, Feeds, Outputs, Task, pool_size, rows

GOLDEN_IMAGES = 3
TOP = 5


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


class ImageClassification(Task):
    name = "image-classification"
    kind = "image"
    simulator_eval_samples = 100

    def tokens(self, config, recipe) -> int:
        return (config.image_size // config.patch_size) ** 2

    def budget_size(self, config, recipe) -> int:
        return self.tokens(config, recipe)

    def check(self, config, recipe) -> None:
        if recipe.seq_len is not None:
            raise InputError("--seq-len is for text models: an image model's token count comes from its "
                             "image and patch size; drop the option")
        super().check(config, recipe)

    def attach(self, model) -> dict[str, torch.Tensor]:
        from edgec.calibration.preprocess import spec_for

        model.preprocess_spec = spec_for(model.source_dir, model.config)
        c = model.config
        return {"pixel_values": torch.randn(1, c.num_channels, c.image_size, c.image_size)}

    def feeds(self, model, calib: Path | None, recipe) -> Feeds:
        n_pool = pool_size(recipe)
        images = calibration_images(calib, n_pool, model.preprocess_file)
        labels = None
        if model.name == "vit-digits" and model.zoo:
            from edgec.calibration.digits import load_digits_split
            if images is None:
                images = load_digits_split("calib")[0][:n_pool]
            held, labels = load_digits_split("test")
            held, labels = held[:recipe.eval_samples], labels[:recipe.eval_samples]
            eval_source = f"{len(held)} digits test-split images (labelled)"
        elif images is None:
            raise InputError(f"model {model.name} has no built-in calibration images: give --calib FOLDER")
        else:
            held = images[:recipe.eval_samples]  # no labelled held-out set: agreement with float
            eval_source = f"{len(held)} calibration images (no held-out set given): agreement with float"
        pool = rows({"pixel_values": images.astype(np.float32)})
        calib_rows, eval_rows = pool[:recipe.calib_samples], rows({"pixel_values": held.astype(np.float32)})
        return Feeds(calib_rows, eval_rows, labels,
                     f"{len(calib_rows)} images from {calib or 'the built-in calibration split'}",
                     eval_source, {"one image": eval_rows[0]}, pool, eval_rows[:GOLDEN_IMAGES])

    def output_names(self, module: torch.nn.Module) -> list[str]:
        return ["logits"]

    def metric_name(self, feeds: Feeds) -> str:
        return "top-1 accuracy" if feeds.labels is not None else "top-1 agreement with float"

    def metric(self, reference: list[Outputs], candidate: list[Outputs], feeds: Feeds) -> dict:
        ref = np.array([r[0].argmax() for r in reference])
        got = np.array([c[0].argmax() for c in candidate])
        truth = ref if feeds.labels is None else feeds.labels[:len(got)]
        return {"value": float((got == truth).mean()), "samples": len(got),
                "max_abs_diff": float(max(np.abs(r[0] - c[0]).max() for r, c in zip(reference, candidate)))}

    def bundle(self, model, recipe, output_names: list[str], work: Path) -> dict:
        labels = getattr(model.config, "id2label", None) or {}
        return {"labels": {str(k): v for k, v in labels.items()}, "preprocess": model.preprocess_spec}

    def user_input(self, bundle: Path, manifest: dict, text: str | None, image: Path | None) -> Feed:
        if image is None:
            raise InputError("this bundle classifies images: give --image PATH")
        if not Path(image).is_file():
            raise InputError(f"image {image} does not exist: check the path")
        try:
            x = preprocess_file(manifest["preprocess"], image)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises all three for broken files
            raise InputError(f"cannot read image {image} ({e}): give a PNG or JPEG file") from None
        return {"pixel_values": x[None]}

    def describe(self, outputs: Outputs, feed: Feed, manifest: dict) -> list[str]:
        p = _softmax(outputs[0][0].astype(np.float64))
        labels = manifest.get("labels", {})
        return [f"{labels.get(str(i), f'class {i}')}: {p[i]:.4f}" for i in np.argsort(-p)[:TOP]]

    def agreement(self, expected: Outputs, got: Outputs, feed: Feed, manifest: dict) -> tuple[str, bool]:
        a, b = int(expected[0].argmax()), int(got[0].argmax())
        return f"top-1 class {b} (golden {a})", a == b
