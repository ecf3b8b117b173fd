"""What the user and RUN/metrics.jsonl see of a training run.

`StepLog` writes every step's and every validation's record to metrics.jsonl (rank 0 only) and
keeps the display up to date: a rich live progress line on a terminal, plain log lines when
stdout is not one (CI, pipes, files). The line shows the smoothed loss, the validation loss,
the learning rate, tokens/s, the ETA and the share of time spent waiting for data.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from promptdistill.core.io import JsonlWriter


def fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Display:
    """A rich live progress line on a terminal; plain log lines otherwise (CI, pipes, files)."""

    def __init__(self, console: Any, total: int, start: int) -> None:
        self.console, self.total = console, total
        self.live = bool(console.is_terminal)
        self.every = max(1, min(10, total // 20 or 1))
        self._progress: Any = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=start, info="")
            self._progress.start()

    def update(self, step: int, info: str, total: int) -> None:
        self.total = total  # fixed, or a stream's estimate refined as samples arrive
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info, total=self.total)
        elif step % self.every == 0 or step == self.total:
            self.console.print(f"step {step}/{self.total} | {info}", soft_wrap=True)

    def log(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


class StepLog:
    """metrics.jsonl and the display, fed by the loop. `metrics` None: a rank that writes
    nothing and shows nothing."""

    def __init__(self, console: Any, metrics: Path | None, total: int, start: int) -> None:
        self._file = JsonlWriter(metrics, fsync_every=64) if metrics is not None else None
        self._display = Display(console, total, start) if metrics is not None else None
        self.start_step = start
        self.started = time.perf_counter()
        self.loop_tokens, self.loop_s = 0, 0.0  # tokens and seconds inside optimizer steps
        self.last_loss: float | None = None
        self.val_loss: float | None = None
        self._smooth, self._n = 0.0, 0

    @property
    def tokens_per_s(self) -> float:
        return self.loop_tokens / self.loop_s if self.loop_s else 0.0

    def timed(self, tokens: int, seconds: float) -> None:
        self.loop_tokens += tokens
        self.loop_s += seconds

    def step(
        self, record: dict[str, Any], loss: float, total: int, wait_s: float, tail: str
    ) -> None:
        """One finished step: its metrics.jsonl record (with its loss) and the display line.
        `wait_s` is the data wait so far; `tail` the data source's part of the line."""
        self.last_loss = loss
        self._smooth, self._n = 0.9 * self._smooth + 0.1 * loss, self._n + 1
        if self._file is not None:
            self._file.write({**record, "loss": round(loss, 6)})
        if self._display is None:
            return
        step = record["step"]
        elapsed = time.perf_counter() - self.started
        eta = (total - step) * (elapsed / max(1, step - self.start_step))
        info = (
            f"loss {self._smooth / (1 - 0.9**self._n):.3f}"
            + (f" | val {self.val_loss:.3f}" if self.val_loss is not None else "")
            + f" | lr {record['lr']:.2e} | {self.tokens_per_s:,.0f} tok/s | eta {fmt_time(eta)}"
            + f" | data wait {100 * wait_s / max(elapsed, 1e-9):.1f}%"
            + tail
        )
        self._display.update(step, info, total)

    def validation(self, step: int, total: int, val_loss: float, examples: int) -> None:
        self.val_loss = val_loss
        if self._file is not None:
            self._file.write(
                {
                    "type": "eval",
                    "step": step,
                    "val_loss": round(val_loss, 6),
                    "val_examples": examples,
                }
            )
        if self._display is not None and not self._display.live:
            self._display.log(f"step {step}/{total} | val loss {val_loss:.4f}")

    def sync(self) -> None:
        """metrics.jsonl on disk up to here (before a checkpoint says the steps are done)."""
        if self._file is not None:
            self._file.sync()

    def close(self) -> None:
        if self._display is not None:
            self._display.close()
        if self._file is not None:
            self._file.close()
