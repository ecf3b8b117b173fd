"""What every command shares: the consoles it prints to, and options several commands take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder with personas/ and prompts/, searched first (then $PROMPTDISTILL_DATA, "
        "the current directory, the shipped personas).",
    ),
]
Turns = Annotated[
    int | None,
    typer.Option(
        min=1,
        max=32,
        help="User turns per conversation (default 1): after each answer, the teacher as a "
        "user simulator writes the next user message.",
    ),
]


def stdout() -> Console:
    """stdout, for results."""
    return Console(highlight=False)


def stderr() -> Console:
    """stderr, for progress notes and errors."""
    return Console(stderr=True, highlight=False)
