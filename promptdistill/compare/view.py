"""How `compare` shows an exchange: rich panels for a terminal, plain text or JSON for scripts.

The REPL (repl.py) only calls the `View` methods; it never prints. Three views:
- `RichView`: one panel per side, teacher left, student right (and base), streaming live, with
  time to first token, total time, tokens, tokens/s and prompt tokens under each. Below
  `WIDE_COLUMNS` columns the panels stack one under the other.
- `PlainView`: the finished answers, teacher first then student, on stdout; numbers on stderr.
- `JsonView`: one JSON object per prompt on stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any, Protocol

import orjson
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from promptdistill.compare.chat import Answer

WIDE_COLUMNS = 100  # below this, two panels are too narrow to read side by side
MIN_PANEL_COLUMNS = 46  # a third column (/base) needs this much more room
BORDER = {"teacher": "blue", "student": "green", "base": "yellow"}


class View(Protocol):
    def streaming(self, answers: Sequence[Answer]) -> Any:
        """A context manager during which `answers` fill in."""

    def exchange(self, prompt: str, answers: Sequence[Answer], record: dict[str, Any]) -> None:
        """Show one finished (or stopped) exchange."""

    def info(self, text: str) -> None: ...

    def warn(self, text: str) -> None: ...

    def block(self, title: str, text: str) -> None:
        """Show a titled piece of text (the system prompt, the help)."""


# --------------------------------------------------------------------------- numbers


def stats_lines(answer: Answer, answers: Sequence[Answer]) -> tuple[str, str]:
    """Two lines under a panel: time, then tokens.

    `ttft 0.42 s · total 3.10 s · 28.1 tok/s` and `87 tok · prompt 62 tok (−650 vs teacher)`;
    `~` marks a count the endpoint did not report (estimated with the student's tokenizer).
    """
    ttft, tps = answer.ttft_s, answer.tokens_per_s
    timing = " · ".join(
        [
            "ttft " + ("…" if ttft is None else f"{ttft:.2f} s"),
            f"total {answer.total_s:.2f} s",
            "… tok/s" if tps is None else f"{tps:.1f} tok/s",
        ]
    )
    tokens = f"{'' if answer.tokens_exact else '~'}{answer.tokens} tok"
    if answer.prompt_tokens is not None:
        tokens += f" · prompt {'' if answer.prompt_tokens_exact else '~'}{answer.prompt_tokens} tok"
        teacher = next((a for a in answers if a.side == "teacher"), None)
        if answer.side != "teacher" and teacher is not None and teacher.prompt_tokens:
            saved = answer.prompt_tokens - teacher.prompt_tokens
            approx = "" if teacher.prompt_tokens_exact else "~"
            tokens += f" ({approx}{'−' if saved < 0 else '+'}{abs(saved)} vs teacher)"
    return timing, tokens


def stats_line(answer: Answer, answers: Sequence[Answer]) -> str:
    return " · ".join(stats_lines(answer, answers))


# --------------------------------------------------------------------------- rich


class _SideBlock:
    """One side: its panel, then its numbers. With `max_lines`, only the newest lines show,
    so a long answer keeps scrolling inside a live display of fixed height."""

    def __init__(self, answer: Answer, answers: Sequence[Answer], max_lines: int | None) -> None:
        self.answer = answer
        self.answers = answers
        self.max_lines = max_lines

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        a = self.answer
        body = Text(a.text)
        if not a.text and not a.done:
            body = Text("waiting for the first token…", style="dim italic")
        if a.error:
            body = Text.assemble(body, "\n\n" if a.text else "", (f"error: {a.error}", "bold red"))
        if self.max_lines is not None:
            lines = body.wrap(console, max(1, options.max_width - 4))  # 2 borders + 2 padding
            if len(lines) > self.max_lines:
                body = Text("\n").join(lines[len(lines) - self.max_lines :])
        subtitle = "stopped" if a.stopped else ("…" if not a.done else None)
        yield Panel(
            body,
            title=Text.assemble((a.side, "bold"), " · ", (a.title, "dim")),
            title_align="left",
            subtitle=subtitle,
            subtitle_align="right",
            border_style="red" if a.error else BORDER.get(a.side, "white"),
        )
        for line in stats_lines(a, self.answers):
            yield Text(line, style="dim", overflow="ellipsis", no_wrap=True)


class Board:
    """Every side of one exchange: side by side on a wide terminal, stacked on a narrow one."""

    def __init__(self, answers: Sequence[Answer], live: bool = False) -> None:
        self.answers = answers
        self.live = live

    def wide(self, width: int) -> bool:
        n = len(self.answers)
        return width >= max(WIDE_COLUMNS, n * MIN_PANEL_COLUMNS)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        n = len(self.answers)
        wide = self.wide(options.max_width)
        max_lines: int | None = None
        if self.live:  # keep the board on screen: 2 border + 2 stats lines a side, 1 spare
            height = options.height or console.size.height
            max_lines = max(1, height - 5) if wide else max(1, (height - 1) // n - 4)
        blocks = [_SideBlock(a, self.answers, max_lines) for a in self.answers]
        if not wide:
            yield Group(*blocks)
            return
        grid = Table.grid(expand=True, padding=(0, 1))
        for _ in blocks:
            grid.add_column(ratio=1)
        grid.add_row(*blocks)
        yield grid


class RichView:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)

    @contextmanager
    def streaming(self, answers: Sequence[Answer]) -> Iterator[None]:
        # transient: the cropped live board is replaced by the full one in `exchange`
        with (
            _no_echo(),
            Live(
                Board(answers, live=True),
                console=self.console,
                refresh_per_second=12,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            ),
        ):
            yield

    def exchange(self, prompt: str, answers: Sequence[Answer], record: dict[str, Any]) -> None:
        self.console.print(Board(answers))

    def info(self, text: str) -> None:
        self.console.print(Text(text, style="dim"))

    def warn(self, text: str) -> None:
        self.console.print(Text(text, style="yellow"))

    def block(self, title: str, text: str) -> None:
        self.console.print(Panel(Text(text), title=title, title_align="left", border_style="dim"))


@contextmanager
def _no_echo() -> Iterator[None]:
    """Keys typed while answers stream are not echoed (they stay queued for the next prompt).

    An echoed `^C` or stray letter moves the cursor under rich's live display, which then
    leaves a torn copy of the board behind when it clears itself.
    """
    try:
        import termios
    except ImportError:  # not POSIX: nothing to do
        yield
        return
    try:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except (OSError, ValueError, termios.error):  # stdin is not a terminal
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~(termios.ECHO | termios.ECHOCTL)
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)


# --------------------------------------------------------------------------- scripts


class PlainView:
    """Answers in plain text on stdout (teacher first), numbers and notes on stderr."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    @contextmanager
    def streaming(self, answers: Sequence[Answer]) -> Iterator[None]:
        yield

    def exchange(self, prompt: str, answers: Sequence[Answer], record: dict[str, Any]) -> None:
        for a in answers:
            self.out.write(f"[{a.side}]\n{a.text.strip()}\n\n")
            if a.error:
                self.err.write(f"{a.side}: error: {a.error}\n")
            self.err.write(f"{a.side}: {stats_line(a, answers)}\n")
        self.out.flush()
        self.err.flush()

    def info(self, text: str) -> None:
        self.err.write(text + "\n")

    def warn(self, text: str) -> None:
        self.err.write(text + "\n")

    def block(self, title: str, text: str) -> None:
        self.out.write(f"[{title}]\n{text.strip()}\n\n")
        self.out.flush()


class JsonView(PlainView):
    """One JSON object per prompt on stdout; notes on stderr."""

    def exchange(self, prompt: str, answers: Sequence[Answer], record: dict[str, Any]) -> None:
        self.out.write(orjson.dumps(record).decode() + "\n")
        self.out.flush()

    def block(self, title: str, text: str) -> None:
        self.out.write(orjson.dumps({"title": title, "text": text}).decode() + "\n")
        self.out.flush()
