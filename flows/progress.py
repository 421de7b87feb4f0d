"""Rich progress bars for the CLI and flows running in the user's terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def progress_bar(description: str, show: bool = True) -> Iterator[Callable[[str, int, int], None]]:
    """A callback ``(description, done, total)`` that drives one bar on stderr (a no-op if not shown)."""
    if not show:
        yield lambda description, done, total: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:
        job = bar.add_task(description, total=None)

        def update(text: str, done: int, total: int) -> None:
            bar.update(job, description=text, completed=done, total=total)

        yield update
