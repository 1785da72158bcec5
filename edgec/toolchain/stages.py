"""Decoder stages for the tiered-KV runtime, cut once per decoder ONNX and kept in the user's cache.

A bundle's own `model.onnx` (ONNX Runtime GenAI format, its weights as
exported) is cut as it is; a model directory is first exported in float the
way `edgec export --target cpu` does. The stages are a pure function of their
source files, so they are keyed by those files (path, size, modification
time) and reused across runs; a half-written cut never becomes visible.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from edgec.cache import cache_root
from edgec.exporters.formats import SPEC_FILE
from edgec.toolchain.publish import atomic_dir

FORMAT = "stages-v3"


def files_key(files: list[Path]) -> str:
    """Path, size and modification time of each file: cheap for big weights, changed by any rewrite."""
    h = hashlib.sha256(FORMAT.encode())
    for f in sorted(Path(f).resolve() for f in files):
        st = f.stat()
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def stages_for_bundle(model_onnx: Path, name: str, attention: list[dict] | None) -> Path:
    """The stages cut from a bundle's GenAI decoder (model.onnx, its .data and genai_config.json beside it);
    `attention` is its manifest entry's per-layer attention settings."""
    from edgec.exporters.onnx_stages import cut_stages

    folder = Path(model_onnx).parent
    sources = [f for f in folder.iterdir() if f.name.startswith(model_onnx.name) or f.name == "genai_config.json"]
    out = cache_root() / "stages" / f"{name}-{files_key(sources)}"
    if not (out / SPEC_FILE).is_file():
        with atomic_dir(out) as (work, _):
            cut_stages(model_onnx, json.loads((folder / "genai_config.json").read_text()), work, attention)
    return out


def stages_for_model(model_dir: Path, name: str) -> Path:
    """The stages of the HF decoder in `model_dir`: exported in float for ONNX Runtime GenAI, then cut."""
    model_dir = Path(model_dir)
    sources = [f for f in model_dir.iterdir() if f.name == "config.json" or f.suffix in (".safetensors", ".bin")]
    out = cache_root() / "stages" / f"{name}-{files_key(sources)}"
    if (out / SPEC_FILE).is_file():
        return out
    from transformers import AutoConfig

    from edgec.exporters.onnx_genai import export_genai
    from edgec.exporters.onnx_stages import cut_stages
    from edgec.models.hf import from_hf
    from edgec.runtimes.torch_lm import load_hf_lm

    print(f"edgec: exporting {name}'s decoder for the tiered KV cache (once; kept in {out})", file=sys.stderr,
          flush=True)
    module = from_hf(load_hf_lm(model_dir))
    with atomic_dir(out) as (work, scratch):
        genai = scratch / "genai"  # the whole-model export the stages are cut from; removed with scratch
        export_genai(module, AutoConfig.from_pretrained(model_dir, local_files_only=True), model_dir, genai,
                     graph="plain")
        cut_stages(genai / "model.onnx", json.loads((genai / "genai_config.json").read_text()), work,
                   module.attention())
    return out
