"""manifest.json: what an app needs to feed an artifact and read its outputs.

Its shape is the JSON Schema in `manifest.schema.json` beside this file; every
bundle is validated against it when written and when `edgec run` reads it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from pathlib import Path

import edgec
from edgec.errors import InputError
from edgec.exporters.artifact import Artifact, sha256
from edgec.exporters.onnx_io import onnx_io

SCHEMA_VERSION = 1


def build_manifest(model, target: str, artifacts: list[Artifact], root: Path, task_fields: dict,
                   golden: dict[str, dict]) -> dict:
    entries = []
    onnx_spec = None
    for a in artifacts:
        entry = {**a.to_dict(root), "sha256": sha256(a.path)}
        if a.external_data:
            entry["external_data"] = [{"path": str(p.relative_to(root)), "bytes": p.stat().st_size,
                                       "sha256": sha256(p)} for p in a.external_data]
        if a.format.startswith("onnx"):
            onnx_spec = onnx_io(a.path)
            entry.update(onnx_spec)
        elif onnx_spec is not None:  # the .pte takes the same tensors in the same order, unquantized
            entry.update({side: [{**t, "quantization": None} for t in onnx_spec[side]]
                          for side in ("inputs", "outputs")})
        entry.update(a.manifest)
        if a.path.name in golden:  # not for a file shipped unverified
            entry["golden"] = golden[a.path.name]
        entries.append(entry)
    manifest = {"schema_version": SCHEMA_VERSION, "edgec_version": edgec.__version__,
                "model": model.name, "architecture": model.config.model_type, "target": target,
                "task": model.task.name, "artifacts": entries, **task_fields}
    validate(manifest)
    return manifest


@cache
def schema() -> dict:
    return json.loads(resources.files("edgec.toolchain").joinpath("manifest.schema.json").read_text())


def validate(manifest: dict) -> None:
    """Raise InputError naming the first place the manifest breaks the schema."""
    import jsonschema

    try:
        jsonschema.validate(manifest, schema())
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "the top level"
        raise InputError(f"manifest.json does not follow schema version {SCHEMA_VERSION} at {where}: "
                         f"{e.message[:200]}") from None
