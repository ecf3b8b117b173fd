"""`promptdistill sample`: the teacher answers the persona's prompts -> RUN/samples.jsonl."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from promptdistill.cli.batch import (
    BatchApi,
    BatchFallback,
    BatchMaxRequests,
    BatchPoll,
    CancelBatches,
    PriceIn,
    PriceOut,
    ReadBatchFile,
    WriteBatchFile,
    batch_flag,
    batch_flags,
    check_batch_flags,
    check_batch_keep,
    print_batch_outcome,
)
from promptdistill.cli.common import DataDir, Turns, stdout
from promptdistill.cli.endpoints import BaseUrls, parse_base_urls
from promptdistill.core.answers import DEFAULT_ANSWER_PATTERN
from promptdistill.core.errors import UserError


def sample(  # long: one parameter per flag
    persona: Annotated[str, typer.Argument(help="Persona name (under personas/) or .yaml path.")],
    run_dir: Annotated[str, typer.Option("--run", help="Run directory (created if missing).")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Training prompts to answer.")],
    urls: BaseUrls = None,
    model: Annotated[
        str | None, typer.Option(help="Teacher model name (required with --base-url).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at most.")] = 64,
    rpm: Annotated[
        float | None, typer.Option(min=1, help="Requests per minute, spread evenly.")
    ] = None,
    tpm: Annotated[
        float | None, typer.Option(min=1, help="Tokens per minute (prompt + answer).")
    ] = None,
    timeout: Annotated[float, typer.Option(min=0.01, help="Seconds per request.")] = 120.0,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Answer length cap (default: the persona's).")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, max=2.0, help="Default: the persona's.")
    ] = None,
    top_p: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Default: the persona's (above 0).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Sampling seed sent to the teacher (default: the persona's).")
    ] = None,
    prompt_seed: Annotated[int, typer.Option(help="Seed of the prompt expansion.")] = 0,
    api_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the API key.")
    ] = "OPENAI_API_KEY",
    api_key_file: Annotated[
        str | None, typer.Option(help="File holding the API key (instead of the environment).")
    ] = None,
    heldout: Annotated[
        bool, typer.Option(help="Also answer the persona's held-out prompts (eval needs them).")
    ] = True,
    max_retries: Annotated[int, typer.Option(min=0, help="Retries per prompt.")] = 8,
    logprobs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Also store the teacher's top-K logprobs of every answer token (for "
            "`train --objective kd`; OpenAI allows up to 20).",
        ),
    ] = None,
    turns: Turns = None,
    data_dir: DataDir = None,
    keep: Annotated[
        str,
        typer.Option(
            help="all: train on every answer; correct: answers to prompts with a gold answer "
            "train only when their final answer is right (the rest stay in samples.jsonl, "
            "marked correct: false).",
        ),
    ] = "all",
    attempts: Annotated[
        int,
        typer.Option(
            min=1,
            help="With --keep correct: ask a training prompt up to this many times, each with "
            "a new seed, until an answer is right.",
        ),
    ] = 1,
    answer_pattern: Annotated[
        str,
        typer.Option(help="Regex whose group 1 is the final answer (as `eval` uses it)."),
    ] = DEFAULT_ANSWER_PATTERN,
    log_every: Annotated[
        float,
        typer.Option(min=0.1, help="Seconds between progress lines when stdout is not a terminal."),
    ] = 5.0,
    write_batch_file: WriteBatchFile = None,
    read_batch_file: ReadBatchFile = None,
    batch_api: BatchApi = None,
    batch_fallback: BatchFallback = None,
    cancel_batches: CancelBatches = False,
    batch_poll: BatchPoll = None,
    batch_max_requests: BatchMaxRequests = None,
    price_in: PriceIn = None,
    price_out: PriceOut = None,
) -> None:
    """Ask the teacher to answer N prompts of PERSONA; store them in RUN/samples.jsonl.

    Rerun the same command to resume: answered prompts are skipped, failed ones asked again.
    """
    import shlex

    from promptdistill.core.config import SampleConfig
    from promptdistill.core.merge import merge, validate
    from promptdistill.core.rundir import RunDir
    from promptdistill.personas import data_roots, load_persona, recorded_data_dir
    from promptdistill.sampling.sample import sample_run
    from promptdistill.sampling.summary import summary_table

    base_url, endpoints = parse_base_urls(urls)
    if base_url is not None and model is None:
        raise UserError("--model is required with --base-url (the teacher model's name)")
    # parse_base_urls checked every URL before anything is created (issue #16)
    check_batch_flags(
        write_batch_file, read_batch_file, cancel_batches, batch_api, urls, model, turns
    )
    loaded = load_persona(persona, data_roots(data_dir))
    flags = {
        "persona": persona,
        "n": n,
        "seed": prompt_seed,
        "include_heldout": heldout,
        "logprobs": logprobs,
        "turns": turns,
        "data_dir": recorded_data_dir(persona, loaded, data_dir),
        "price_in": price_in,
        "price_out": price_out,
        "batch": batch_flags(batch_api, batch_fallback, batch_poll, batch_max_requests),
        "keep": keep,
        "attempts": attempts,
        "answer_pattern": answer_pattern,
        "sampling": {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens,
                     "seed": seed},
        "teacher": {
            "base_url": base_url, "endpoints": endpoints, "model": model,
            "api_key_env": api_key_env,
            "api_key_file": api_key_file, "concurrency": concurrency, "rpm": rpm, "tpm": tpm,
            "timeout_s": timeout, "max_retries": max_retries,
        },
    }  # fmt: skip
    config = validate(
        SampleConfig, merge({"sampling": loaded.persona.sampling.model_dump()}, flags)
    )
    batch = batch_flag(write_batch_file, read_batch_file, config.batch.api)
    check_batch_keep(config.keep, config.attempts, None if cancel_batches else batch)
    console = stdout()
    # sample_run checks what it can, then creates the run and holds its lock (core/rundir.py)
    batches = None
    if write_batch_file or read_batch_file or cancel_batches or config.batch.api:
        from promptdistill.sampling.batch_run import BatchAction, batch_runner

        action = (BatchAction("write", write_batch_file) if write_batch_file
                  else BatchAction("read", read_batch_file) if read_batch_file
                  else BatchAction("cancel") if cancel_batches else None)  # fmt: skip
        batches = batch_runner(action)
    summary = sample_run(
        config, RunDir(run_dir), console=console, log_every_s=log_every, persona=loaded,
        batches=batches,
    )  # fmt: skip
    console.print(summary_table(summary))
    argv = ["promptdistill", *sys.argv[1:]]
    if print_batch_outcome(console, summary, write_batch_file, read_batch_file, cancel_batches,
                           argv):  # fmt: skip
        return
    if summary.complete:
        console.print(f"all {summary.requested} prompts answered: {RunDir(run_dir).samples}")
        return
    again = shlex.join(argv)
    if summary.interrupted:
        console.print(f"interrupted; everything answered is saved. Resume with: {again}")
        raise typer.Exit(128 + (summary.stop_signal or 2))
    console.print(
        f"{summary.failed} prompts failed (see {RunDir(run_dir).failures}); "
        f"rerun the same command to ask them again: {again}"
    )
    raise typer.Exit(1)
