"""`promptdistill run` (every stage, resumable) and `promptdistill runs` (every run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from promptdistill.cli.batch import BatchApi, BatchFallback, batch_flags, check_batch_keep
from promptdistill.cli.common import DataDir, QuantizeOption, Turns, quantize_flag, stderr, stdout
from promptdistill.cli.endpoints import BaseUrls, parse_base_urls
from promptdistill.core.errors import UserError


def run_command(  # long: one parameter per flag
    persona: Annotated[str, typer.Argument(help="Persona name (under personas/) or .yaml path.")],
    run_dir: Annotated[
        str | None, typer.Option("--run", help="Run directory (default: runs/PERSONA[-PRESET]).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="A preset configuration: 'demo' (minutes on a laptop CPU).")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="Run config YAML: sample/train/eval sections.")
    ] = None,
    n: Annotated[int | None, typer.Option("-n", "--n", min=1, help="Prompts to sample.")] = None,
    urls: BaseUrls = None,
    model: Annotated[str | None, typer.Option(help="Teacher model name.")] = None,
    api_key_env: Annotated[str | None, typer.Option(help="Env var holding the API key.")] = None,
    api_key_file: Annotated[str | None, typer.Option(help="File holding the API key.")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Requests in flight.")] = None,
    rpm: Annotated[float | None, typer.Option(help="Requests per minute.")] = None,
    tpm: Annotated[float | None, typer.Option(help="Tokens per minute.")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="Teacher answer cap.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Teacher temperature.")] = None,
    student: Annotated[
        str | None, typer.Option(help="Student model (default smollm2-135m).")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Training epochs.")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (instead of epochs).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, bf16 or fp32.")] = None,
    quantize: QuantizeOption = None,
    objective: Annotated[
        str | None, typer.Option(help="What the student learns from: sft, kd or onpolicy.")
    ] = None,
    teacher_model: Annotated[
        str | None, typer.Option(help="kd/onpolicy: a local teacher with the student's tokenizer.")
    ] = None,
    logprobs: Annotated[
        int | None, typer.Option(min=1, help="Ask the endpoint for its top-K logprobs (for kd).")
    ] = None,
    keep_loops: Annotated[
        bool | None,
        typer.Option("--keep-loops/--drop-loops", help="Train on teacher answers that loop."),
    ] = None,
    keep: Annotated[
        str | None,
        typer.Option(help="all, or correct: train only on answers whose final answer is right."),
    ] = None,
    attempts: Annotated[
        int | None,
        typer.Option(min=1, help="With --keep correct: asks per training prompt, at most."),
    ] = None,
    answer_pattern: Annotated[
        str | None, typer.Option(help="Regex whose group 1 is the final answer (sample and eval).")
    ] = None,
    max_heldout: Annotated[int | None, typer.Option(help="Held-out prompts to evaluate.")] = None,
    judge: Annotated[
        bool | None, typer.Option("--judge/--no-judge", help="Score answers with an LLM judge.")
    ] = None,
    price_in: Annotated[float | None, typer.Option(help="USD per million input tokens.")] = None,
    price_out: Annotated[float | None, typer.Option(help="USD per million output tokens.")] = None,
    turns: Turns = None,
    data_dir: DataDir = None,
    batch_api: BatchApi = None,
    batch_fallback: BatchFallback = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Train while the teacher answers: one epoch over the samples as they arrive "
            "(for a remote teacher and a local GPU). Ctrl-C, then the same command, resumes both.",
        ),
    ] = False,
) -> None:
    """Do the whole job: sample, build examples, train, evaluate. Rerun to resume.

    Stages whose outputs are complete and match the configuration are skipped; a stage whose
    configuration changed is redone (its old outputs are moved to RUN/superseded/).
    """
    from promptdistill.core.rundir import RunDir
    from promptdistill.evaluation.report import print_summary
    from promptdistill.personas import data_roots, load_persona, recorded_data_dir
    from promptdistill.pipeline.config import resolve_config
    from promptdistill.pipeline.run import run_pipeline

    loaded = load_persona(persona, data_roots(data_dir))
    base_url, endpoints = parse_base_urls(urls)
    flags: dict[str, Any] = {
        "sample": {
            "n": n, "logprobs": logprobs, "turns": turns,
            "data_dir": recorded_data_dir(persona, loaded, data_dir),
            "price_in": price_in, "price_out": price_out,
            "batch": batch_flags(batch_api, batch_fallback, None, None),
            "keep": keep, "attempts": attempts, "answer_pattern": answer_pattern,
            "sampling": {"max_tokens": max_tokens, "temperature": temperature},
            "teacher": {
                "base_url": base_url, "endpoints": endpoints, "model": model,
                "api_key_env": api_key_env, "api_key_file": api_key_file,
                "concurrency": concurrency, "rpm": rpm, "tpm": tpm,
            },
        },
        "student": {"model": student, "dtype": dtype, "quantize": quantize_flag(quantize)},
        "datums": {"keep_loops": keep_loops},
        "train": {
            "epochs": epochs, "steps": steps, "lr": lr, "lora_r": lora_r, "objective": objective,
            "teacher_model": teacher_model,
        },
        "eval": {
            "answer_pattern": answer_pattern,
            "max_heldout": max_heldout, "price_in": price_in, "price_out": price_out,
            "judge": {"enabled": judge},
        },
        "stream": True if stream else None,  # a config file's `stream: true` stands otherwise
    }  # fmt: skip
    if base_url is not None and model is None:
        raise UserError("--model is required with --base-url (the teacher model's name)")
    if batch_api and len(urls or []) > 1:
        raise UserError("--batch-api takes one --base-url: the endpoint that holds the batches")
    cfg = resolve_config(
        persona, preset, config_file, flags, loaded.persona.sampling.model_dump(exclude_none=True)
    )
    check_batch_keep(
        cfg.sample.keep, cfg.sample.attempts, "--batch-api" if cfg.sample.batch.api else None
    )
    if cfg.sample.batch.api and cfg.stream:
        raise UserError(
            "--batch-api and --stream: a batch's answers come all at once, hours later; "
            "drop one of them (a --batch-api run trains once every batch is merged)"
        )
    name = loaded.name + (f"-{cfg.preset}" if cfg.preset else "")
    run = RunDir(run_dir or Path("runs") / name)
    console = stdout()
    console.print(f"run [bold]{run.path}[/]: persona {loaded.name}, preset {cfg.preset or 'none'}")
    result = run_pipeline(cfg, run, console)
    if result.report is not None:
        print_summary(console, result.report)
    console.print(
        f"\nreport: {run.report_md}\ntalk to both models: [bold]promptdistill compare {run.path}[/]"
    )


def runs(
    root: Annotated[Path, typer.Argument(help="Folder holding run directories.")] = Path("runs"),
) -> None:
    """List the runs with their stage status and headline metrics."""
    from promptdistill.pipeline.runs import list_runs

    def num(value: Any) -> str:
        return "—" if value is None else f"{value:.2f}"

    table = Table("run", "persona", "sample", "train", "eval", "prompt effect", "classifier")
    statuses = list_runs(root)
    for status in statuses:
        h = status.headline
        if status.broken is not None:
            table.add_row(str(status.path), "[red]broken[/]", "", "", "", "", "")
            continue
        table.add_row(
            str(status.path),
            status.persona,
            status.sample,
            status.train,
            status.eval,
            num(h.get("prompt_effect_recovered")),
            num(h.get("persona_classifier_student")),
        )
    if not table.row_count:
        stdout().print(f"no runs in {root}; start one with `promptdistill run PERSONA`")
        return
    stdout().print(table)
    for status in statuses:  # one line each, after the table, with the reason
        if status.broken is not None:
            stderr().print(
                f"[yellow]warning:[/] {status.path} is broken: {escape(status.broken)}",
                soft_wrap=True,
            )
