"""What a sampling run did: `SampleSummary`, and the table printed after every run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from promptdistill.sampling.correct import add_rows
from promptdistill.sampling.cost import cost_row


@dataclass(kw_only=True)
class SampleSummary:
    run_dir: str
    base_url: str
    model: str
    requested: int = 0  # prompts this run should have answers for (training + held-out)
    answered_before: int = 0
    answered_now: int = 0
    failed: int = 0
    pending: int = 0  # neither answered nor failed (interrupted, or stopped by a fatal error)
    truncated: int = 0
    retries: int = 0
    rate_limited: int = 0
    max_concurrency: int = 0
    min_concurrency: int = 0
    elapsed_s: float = 0.0
    sampling_s: float = 0.0  # from the first request to the last answer
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that interrupted it (SIGINT, SIGTERM), if any
    input_tokens: int = 0  # usage of the answers received online now
    output_tokens: int = 0
    batch_input_tokens: int = 0  # ... and through the Batch API (half the price)
    batch_output_tokens: int = 0
    price_in: float | None = None  # USD per million tokens, online (sampling/cost.py)
    price_out: float | None = None
    written: int = 0  # requests written to a batch file (`--write-batch-file`)
    batches_open: int = 0  # batches left running on the server (resume by rerunning)
    batches_cancelled: int = 0  # by `--cancel-batches`
    # per endpoint when there are several: (base URL, requests, answers, errors, times out)
    endpoints: list[tuple[str, int, int, int, int]] = field(default_factory=list)
    rows: list[tuple[str, str]] = field(default_factory=list)  # what a batch mode adds
    reasked: int = 0  # retries of wrong answers queued in this run (--keep correct, #17)
    reanswered: int = 0
    correctness: Any = None  # sampling/correct.py: Correctness, over the whole samples.jsonl

    @property
    def complete(self) -> bool:
        return self.answered_before + self.answered_now == self.requested


def summary_table(summary: SampleSummary) -> Table:
    """The final table printed after every run, finished or not."""
    t = Table(title=f"sample: {summary.run_dir}", show_header=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column(justify="right")
    t.add_row("teacher", f"{summary.model} @ {summary.base_url}")
    t.add_row("prompts requested", str(summary.requested))
    t.add_row("answered before this run", str(summary.answered_before))
    t.add_row("answered now", str(summary.answered_now))
    if summary.reasked:
        t.add_row("asked again (wrong answers)", f"{summary.reanswered} of {summary.reasked}")
    t.add_row("failed", str(summary.failed))
    t.add_row("not asked yet", str(summary.pending))
    t.add_row("cut at max_tokens (kept, flagged)", str(summary.truncated))
    t.add_row("retries / 429s", f"{summary.retries} / {summary.rate_limited}")
    if summary.min_concurrency < summary.max_concurrency:
        t.add_row("concurrency (lowest after 429s)", f"{summary.min_concurrency}")
    for name, value in summary.rows:
        t.add_row(name, value)
    if summary.endpoints:
        t.add_row("endpoints", f"{len(summary.endpoints)}, each request to the least busy")
    for url, requests, answers, errors, out in summary.endpoints:
        t.add_row(f"  {url}", f"{requests} requests, {answers} answers, {errors} errors"
                  + (f", taken out {out}x" if out else ""))  # fmt: skip
    cost = cost_row((summary.input_tokens, summary.output_tokens),
                    (summary.batch_input_tokens, summary.batch_output_tokens),
                    summary.price_in, summary.price_out)  # fmt: skip
    if cost is not None:
        t.add_row(*cost)
    if summary.correctness is not None:
        add_rows(t, summary.correctness)
    t.add_row("time", f"{summary.elapsed_s:.1f} s")
    answered = summary.answered_now + summary.reanswered
    if summary.sampling_s > 0 and answered:
        rate = answered / summary.sampling_s
        shown = f"{rate:.1f}" if rate >= 1 else f"{rate:.3g}"  # a slow local teacher: 0.04
        t.add_row("sampling phase", f"{shown} req/s over {summary.sampling_s:.2f} s")
    return t
