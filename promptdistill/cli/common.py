"""What every command shares: the consoles it prints to, and options several commands take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, cast

import typer
from rich.console import Console

from promptdistill.core.errors import UserError

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

QuantizeOption = Annotated[
    str | None,
    typer.Option(
        help="none, or 4bit: the student's base in 4-bit nf4 (QLoRA; needs the `quantize` "
        "extra). Default: as the student was trained (train: none).",
    ),
]


def quantize_flag(value: str | None) -> Literal["none", "4bit"] | None:
    """--quantize, checked: a one-line error for anything but none or 4bit."""
    if value not in (None, "none", "4bit"):
        raise UserError(f"--quantize {value}: use none or 4bit")
    return cast(Literal["none", "4bit"] | None, value)


def stdout() -> Console:
    """stdout, for results."""
    return Console(highlight=False)


def stderr() -> Console:
    """stderr, for progress notes and errors."""
    return Console(stderr=True, highlight=False)
