"""The `promptdistill` command line: parse flags, build config models, call the library.

Keep this file thin. Heavy imports (torch, transformers) happen inside the commands that need
them, so `promptdistill sample` starts in a fraction of a second.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from promptdistill.errors import UserError

app = typer.Typer(
    help="Distill a persona's long system prompt into a small local student model.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
teacher_app = typer.Typer(help="Run the embedded local teacher.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")


def _console() -> Console:
    return Console(highlight=False)


# --------------------------------------------------------------------------- personas & prompts


@app.command()
def personas(
    tokenizer: Annotated[
        str, typer.Option(help="Model whose tokenizer counts the system-prompt tokens.")
    ] = "smollm2-135m",
) -> None:
    """List the personas with their system prompt's token count."""
    from promptdistill.personas import load_all_personas
    from promptdistill.tokens import count_tokens

    loaded = load_all_personas()
    table = Table("persona", "description", "prompt sets", "system tokens", "words")
    for p in loaded:
        table.add_row(
            p.name,
            p.persona.description,
            ", ".join(p.persona.prompt_sets),
            str(count_tokens(p.persona.system_prompt, tokenizer)),
            str(len(p.persona.system_prompt.split())),
        )
    _console().print(table)


@app.command()
def prompts(
    persona: Annotated[str, typer.Argument(help="Persona name or path to its .yaml file.")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="How many prompts.")] = 20,
    seed: Annotated[int, typer.Option(help="Expansion seed.")] = 0,
    heldout: Annotated[bool, typer.Option(help="Show the fixed held-out prompts instead.")] = False,
    show_ids: Annotated[
        bool, typer.Option("--ids", help="Prefix each prompt with its id.")
    ] = False,
) -> None:
    """Preview the expanded user prompts of a persona, one per line."""
    from promptdistill.personas import expand_prompts, heldout_prompts, load_persona

    loaded = load_persona(persona)
    items = heldout_prompts(loaded)[:n] if heldout else expand_prompts(loaded, n, seed)
    out = sys.stdout
    for p in items:
        text = p.text.replace("\n", " ")
        out.write(f"{p.id}\t{text}\n" if show_ids else f"{text}\n")


# --------------------------------------------------------------------------- later stages
# sample (issue #3) ---------------------------------------------------------------------------


