from __future__ import annotations

from promptdistill.cli import run

run()
