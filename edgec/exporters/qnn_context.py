"""A QNN context binary: the QDQ graph compiled offline for one SoC's HTP, so a phone skips compiling it.

ONNX Runtime's QNN EP writes it as an `EPContext` ONNX model naming a binary
beside it (embed mode 0): `model.qnn-<soc>.onnx` and `model.qnn-<soc>.bin`. An
app opens the ONNX file with the QNN EP like any model and ships the binary as a
plain file (embedded, it would sit in a protobuf capped at 2 GB, parsed with the
graph). This module knows the SoCs and lays out the files ORT writes; the npu
target compiles each context on the QNN runtime and verifies it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from edgec.errors import ExportError

@dataclass(frozen=True)
class Soc:
    name: str  # as Android's Build.SOC_MODEL reports it
    soc_model: int  # QNN's Qnn_SocModel_t id, the EP's `soc_model` option
    htp_arch: int
    product: str


# As QNN SDK 2.51 (onnxruntime-qnn 2.7) names each id's chip and HTP generation inside the binaries it compiles.
SOCS = {s.name.lower(): s for s in [
    Soc("SM8350", 30, 68, "Snapdragon 888"),
    Soc("SM8450", 36, 69, "Snapdragon 8 Gen 1"),
    Soc("SM7675", 70, 73, "Snapdragon 7+ Gen 3"),
    Soc("SM8550", 43, 73, "Snapdragon 8 Gen 2"),
    Soc("SM8635", 68, 73, "Snapdragon 8s Gen 3"),
    Soc("SM8650", 57, 75, "Snapdragon 8 Gen 3"),
    Soc("SM8750", 69, 79, "Snapdragon 8 Elite"),
    Soc("SM8850", 87, 81, "Snapdragon 8 Elite Gen 5"),
]}


def soc_names(names: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Lower-case, each once, in the order given; ValueError naming the known SoCs."""
    names = (names,) if isinstance(names, str) else tuple(names)
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError("soc must name at least one SoC")
    out = tuple(dict.fromkeys(n.strip().lower() for n in names))
    for name in out:
        if name not in SOCS:
            raise ValueError(f"unknown SoC '{name}': choose from {', '.join(SOCS)}")
    return out


@dataclass(frozen=True)
class QnnContext:
    soc: Soc
    path: Path  # the EPContext ONNX model
    binary: Path
    qnn_sdk: str
    compile_seconds: float  # creating the session that compiles the QDQ graph (and writes the context)
    load_seconds: float | None  # creating a session from the context; None when not run here
    max_abs_diff: float | None  # to the QDQ graph compiled for the same SoC, over the check inputs
    not_run: str = ""

    def _target(self) -> dict:
        return {"soc": self.soc.name, "soc_model": self.soc.soc_model, "htp_arch": f"v{self.soc.htp_arch}",
                "qnn_sdk": self.qnn_sdk}

    def manifest(self, compiled_from: str) -> dict:
        return {**self._target(), "compiled_from": compiled_from}

    def to_dict(self) -> dict:
        return {**self._target(), "product": self.soc.product, "compile_seconds": round(self.compile_seconds, 3),
                "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 3),
                "max_abs_diff_to_qdq": self.max_abs_diff}


def place_context(written: Path, path: Path, binary: Path) -> tuple[Path, Path, str]:
    """Move ORT's `<stem>_qnn.bin` to `binary` and write the model naming it to `path`; the SDK version."""
    model = onnx.load(str(written))
    nodes = [n for n in model.graph.node if n.op_type == "EPContext"]
    attrs = [{a.name: a for a in n.attribute} for n in nodes]
    names = {a["ep_cache_context"].s.decode() for a in attrs if a["embed_mode"].i == 0}
    if len(nodes) != len(model.graph.node) or len(names) != 1:
        raise ExportError(f"the QNN EP wrote a context model of {len(model.graph.node)} nodes and binaries "
                          f"{sorted(names)}; edgec expects one EPContext graph with one binary beside it")
    shutil.move(written.with_name(names.pop()), binary)
    for a in attrs:
        a["ep_cache_context"].s = binary.name.encode()
    onnx.save(model, str(path))
    sdk = attrs[0].get("ep_sdk_version")
    return path, binary, sdk.s.decode().lstrip("v") if sdk is not None else "unknown"
