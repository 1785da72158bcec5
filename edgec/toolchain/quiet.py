"""Keeps third-party import chatter out of edgec's output, in the CLI and in the processes it starts."""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    """Third-party import chatter (torchao kernels, transformers bars) hides edgec's own output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore")
    logging.getLogger().setLevel(logging.ERROR)
    for name in ("torchao", "torch", "transformers", "executorch", "onnxruntime", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
