"""The batch flags of `sample` and `run` (issue #15), and what `sample` prints after a batch
command: the next step, or how to resume."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from promptdistill.core.errors import UserError

if TYPE_CHECKING:
    from promptdistill.sampling.summary import SampleSummary

WriteBatchFile = Annotated[
    Path | None,
    typer.Option(
        help="Write the unanswered prompts as an OpenAI-format batch file (for `vllm run-batch` "
        "or the Batch API's web console) and stop; no requests are made.",
        dir_okay=False,
    ),
]
ReadBatchFile = Annotated[
    Path | None,
    typer.Option(
        help="Merge a batch results file (`vllm run-batch -o FILE`, or the Batch API's output) "
        "into the run's samples; each prompt once, in any order.",
        dir_okay=False,
    ),
]
BatchApi = Annotated[
    bool | None,
    typer.Option(
        "--batch-api",
        help="Sample through the Batch API (/v1/files + /v1/batches): half the price, answers "
        "within 24 h. Rerun the same command to collect running batches.",
    ),
]
BatchFallback = Annotated[
    str | None,
    typer.Option(
        help="Lines a batch did not answer (failed, expired, cancelled): 'batch' (a follow-up "
        "batch, the default) or 'online'.",
    ),
]
CancelBatches = Annotated[
    bool, typer.Option("--cancel-batches", help="Cancel the run's running batches and stop.")
]
BatchPoll = Annotated[
    float | None,
    typer.Option(
        min=0.01,
        help="Seconds before the first poll of a batch (default 15); it "
        "grows 1.5x per poll up to 300 s.",
    ),  # fmt: skip
]
BatchMaxRequests = Annotated[
    int | None,
    typer.Option(min=1, max=50_000, help="Requests per batch at most (default 50000)."),
]
PriceIn = Annotated[
    float | None, typer.Option(min=0, help="Teacher price, USD per million input tokens.")
]
PriceOut = Annotated[
    float | None, typer.Option(min=0, help="Teacher price, USD per million output tokens.")
]


def batch_flags(
    batch_api: bool | None,
    fallback: str | None,
    poll: float | None,
    max_requests: int | None,
) -> dict[str, Any]:
    """The `batch` block of the sample configuration, from the flags (None: not given)."""
    if fallback is not None and fallback not in ("batch", "online"):
        raise UserError(f"--batch-fallback {fallback!r}: use 'batch' or 'online'")
    return {"api": batch_api, "fallback": fallback, "poll_s": poll, "max_requests": max_requests}


def check_batch_flags(
    write: Path | None, read: Path | None, cancel: bool, batch_api: bool | None,
    base_urls: list[str] | None, model: str | None, turns: int | None = None,
) -> None:  # fmt: skip
    """One batch command at a time, with what it needs (checked before the run is created)."""
    given = [name for name, on in (("--write-batch-file", write), ("--read-batch-file", read),
                                   ("--cancel-batches", cancel)) if on]  # fmt: skip
    if len(given) > 1:
        raise UserError(f"{' and '.join(given)}: give one of them at a time")
    if write is not None and model is None:
        raise UserError(
            "--write-batch-file needs --model: every request in the file names the model that "
            "is to answer it (e.g. the one `vllm run-batch --model M` serves)"
        )
    flag = "--cancel-batches" if cancel else "--batch-api"
    batch = batch_flag(write, read, batch_api)
    if batch is not None and turns is not None and turns > 1:  # batch_run.py says it again
        raise UserError(
            f"--turns {turns} with {batch}: a conversation's next turn is written from the "
            "teacher's answer, so it cannot be asked in a batch; sample it online"
        )
    if (batch_api or cancel) and not base_urls:
        raise UserError(
            f"{flag} needs --base-url (and --model): the endpoint with /v1/files and "
            "/v1/batches, e.g. https://api.openai.com/v1"
        )
    if (batch_api or cancel) and len(base_urls or []) > 1:
        raise UserError(f"{flag} takes one --base-url: the endpoint that holds the batches")


def batch_flag(write: Path | None, read: Path | None, batch_api: bool | None) -> str | None:
    """The batch flag that answers the prompts instead of online sampling, if any."""
    given = (("--write-batch-file", write), ("--read-batch-file", read), ("--batch-api", batch_api))
    return next((f for f, on in given if on), None)


def check_batch_keep(keep: str, attempts: int, batch: str | None) -> None:
    """--keep correct grades each answer as it arrives and asks a wrong one again (sampling/
    correct.py, issue #17); a batch's answers are graded too, but arrive all at once, after the
    batch (checked before the run is created; batch_run.py says it again)."""
    if batch is None or (keep != "correct" and attempts <= 1):
        return
    given = [f for f, on in (("--keep correct", keep == "correct"),
                             (f"--attempts {attempts}", attempts > 1)) if on]  # fmt: skip
    flag = " ".join(given)
    raise UserError(
        f"{flag} with {batch}: a batch's answers all arrive at its end, so no wrong one is "
        f"asked again; sample online (drop {batch}) to keep only correct answers"
    )


def print_batch_outcome(
    console: Console, summary: SampleSummary, write: Path | None, read: Path | None,
    cancel: bool, again: list[str],
) -> bool:  # fmt: skip
    """What to do next after a batch command; True when that is all there is to say."""
    import shlex

    if cancel:
        collect = _without(again, "--cancel-batches", value=False)
        online = _without(collect, "--batch-api", value=False)
        if not summary.batches_cancelled and not summary.batches_open:
            console.print("no batch of this run is running: nothing to cancel")
            if not summary.complete:
                console.print(f"ask the rest with:\n  {shlex.join(collect)}")
            return True
        console.print(
            "cancelled batches keep what they answered so far; collect it (and ask the rest "
            f"in a new batch) with:\n  {shlex.join(collect)}\nor ask the rest online:\n  "
            + shlex.join(online)
        )
        return True

    if write is not None:
        rest = _without(again, "--write-batch-file")
        model = summary.model
        console.print(
            f"wrote {summary.written} requests to {write}. Answer them, e.g. on a GPU node:\n"
            f"  vllm run-batch -i {shlex.quote(str(write))} -o results.jsonl --model "
            f"{shlex.quote(model)}\nthen merge the answers:\n  "
            + shlex.join([*rest, "--read-batch-file", "results.jsonl"])
        )
        return True
    if read is not None and not summary.complete:
        rest = _without(again, "--read-batch-file")
        left = summary.requested - summary.answered_before - summary.answered_now
        console.print(
            f"{left} prompts still have no answer ({summary.failed} of them failed, see "
            "failures.jsonl); write only those to a new batch file:\n  "
            + shlex.join([*rest, "--write-batch-file", "batch-2.jsonl"])
        )
        raise typer.Exit(1)
    if summary.batches_open and summary.interrupted:
        console.print(
            f"{summary.batches_open} batches keep running on the server. Collect them later: "
            f"{shlex.join(again)}\nor cancel them: {shlex.join([*again, '--cancel-batches'])}"
        )
        raise typer.Exit(128 + (summary.stop_signal or 2))  # SIGINT 130, SIGTERM 143
    return False


def _without(argv: list[str], flag: str, value: bool = True) -> list[str]:
    """`argv` without `flag` and its value (`--flag V` or `--flag=V`; none if not `value`)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = value
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out
