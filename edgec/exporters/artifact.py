"""A file the pipeline produced, as the report and manifest describe it."""

import hashlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: str  # "onnx", "onnx-qdq", "onnx-qnn-context", "pte", "vmfb"
    runtime: str  # the runtime it is built for: "ort-cpu", "qnn-htp", "executorch", "iree-vulkan"
    also_on: tuple[str, ...] = ()  # other runtimes it is verified on (a QDQ graph runs on ORT CPU too)
    not_run: str = ""  # why it is shipped unverified (a module for a GPU this machine lacks)
    # manifest fields the exporter knows and the file does not say (a program's inputs, a cache layout)
    manifest: dict = field(default_factory=dict, compare=False, hash=False)
    beside: tuple[Path, ...] = ()  # other files it reads from its own folder (a QNN context's binary)

    @property
    def runtimes(self) -> tuple[str, ...]:
        """The runtimes it is verified on here."""
        return () if self.not_run else (self.runtime, *self.also_on)

    @property
    def external_data(self) -> list[Path]:
        """Files it reads beside itself (an ONNX graph's `model.onnx.data`): part of the artifact."""
        data = self.path.with_name(self.path.name + ".data")
        return [*([data] if self.format.startswith("onnx") and data.is_file() else []), *self.beside]

    @property
    def bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.path, *self.external_data))

    def to_dict(self, root: Path) -> dict:
        return {"path": str(self.path.relative_to(root)), "format": self.format,
                "runtime": self.runtime, "verified_on": list(self.runtimes), "bytes": self.bytes,
                **({"not_run": self.not_run} if self.not_run else {})}


def sha256(path: Path) -> str:
    """The digest the manifest records for a file, so a reader can tell a truncated or altered one."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
