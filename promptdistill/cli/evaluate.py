"""`promptdistill eval`: did the student become the persona -> RUN/report.*"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from promptdistill.cli.common import QuantizeOption, quantize_flag, stderr, stdout
from promptdistill.core.answers import DEFAULT_ANSWER_PATTERN
from promptdistill.core.errors import UserError


def eval_command(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="Run directory (after train).")],
    base_url: Annotated[
        str | None,
        typer.Option(
            help="Teacher endpoint for latency and the default judge (default: the run's "
            "teacher; the embedded local teacher if it had none)."
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Teacher model name at --base-url.")] = None,
    judge_url: Annotated[
        str | None, typer.Option(help="Judge endpoint (default: the teacher endpoint).")
    ] = None,
    judge_model: Annotated[str | None, typer.Option(help="Judge model at --judge-url.")] = None,
    no_judge: Annotated[
        bool, typer.Option("--no-judge", help="Skip the LLM judge (the classifier still runs).")
    ] = False,
    api_key_env: Annotated[
        str | None,
        typer.Option(help="Environment variable with the API key (default: the run's)."),
    ] = None,
    price_in: Annotated[
        float | None, typer.Option(min=0.0, help="USD per million input tokens.")
    ] = None,
    price_out: Annotated[
        float | None, typer.Option(min=0.0, help="USD per million output tokens.")
    ] = None,
    max_heldout: Annotated[
        int | None, typer.Option(min=1, help="Score at most N held-out prompts.")
    ] = None,
    max_new_tokens: Annotated[
        int | None, typer.Option(min=1, help="Answer length cap (default: the run's).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for sampling, shuffling and subsets.")] = 0,
    answer_pattern: Annotated[
        str,
        typer.Option(help="Regex whose group 1 is the final answer (else the last line)."),
    ] = DEFAULT_ANSWER_PATTERN,
    batch_size: Annotated[int, typer.Option(min=1, help="Generation batch size.")] = 32,
    quantize: QuantizeOption = None,
    latency_requests: Annotated[
        int, typer.Option(min=0, help="Single requests timed per model (0: skip).")
    ] = 3,
    against: Annotated[
        str | None,
        typer.Option(help="Another evaluated run to put side by side with RUN."),
    ] = None,
) -> None:
    """Measure whether the student became the persona, and what it saves; write RUN/report.*"""
    import re

    from promptdistill.clients.endpoint import normalize_base_url
    from promptdistill.core.config import EvalConfig, JudgeConfig
    from promptdistill.core.merge import validate
    from promptdistill.core.rundir import RunDir

    try:
        re.compile(answer_pattern)
    except re.error as e:
        raise UserError(f"--answer-pattern {answer_pattern!r} is not a valid regex: {e}") from None
    if base_url is not None and model is None:
        raise UserError("--model is required with --base-url (the teacher model's name)")
    if judge_url is not None and judge_model is None:
        raise UserError("--judge-model is required with --judge-url (the judge model's name)")
    if base_url is not None:
        normalize_base_url(base_url)
    if judge_url is not None:
        normalize_base_url(judge_url, flag="--judge-url")
    judge = {"enabled": not no_judge, "base_url": judge_url, "model": judge_model, "seed": seed}
    cfg = validate(
        EvalConfig,
        {
            "base_url": base_url, "model": model, "api_key_env": api_key_env,
            "judge": validate(JudgeConfig, judge), "price_in": price_in, "price_out": price_out,
            "max_heldout": max_heldout, "max_new_tokens": max_new_tokens, "seed": seed,
            "answer_pattern": answer_pattern, "batch_size": batch_size,
            "latency_requests": latency_requests, "quantize": quantize_flag(quantize),
        },
    )  # fmt: skip
    from promptdistill.evaluation.report import (
        compare_reports,
        load_report,
        print_comparison,
        print_summary,
        write_comparison,
    )

    console = stdout()
    err = stderr()
    run = RunDir(run_dir).require()
    other = load_report(Path(against)) if against else None  # fail early, before the work
    from promptdistill.evaluation.evaluate import evaluate_and_write

    with run.locked():  # one command writes a run at a time (core/rundir.py)
        # with --against, an up-to-date RUN/report.json is reused rather than recomputed
        report = evaluate_and_write(
            run, cfg, say=lambda m: err.print(f"[dim]{m}[/]"), reuse=against is not None
        )
        print_summary(console, report)
        console.print(f"report: {run.report_md} and {run.report_json}")
        if other is not None:
            diff = compare_reports(report, other)
            print_comparison(console, diff)
            json_path, md_path = write_comparison(run, diff)
            console.print(f"comparison: {md_path} and {json_path}")
