"""What the user watches while batches run: each batch's status and request counts.

On a terminal a rich live table (refreshed at every poll and every second for the countdown);
otherwise one line per poll at most every `log_every_s`, as the online progress does.
"""

from __future__ import annotations

import time
from collections import Counter

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from promptdistill.sampling.batch_state import Recorded


def _short(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


class BatchView:
    def __init__(self, console: Console, live: bool | None, log_every_s: float) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.log_every_s = log_every_s
        self._live: Live | None = None
        self._last_line = 0.0
        self._batches: list[Recorded] = []
        self._next_poll = 0.0
        self._note = ""

    def __enter__(self) -> BatchView:
        if self.live:
            self._live = Live(self._panel(), console=self.console, refresh_per_second=1,
                              transient=True, get_renderable=self._panel)  # fmt: skip
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if any(not b.merged for b in self._batches):  # stopped while they run: where they are
            self.console.print(self.line(), highlight=False, soft_wrap=True)

    def show(self, batches: list[Recorded], next_poll_s: float, note: str = "") -> None:
        """The state after a poll; the next one is due in `next_poll_s`."""
        self._batches = batches
        self._next_poll = time.monotonic() + next_poll_s
        self._note = note
        now = time.monotonic()
        running = any(not b.merged for b in batches)
        if self._live is None and running and now - self._last_line >= self.log_every_s:
            self._last_line = now
            self.console.print(self.line(), highlight=False, soft_wrap=True)

    def line(self) -> str:
        running = [b for b in self._batches if not b.merged]
        statuses = Counter(b.status for b in running)
        total = sum(len(b.ids) for b in running)
        done = sum(b.completed for b in running)
        failed = sum(b.failed for b in running)
        kinds = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "none running"
        wait = max(0.0, self._next_poll - time.monotonic())
        note = f"; {self._note}" if self._note else ""
        return (
            f"batches: {kinds}; {done}/{total} requests done, {failed} failed"
            f"{f', next poll in {wait:.0f} s' if running else ''}{note}"
        )

    def _panel(self) -> Group:
        table = Table("batch", "round", "status", "done", "failed", "requests", box=None,
                      title="Batch API", title_justify="left")  # fmt: skip
        for b in self._batches[-12:]:
            status = "merged" if b.merged else b.status
            style = {"completed": "green", "merged": "green", "failed": "red",
                     "expired": "yellow", "cancelled": "yellow"}.get(status, "")  # fmt: skip
            table.add_row(b.batch_id or "(creating)", str(b.round),
                          f"[{style}]{status}[/]" if style else status,
                          _short(b.completed), _short(b.failed), _short(len(b.ids)))  # fmt: skip
        hidden = len(self._batches) - 12
        parts: list[Table | Text] = [table]
        if hidden > 0:
            parts.append(Text(f"... and {hidden} earlier batches", style="dim"))
        parts.append(Text(self.line(), style="dim"))
        return Group(*parts)