@app.command()
def sample(
    persona: Annotated[str, typer.Argument(help="Persona name (under personas/) or .yaml path.")],
    run_dir: Annotated[str, typer.Option("--run", help="Run directory (created if missing).")],
    n: Annotated[int, typer.Option("-n", "--n", min=1, help="Training prompts to answer.")],
    base_url: Annotated[
        str | None,
        typer.Option(
            help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (a bare host gets "
            "/v1 added). Leave out to start the embedded local teacher."
        ),
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Teacher model name (required with --base-url).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at most.")] = 64,
    rpm: Annotated[
        float | None, typer.Option(min=0.001, help="Requests per minute, spread evenly.")
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
        float | None, typer.Option(min=0.0, max=1.0, help="Default: the persona's.")
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
    log_every: Annotated[
        float, typer.Option(help="Seconds between progress lines when stdout is not a terminal.")
    ] = 5.0,
) -> None:
    """Ask the teacher to answer N prompts of PERSONA; store them in RUN/samples.jsonl.

    Rerun the same command to resume: answered prompts are skipped, failed ones asked again.
    """
    import shlex

    from promptdistill.config import SampleConfig, TeacherConfig
    from promptdistill.personas import load_persona
    from promptdistill.store import RunDir
    from promptdistill.teacher.progress import summary_table
    from promptdistill.teacher.sample import sample_run, sampling_for

    if base_url is not None and model is None:
        raise UserError("--model is required with --base-url (the teacher model's name)")
    loaded = load_persona(persona)
    try:
        config = SampleConfig(
            persona=persona,
            n=n,
            seed=prompt_seed,
            include_heldout=heldout,
            sampling=sampling_for(loaded, temperature, top_p, max_tokens, seed),
            teacher=TeacherConfig(
                base_url=base_url,
                model=model or "smollm2-135m",
                api_key_env=api_key_env,
                api_key_file=api_key_file,
                concurrency=concurrency,
                rpm=rpm,
                tpm=tpm,
                timeout_s=timeout,
                max_retries=max_retries,
            ),
        )
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise UserError(f"invalid option: {' '.join(str(e).split())}") from None
    console = _console()
    summary = sample_run(
        config, RunDir(run_dir), console=console, log_every_s=log_every, persona=loaded
    )
    console.print(summary_table(summary))
    if summary.complete:
        console.print(f"all {summary.requested} prompts answered: {RunDir(run_dir).samples}")
        return
    again = shlex.join(["promptdistill", *sys.argv[1:]])
    if summary.interrupted:
        console.print(f"interrupted; everything answered is saved. Resume with: {again}")
        raise typer.Exit(130)
    console.print(
        f"{summary.failed} prompts failed (see {RunDir(run_dir).failures}); "
        f"rerun the same command to ask them again: {again}"
    )
    raise typer.Exit(1)


# teacher serve (issue #4) --------------------------------------------------------------------


@teacher_app.command("serve")
def teacher_serve(
    model: Annotated[
        str, typer.Option(help="Model name (smollm2-135m), local model directory or hub id.")
    ] = "smollm2-135m",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    host: Annotated[
        str, typer.Option(help="Address to listen on (keep it loopback).")
    ] = "127.0.0.1",
    dtype: Annotated[
        str, typer.Option(help="auto (bf16 where the CPU has it, else fp32), bf16 or fp32.")
    ] = "auto",
    kv_cache_tokens: Annotated[
        int,
        typer.Option(min=0, help="KV-cache size in tokens; 0: transformers' own (60% of RAM)."),
    ] = 32768,
) -> None:
    """Serve the embedded teacher (transformers serve) until Ctrl-C, and say how to use it."""
    import shlex
    import signal
    import time

    from promptdistill.teacher.local import running_local_teacher

    console = _console()

    def say(msg: str) -> None:
        console.print(msg, soft_wrap=True)

    def stop_on_sigterm(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # `kill PID` stops the server as cleanly as Ctrl-C

    previous_sigterm = signal.signal(signal.SIGTERM, stop_on_sigterm)
    # Started in the background by a shell, we inherit SIGINT ignored; `kill -INT` must still work.
    previous_sigint = signal.signal(signal.SIGINT, signal.default_int_handler)
    say(f"starting the local teacher ({model}) on {host}:{port} ...")
    try:
        with running_local_teacher(
            model, port=port, host=host, log=say, dtype=dtype, kv_cache_tokens=kv_cache_tokens
        ) as teacher:
            example = shlex.join(
                ["promptdistill", "sample", "beethoven", "--run", "runs/beethoven", "-n", "1000"]
                + ["--base-url", teacher.base_url, "--model", teacher.model]
            )
            say(f"local teacher ready at {teacher.base_url}")
            say(f"  base URL: {teacher.base_url}")
            say(f"  model:    {teacher.model}")
            say(f"  log:      {teacher.log_path}")
            say(f"use it with:\n  {example}")
            say("Ctrl-C stops it.")
            try:
                while teacher.alive():
                    time.sleep(0.5)
                teacher.check()  # it died on its own: say why
            except KeyboardInterrupt:
                say("stopping the local teacher ...")
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        signal.signal(signal.SIGINT, previous_sigint)
    say("local teacher stopped")


# train, export (issue #5) --------------------------------------------------------------------


@app.command()
def train(
    run: Annotated[str, typer.Argument(help="Run directory (holds samples.jsonl).")],
    student: Annotated[
        str | None, typer.Option(help="Student: name, local dir or hub id (default smollm2-135m).")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option(help="Passes over the train split (default 2).")
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Optimizer steps, instead of --epochs.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 5e-4).")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank (default 16).")] = None,
    lora_alpha: Annotated[
        float | None, typer.Option(help="LoRA alpha; the scale is alpha/r (default 32).")
    ] = None,
    lora_dropout: Annotated[float | None, typer.Option(help="LoRA dropout (default 0).")] = None,
    target_modules: Annotated[
        str | None, typer.Option(help="all-linear (default) or a comma list, e.g. q_proj,v_proj.")
    ] = None,
    batch_tokens: Annotated[
        int | None, typer.Option(help="Tokens per micro-batch, padding included (default 4096).")
    ] = None,
    grad_accum: Annotated[
        int | None, typer.Option(help="Micro-batches per optimizer step (default 1).")
    ] = None,
    warmup: Annotated[int | None, typer.Option(help="Warmup steps (default 10).")] = None,
    schedule: Annotated[
        str | None, typer.Option(help="Learning-rate schedule: cosine (default), linear, constant.")
    ] = None,
    save_every: Annotated[
        int | None, typer.Option(help="Checkpoint every N steps (default 50).")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Validation loss every N steps (default 25).")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of LoRA init and data order (default 0).")
    ] = None,
    dtype: Annotated[
        str | None, typer.Option(help="Base weights: auto (bf16 where supported), bf16, fp32.")
    ] = None,
    max_len: Annotated[
        int | None, typer.Option(help="Longest example in tokens (default 1024).")
    ] = None,
    overlong: Annotated[
        str | None, typer.Option(help="Longer examples: truncate (default, from the right), drop.")
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Share of samples kept for validation (default 0.1).")
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Discard checkpoints and adapter; start over.")
    ] = False,
) -> None:
    """Train a LoRA adapter on the run's teacher answers, without the system prompt.

    Resumes from the last checkpoint in RUN/checkpoints/ if there is one (with the flags the run
    started with; flags you pass override them). Ctrl-C saves a checkpoint and stops.
    """
    from promptdistill.store import RunDir
    from promptdistill.train import resolve_configs
    from promptdistill.train import train as run_training

    run_dir = RunDir(run).require()
    overrides = {
        "student": student,
        "dtype": dtype,
        "epochs": epochs,
        "steps": steps,
        "lr": lr,
        "lora_r": lora_r,
        "lora_alpha": lora_alpha,
        "lora_dropout": lora_dropout,
        "target_modules": target_modules,
        "batch_tokens": batch_tokens,
        "grad_accum": grad_accum,
        "warmup": warmup,
        "schedule": schedule,
        "save_every": save_every,
        "eval_every": eval_every,
        "seed": seed,
        "max_len": max_len,
        "overlong": overlong,
        "val_fraction": val_fraction,
    }
    student_cfg, datum_cfg, train_cfg = resolve_configs(run_dir, overrides, fresh=fresh)
    result = run_training(run_dir, student_cfg, datum_cfg, train_cfg, _console(), fresh=fresh)
    if result.interrupted:
        raise typer.Exit(130)


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="Run directory with a trained adapter.")],
    merged: Annotated[str, typer.Option(help="Output directory for the merged standalone model.")],
) -> None:
    """Merge the run's LoRA adapter into its base model and save a standalone model."""
    from pathlib import Path

    from promptdistill.export import export_merged
    from promptdistill.store import RunDir

    console = _console()
    export_merged(RunDir(run), Path(merged), log=lambda m: console.print(m, soft_wrap=True))


