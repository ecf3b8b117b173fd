"""What the user watches while sampling: a rich live panel on a terminal, log lines otherwise.

On a TTY the panel refreshes 4 times a second. When stdout is a pipe or a file (CI, `nohup`,
`| tee`), a redrawn panel would be noise, so one plain line is printed every `log_every_s`.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from promptdistill.sampling.engine import EngineStats
from promptdistill.sampling.limits import AdaptiveConcurrency
from promptdistill.sampling.pool import Pool


def _rate(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def _duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # nan or inf
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Samples `EngineStats` periodically; rates are over the last `window_s` seconds."""

    def __init__(
        self,
        stats: EngineStats,
        concurrency: AdaptiveConcurrency | Pool,  # a Pool: its endpoints' limits together
        console: Console,
        live: bool | None = None,
        log_every_s: float = 5.0,
        window_s: float = 10.0,
    ) -> None:
        self.stats = stats
        self.concurrency = concurrency
        self.console = console
        self.live = console.is_terminal if live is None else live
        self.log_every_s = log_every_s
        self.window_s = window_s
        self._history: deque[tuple[float, int, int]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._live: Live | None = None

    # ----------------------------------------------------------------------- numbers

    def rates(self) -> tuple[float, float]:
        """(requests/s, output tokens/s) over the recent window.

        The window grows (up to 2 minutes) until it holds at least 20 finished requests: a slow
        teacher, such as a CPU server finishing a batch every minute, otherwise reads 0.0."""
        now = time.monotonic()
        s = self.stats
        finished = s.done + s.failed
        self._history.append((now, finished, s.output_tokens))
        while len(self._history) > 2 and now - self._history[0][0] > max(self.window_s, 120.0):
            self._history.popleft()
        t0, n0, tok0 = self._history[0]
        for t, n, tok in reversed(self._history):
            if now - t >= self.window_s and finished - n >= 20:
                t0, n0, tok0 = t, n, tok
                break
        if now - t0 < 0.5:  # too early for a recent window: use the whole run
            t0, n0, tok0 = s.started, 0, 0
        dt = max(now - t0, 1e-6)
        return (finished - n0) / dt, (s.output_tokens - tok0) / dt

    def waiting(self) -> str:
        """`waiting 1:58 (the endpoint answered 429, retry-after 3600 s ...)`, or ''."""
        left = self.stats.waiting_until - time.monotonic()
        if left <= 0.5:
            return ""
        return f"waiting {_duration(left)} ({self.stats.waiting_why})"

    def line(self) -> str:
        s = self.stats
        rps, tps = self.rates()
        left = s.total - s.done - s.failed
        eta = left / rps if rps > 0 else float("inf")
        waiting = self.waiting()
        return (
            f"sample: {s.done}/{s.total} done, {s.failed} failed, "
            f"{s.in_flight} in flight, {_rate(rps)} req/s, {tps:.0f} out tok/s, "
            f"{s.retries} retries ({s.rate_limited} x 429), concurrency {self.concurrency.limit}"
            f"/{self.concurrency.maximum}, {self.endpoints()}ETA {_duration(eta)}"
            + (f"; {waiting}" if waiting else "")
        )

    def endpoints_up(self) -> str:
        """`2/3` with several endpoints (up / all), else ''."""
        pool = self.concurrency
        if not isinstance(pool, Pool) or len(pool.endpoints) < 2:
            return ""
        return f"{pool.up()}/{len(pool.endpoints)}"

    def endpoints(self) -> str:
        up = self.endpoints_up()
        return f"endpoints {up} up, " if up else ""

    def panel(self) -> Group:
        s = self.stats
        rps, tps = self.rates()
        left = s.total - s.done - s.failed
        eta = left / rps if rps > 0 else float("inf")
        table = Table.grid(padding=(0, 2))
        for _ in range(6):
            table.add_column(justify="right")
        table.add_row(
            "done", f"[bold green]{s.done}[/]/{s.total}",
            "failed", f"[red]{s.failed}[/]" if s.failed else "0",
            "in flight", f"{s.in_flight}",
        )  # fmt: skip
        table.add_row(
            "req/s", _rate(rps),
            "out tok/s", f"{tps:.0f}",
            "ETA", _duration(eta),
        )  # fmt: skip
        table.add_row(
            "retries", str(s.retries),
            "429s", str(s.rate_limited),
            "concurrency", f"{self.concurrency.limit}/{self.concurrency.maximum}",
        )  # fmt: skip
        if self.endpoints_up():
            table.add_row("endpoints up", self.endpoints_up())
        parts: list[Text | Table] = [table]
        if waiting := self.waiting():
            parts.append(Text(waiting, style="yellow"))
        if s.last_error:
            parts.append(Text(f"last error: {s.last_error}", style="dim", overflow="ellipsis"))
        return Group(*parts)

    # ----------------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Progress:
        if self.live:
            self._live = Live(
                self.panel(), console=self.console, refresh_per_second=4, transient=True
            )
            self._live.start()
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._live is not None:
            self._live.stop()
        elif self.stats.total:
            self.console.print(self.line(), highlight=False, soft_wrap=True)

    async def _loop(self) -> None:
        while True:
            if self._live is not None:
                await asyncio.sleep(0.25)
                self._live.update(self.panel())
            else:
                await asyncio.sleep(self.log_every_s)
                self.console.print(self.line(), highlight=False, soft_wrap=True)
