"""Decoder stages for the tiered-KV runtime, exported once per model and kept in the user's cache.

The stages are a pure function of the model's files, so they are keyed by
those files (path, size, modification time) and reused across runs; a
half-written export never becomes visible (atomic_dir).
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from edgec.runtimes.tiered_lm import SPEC_FILE

FORMAT = "stages-v1"


def cache_root() -> Path:
    base = os.environ.get("EDGEC_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                        os.path.expanduser("~/.cache"), "edgec")
    return Path(base)


def model_key(model_dir: Path) -> str:
    """The model folder's config and weights by path, size and modification time: cheap for big models,
    and any rewrite of the files gives new stages."""
    h = hashlib.sha256(FORMAT.encode())
    for f in sorted(Path(model_dir).resolve().iterdir()):
        if f.name == "config.json" or f.suffix in (".safetensors", ".bin"):
            st = f.stat()
            h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def stages_for(model_dir: Path, name: str, weights: str = "float") -> Path:
    """The folder of decoder stages for the HF decoder in `model_dir`, exporting them on first use."""
    from edgec.toolchain.publish import atomic_dir

    out = cache_root() / "stages" / f"{name}-{model_key(model_dir)}-{weights}"
    if (out / SPEC_FILE).is_file():
        return out
    from edgec.exporters.onnx_stages import export_stages
    from edgec.models.hf import from_hf
    from edgec.runtimes.torch_lm import load_hf_lm

    print(f"edgec: exporting {name}'s decoder stages for the tiered KV cache (once; kept in {out})",
          file=sys.stderr, flush=True)
    module = from_hf(load_hf_lm(model_dir))
    with atomic_dir(out) as (work, _):
        export_stages(module, work, weights=weights)
    return out
