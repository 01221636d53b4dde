"""Shared rich console and progress-bar factory."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False)


def make_progress(*extra_columns, disable: bool = False) -> Progress:
    """A progress bar: description, bar, n/total, elapsed, remaining, plus extra columns."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        disable=disable or os.environ.get("DASS_DISTILL_NO_PROGRESS") == "1",
        transient=False,
    )
