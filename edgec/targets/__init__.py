"""Targets by name. A new target is one module with a `Target` subclass plus one line here
(or `register(MyTarget())` from outside the package)."""

from __future__ import annotations

from edgec.errors import InputError
from edgec.targets.base import Build, Built, Target
from edgec.targets.cpu import Cpu
from edgec.targets.gpu import Gpu
from edgec.targets.npu import Npu

TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    TARGETS[target.name] = target
    return target


def resolve(name: str) -> Target:
    if name not in TARGETS:
        raise InputError(f"unknown target '{name}': choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


for _t in (Npu(), Cpu(), Gpu()):
    register(_t)

__all__ = ["Build", "Built", "Target", "TARGETS", "register", "resolve"]