# eval (issue #6) -----------------------------------------------------------------------------


@app.command("eval")
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
    ] = r"Final Answer:\s*(.+)",
    batch_size: Annotated[int, typer.Option(min=1, help="Generation batch size.")] = 32,
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
    from pathlib import Path

    from promptdistill.config import EvalConfig, JudgeConfig
    from promptdistill.store import RunDir

    try:
        re.compile(answer_pattern)
    except re.error as e:
        raise UserError(f"--answer-pattern {answer_pattern!r} is not a valid regex: {e}") from None
    if base_url is not None and model is None:
        raise UserError("--model is required with --base-url (the teacher model's name)")
    if judge_url is not None and judge_model is None:
        raise UserError("--judge-model is required with --judge-url (the judge model's name)")
    cfg = EvalConfig(
        base_url=base_url,
        model=model,
        api_key_env=api_key_env,
        judge=JudgeConfig(enabled=not no_judge, base_url=judge_url, model=judge_model, seed=seed),
        price_in=price_in,
        price_out=price_out,
        max_heldout=max_heldout,
        max_new_tokens=max_new_tokens,
        seed=seed,
        answer_pattern=answer_pattern,
        batch_size=batch_size,
        latency_requests=latency_requests,
    )
    from promptdistill.report import (
        compare_reports,
        load_report,
        print_comparison,
        print_summary,
        write_comparison,
    )

    console = _console()
    err = Console(stderr=True, highlight=False)
    run = RunDir(run_dir).require()
    other = load_report(Path(against)) if against else None  # fail early, before the work
    from promptdistill.evaluate import evaluate_and_write

    # with --against, an up-to-date RUN/report.json is reused rather than recomputed
    report = evaluate_and_write(
        run, cfg, say=lambda m: err.print(f"[dim]{m}[/]"), reuse=against is not None
    )
    print_summary(console, report)
    console.print(f"report: {run.file('report.md')} and {run.file('report.json')}")
    if other is not None:
        diff = compare_reports(report, other)
        print_comparison(console, diff)
        json_path, md_path = write_comparison(run, diff)
        console.print(f"comparison: {md_path} and {json_path}")


