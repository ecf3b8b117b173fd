"""What every command shares: the consoles it prints to."""

from __future__ import annotations

from rich.console import Console


def stdout() -> Console:
    """stdout, for results."""
    return Console(highlight=False)


def stderr() -> Console:
    """stderr, for progress notes and errors."""
    return Console(stderr=True, highlight=False)
