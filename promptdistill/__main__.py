from __future__ import annotations

from promptdistill.cli.app import run

run()
