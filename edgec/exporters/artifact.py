"""A file the pipeline produced, as the report and manifest describe it."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Artifact:
    path: Path
    format: str  # "onnx", "onnx-qdq", "pte"
    runtime: str  # the runtime that runs it: "ort-cpu", "qnn-htp", "executorch"

    @property
    def bytes(self) -> int:
        return self.path.stat().st_size

    def to_dict(self, root: Path) -> dict:
        return {"path": str(self.path.relative_to(root)), "format": self.format,
                "runtime": self.runtime, "bytes": self.bytes}
