"""Image preprocessing as data: the manifest carries the spec, so an app (or `edgec run`) reproduces
exactly what edgec calibrated and measured with, without the model's Python processor.

Spec keys: `color` ("L" or "RGB"), `size` ([height, width]), `resample` ("nearest", "bilinear",
"bicubic"), `rescale` (pixel multiplier), `mean` and `std` (per channel). Steps, in order: convert
the colour mode, scale pixels to float, resize each channel, normalise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgec.errors import InputError

RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL's codes, as HF processors store them


def spec_for(model_dir: Path, config) -> dict:
    """The spec of a model directory: edgec's zoo format (preprocessor.json) or the HF image processor's."""
    import json

    if (model_dir / "preprocessor.json").is_file():
        spec = json.loads((model_dir / "preprocessor.json").read_text())
        n, size = spec["num_channels"], spec["image_size"]
        return {"color": "L" if n == 1 else "RGB", "size": [size, size], "resample": "bilinear",
                "rescale": 1 / 255, "mean": [spec["mean"]] * n, "std": [spec["std"]] * n}
    from transformers import AutoImageProcessor

    try:
        processor = AutoImageProcessor.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError):
        raise InputError(f"{model_dir} has no image preprocessor (preprocessor_config.json): add one") from None
    return spec_from_hf(processor, config.num_channels)


def spec_from_hf(processor, channels: int) -> dict:
    """The spec of a resize-rescale-normalise processor (ViTImageProcessor and its kind)."""
    size = getattr(processor, "size", None) or {}
    if "height" not in size or getattr(processor, "do_center_crop", False):
        raise InputError(f"{type(processor).__name__} crops or resizes by shortest edge, which edgec does not "
                         "reproduce: give a preprocessor that resizes to a fixed height and width")
    n = channels
    mean = processor.image_mean if getattr(processor, "do_normalize", True) else [0.0] * n
    std = processor.image_std if getattr(processor, "do_normalize", True) else [1.0] * n
    return {"color": "RGB" if n == 3 else "L", "size": [int(size["height"]), int(size["width"])],
            "resample": RESAMPLE.get(int(getattr(processor, "resample", 2)), "bilinear"),
            "rescale": float(processor.rescale_factor) if getattr(processor, "do_rescale", True) else 1.0,
            "mean": [float(m) for m in np.broadcast_to(mean, (n,))],
            "std": [float(s) for s in np.broadcast_to(std, (n,))]}


def preprocess_file(spec: dict, path: Path) -> np.ndarray:
    """One image file as the model's [C, H, W] float32 input."""
    from PIL import Image

    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC}[spec["resample"]]
    height, width = spec["size"]
    with Image.open(Path(path)) as im:
        x = np.asarray(im.convert(spec["color"]), dtype=np.float32) * spec["rescale"]
    channels = x[..., None] if x.ndim == 2 else x
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(channels[..., c]), mode="F")
                         .resize((width, height), resample), dtype=np.float32)
              for c in range(channels.shape[-1])]
    mean = np.asarray(spec["mean"], np.float32)[:, None, None]
    std = np.asarray(spec["std"], np.float32)[:, None, None]
    return ((np.stack(planes) - mean) / std).astype(np.float32)
