"""Targets are data: what to build, in which precision, verified on which runtimes."""

from __future__ import annotations

from dataclasses import dataclass

from edgec.calibration.plan import PrecisionPlan
from edgec.errors import InputError


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    plan: PrecisionPlan | None  # a static integer plan, or None for dynamic int8
    npu_backend: str | None = None  # the NPU the artifact must run on in full
    pte: bool = False  # also build an ExecuTorch program


TARGETS = {t.name: t for t in [
    Target("npu", "integer-only A16W8 QDQ ONNX that runs whole on Qualcomm's HTP (QNN)",
           PrecisionPlan(), npu_backend="qnn-htp"),
    Target("cpu", "int8 ONNX for ONNX Runtime CPU (padding-free, fused attention) and an "
                  "int8 ExecuTorch program for XNNPACK", None, pte=True),
]}


def resolve(name: str) -> Target:
    if name not in TARGETS:
        raise InputError(f"unknown target '{name}': choose one of {', '.join(TARGETS)}")
    return TARGETS[name]