# compare (issue #7) --------------------------------------------------------------------------


@app.command()
def compare(
    run_dir: Annotated[str, typer.Argument(metavar="RUN", help="Run directory (after train).")],
    base_url: Annotated[
        str | None,
        typer.Option(help="Teacher endpoint (OpenAI-compatible). Default: the run's teacher."),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Teacher model name.")] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the teacher's API key.")
    ] = None,
    api_key_file: Annotated[
        str | None, typer.Option(help="File holding the teacher's API key.")
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option(
            help="Ask this and print the answers (no REPL). Repeat for a multi-turn conversation."
        ),
    ] = None,
    json_out: Annotated[
        bool, typer.Option("--json", help="Print one JSON object per prompt instead of text.")
    ] = False,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, max=2.0, help="Default: the run's sampling.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Answer length cap. Default: the run's sampling.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Sampling seed. Default: the run's.")] = None,
    base: Annotated[
        bool, typer.Option("--base", help="Also show the base model (no prompt, no adapter).")
    ] = False,
) -> None:
    """Ask the teacher (with the system prompt) and the student (without it) side by side.

    On a terminal this opens a REPL (/help lists its commands). With --prompt, or prompts piped
    on stdin one per line, it prints the answers as text (teacher first) or JSON lines (--json).
    """
    import contextlib

    from promptdistill.compare_view import JsonView, PlainView, RichView, View
    from promptdistill.config import CompareConfig
    from promptdistill.repl import open_session, repl, stream_reader, terminal_reader
    from promptdistill.store import RunDir

    cfg = CompareConfig(
        base_url=base_url,
        model=model,
        api_key_env=api_key_env,
        api_key_file=api_key_file,
        temperature=temperature,
        max_tokens=max_tokens,
        seed=seed,
        base=base,
    )
    interactive = not prompt and sys.stdin.isatty()
    view: View
    if json_out:
        view = JsonView()
    elif interactive and sys.stdout.isatty():
        view = RichView(_console())
    else:
        view = PlainView()
    with contextlib.ExitStack() as stack:
        session = open_session(RunDir(run_dir), cfg, stack, view.info)
        if prompt:
            read = stream_reader(prompt)
        elif interactive:
            read = terminal_reader(stack)
            view.info(session.banner())
        else:
            read = stream_reader()
        failed = repl(session, view, read, interactive)
    if failed and not interactive:
        raise typer.Exit(1)


# run, runs (issue #8) ------------------------------------------------------------------------


