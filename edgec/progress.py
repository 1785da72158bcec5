"""Progress for long steps: a line per finished step and bars for long loops, on stderr."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as _Bars, TextColumn, TimeElapsedColumn

T = TypeVar("T")


class Progress:
    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.console = Console(stderr=True, highlight=False)
        self.timings: dict[str, float] = {}

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        if self.quiet:
            yield
        else:
            with self.console.status(name):
                yield
        self.timings[name] = round(time.perf_counter() - t0, 2)
        if not self.quiet:
            self.console.print(f"[green]✓[/] {name} [dim]{self.timings[name]:.1f}s[/]")

    def track(self, items: Iterable[T], name: str, total: int | None = None) -> Iterator[T]:
        if self.quiet:
            yield from items
            return
        t0 = time.perf_counter()
        with _Bars(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=self.console, transient=True) as bars:
            yield from bars.track(items, total=total, description=name)
        self.timings[name] = round(time.perf_counter() - t0, 2)
        self.console.print(f"[green]✓[/] {name} [dim]{self.timings[name]:.1f}s[/]")
