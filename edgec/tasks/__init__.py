"""Tasks by model kind."""

from __future__ import annotations

from edgec.errors import InputError
from edgec.tasks.base import Feed, Feeds, Outputs, Task
from edgec.tasks.generation import TextGeneration
from edgec.tasks.image import ImageClassification
from edgec.tasks.text import SentenceEmbedding

TASKS: dict[str, Task] = {t.kind: t for t in [SentenceEmbedding(), ImageClassification(), TextGeneration()]}
BY_NAME: dict[str, Task] = {t.name: t for t in TASKS.values()}


def task_for(kind: str) -> Task:
    return TASKS[kind]


def task_named(name: str) -> Task:
    if name not in BY_NAME:
        raise InputError(f"unknown task '{name}' in the manifest: this edgec knows {', '.join(BY_NAME)}")
    return BY_NAME[name]


__all__ = ["Feed", "Feeds", "Outputs", "Task", "TASKS", "task_for", "task_named"]
