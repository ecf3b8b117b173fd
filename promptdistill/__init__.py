"""promptdistill: distill a persona's long system prompt into a small local student model."""

from __future__ import annotations

__version__ = "0.1.0"
