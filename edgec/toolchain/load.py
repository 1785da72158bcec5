"""Model sources -> the canonical module plus what it needs around it.

A source is a zoo name or a local Hugging Face directory. Loading checks the
files before transformers sees them, so a typo or a corrupt download fails
with one clear line, and verifies that the canonical rebuild computes what the
original model computes.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgec.calibration.preprocess import preprocess_file
from edgec.errors import ExportError, InputError
from edgec.models.hf import check_equivalent, family, from_hf
from edgec.toolchain.zoo import ZOO

# the rebuild against transformers, both in float32 (a bfloat16 or float16 checkpoint is widened first):
# max abs difference over the largest output magnitude, on the task's probe input
EQUIVALENCE_TOLERANCE = 1e-4

@dataclass
class LoadedModel:
    name: str
    source_dir: Path
    kind: str  # "text" | "image" | "causal-lm"
    module: torch.nn.Module  # the canonical encoder, eval mode, float32
    config: Any  # the HF config
    tokenizer: Any = None  # text models
    preprocess_spec: dict | None = None  # image models: how a file becomes an input (calibration.preprocess)
    zoo: bool = False

    @property
    def task(self):
        from edgec.tasks import task_for

        return task_for(self.kind)

    def preprocess_file(self, path: Path) -> np.ndarray:
        return preprocess_file(self.preprocess_spec, path)


def _read_config(path: Path):
    from transformers import AutoConfig

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise InputError(f"{path} has no config.json: give a Hugging Face model directory or a zoo name "
                         f"({', '.join(ZOO)})")
    try:
        json.loads(cfg_file.read_text())
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{cfg_file} is not valid JSON: re-export the model directory") from None
    except (ValueError, KeyError) as e:
        raise InputError(f"{cfg_file} is not a config transformers knows ({str(e).splitlines()[0]})") from None


def _check_weights(path: Path) -> None:
    files = sorted(path.glob("*.safetensors")) + sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise InputError(f"{path} holds no weights (model.safetensors): re-export the model directory")
    for f in path.glob("*.safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(f, framework="pt") as sf:
                for key in list(sf.keys())[:1]:
                    sf.get_slice(key)
        except Exception as e:  # safetensors raises its own and OS errors alike
            raise InputError(f"{f} is corrupt or truncated ({str(e).splitlines()[0]}): "
                             "re-download or re-save the weights") from None


def _load_hf(path: Path, task: str):
    """optimum's TasksManager picks the model class for the task from the config."""
    from optimum.exporters.tasks import TasksManager
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # edgec shows its own progress
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TasksManager.get_model_from_task(
                task, path, library_name="transformers", local_files_only=True,
                attn_implementation="eager", dtype=torch.float32).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise InputError(f"cannot load the weights in {path} ({str(e).splitlines()[0][:200]}): "
                         "check that they match config.json") from None


@dataclass(frozen=True)
class Source:
    """What config.json says about a model, read before any weight is loaded."""

    name: str
    path: Path
    config: Any
    kind: str
    zoo: bool

    @property
    def task(self):
        from edgec.tasks import task_for

        return task_for(self.kind)


def inspect(source: str) -> Source:
    zoo = source in ZOO
    path = ZOO[source].locate() if zoo else Path(source)
    if not path.exists():
        raise InputError(f"model '{source}' is neither a zoo name ({', '.join(ZOO)}) nor an existing directory")
    if not path.is_dir():
        raise InputError(f"{path} is a file: give the Hugging Face model directory that holds it")
    config = _read_config(path)
    return Source(source if zoo else path.name, path, config, family(config)["kind"], zoo)


def load(source: str | Source) -> LoadedModel:
    src = source if isinstance(source, Source) else inspect(source)
    path, config, kind, zoo = src.path, src.config, src.kind, src.zoo
    _check_weights(path)
    hf = _load_hf(path, src.task.name)
    module = from_hf(hf)
    model = LoadedModel(src.name, path, kind, module, config, zoo=zoo)
    probe = src.task.attach(model)
    err = check_equivalent(hf, module, probe, relative=True)
    if not err < EQUIVALENCE_TOLERANCE:
        raise ExportError(f"the rebuilt {config.model_type} graph differs from the original by {err:.2e} of its "
                          "output's scale: this variant of the architecture is not supported")
    return model