@app.command("run")
def run_command(
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
    base_url: Annotated[
        str | None, typer.Option(help="Teacher endpoint; leave out for the local teacher.")
    ] = None,
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
    max_heldout: Annotated[int | None, typer.Option(help="Held-out prompts to evaluate.")] = None,
    judge: Annotated[
        bool | None, typer.Option("--judge/--no-judge", help="Score answers with an LLM judge.")
    ] = None,
    price_in: Annotated[float | None, typer.Option(help="USD per million input tokens.")] = None,
    price_out: Annotated[float | None, typer.Option(help="USD per million output tokens.")] = None,
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
    from promptdistill.personas import load_persona
    from promptdistill.pipeline import resolve_config, run_pipeline
    from promptdistill.report import print_summary
    from promptdistill.store import RunDir

    loaded = load_persona(persona)
    flags: dict[str, Any] = {
        "sample": {
            "n": n,
            "sampling": {"max_tokens": max_tokens, "temperature": temperature},
            "teacher": {
                "base_url": base_url,
                "model": model,
                "api_key_env": api_key_env,
                "api_key_file": api_key_file,
                "concurrency": concurrency,
                "rpm": rpm,
                "tpm": tpm,
            },
        },
        "student": {"model": student, "dtype": dtype},
        "train": {"epochs": epochs, "steps": steps, "lr": lr, "lora_r": lora_r},
        "eval": {
            "max_heldout": max_heldout,
            "price_in": price_in,
            "price_out": price_out,
            "judge": {"enabled": judge},
        },
        "stream": True if stream else None,  # a config file's `stream: true` stands otherwise
    }
    if base_url is not None and model is None:
        raise UserError("--model is required with --base-url (the teacher model's name)")
    cfg = resolve_config(
        persona, preset, config_file, flags, loaded.persona.sampling.model_dump(exclude_none=True)
    )
    if steps is not None and epochs is None:
        cfg.train.epochs = None  # --steps replaces the epoch count of lower layers
    name = loaded.name + (f"-{cfg.preset}" if cfg.preset else "")
    run = RunDir(run_dir or Path("runs") / name)
    console = _console()
    console.print(f"run [bold]{run.path}[/]: persona {loaded.name}, preset {cfg.preset or 'none'}")
    result = run_pipeline(cfg, run, console)
    if result.report is not None:
        print_summary(console, result.report)
    console.print(
        f"\nreport: {run.file('report.md')}\n"
        f"talk to both models: [bold]promptdistill compare {run.path}[/]"
    )


@app.command()
def runs(
    root: Annotated[Path, typer.Argument(help="Folder holding run directories.")] = Path("runs"),
) -> None:
    """List the runs with their stage status and headline metrics."""
    from promptdistill.pipeline import list_runs

    def num(value: Any) -> str:
        return "—" if value is None else f"{value:.2f}"

    table = Table("run", "persona", "sample", "train", "eval", "prompt effect", "classifier")
    for status in list_runs(root):
        h = status.headline
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
        _console().print(f"no runs in {root}; start one with `promptdistill run PERSONA`")
        return
    _console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point: every UserError becomes one line on stderr and a non-zero exit."""
    # `kill` and `timeout` send SIGTERM: unwind like Ctrl-C does, so context managers stop the
    # local teacher subprocess and flush files instead of leaving a server running
    signal.signal(signal.SIGTERM, _terminate)
    try:
        # standalone_mode=False: click *returns* the code of a `typer.Exit(code)` raised by a
        # command instead of raising it, so it must be passed on here
        rc = app(args=argv, standalone_mode=False)
    except UserError as e:
        _print_error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        return 130
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        Console(stderr=True).print("aborted")
        return 130
    except typer.TyperException as e:  # bad flags and arguments, raised by typer's click
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        command = " ".join(["promptdistill", *(argv if argv is not None else sys.argv[1:])[:1]])
        _print_error(f"{message} (see `{command} --help`)")
        return int(getattr(e, "exit_code", 2))
    return rc if isinstance(rc, int) else 0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _print_error(message: str) -> None:
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        "[bold red]error:[/] " + escape(" ".join(message.split())), markup=True
    )


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
