"""`promptdistill train` and `promptdistill export`: the adapter, and a merged model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from promptdistill.cli.common import QuantizeOption, quantize_flag, stdout


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
    quantize: QuantizeOption = None,
    max_len: Annotated[
        int | None, typer.Option(help="Longest example in tokens (default 1024).")
    ] = None,
    overlong: Annotated[
        str | None, typer.Option(help="Longer examples: truncate (default, from the right), drop.")
    ] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Share of samples kept for validation (default 0.1).")
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            help="sft (the teacher's sampled tokens, default), kd (its whole next-token "
            "distribution) or onpolicy (the student's own answers, scored by the teacher)."
        ),
    ] = None,
    ce_weight: Annotated[
        float | None, typer.Option(help="kd: add this times the NLL of the sampled token.")
    ] = None,
    kd_tail: Annotated[  # kd from an endpoint's top K: the rest one more bucket, or renormalised
        str | None, typer.Option(help="kd from top-K logprobs: bucket (default) or renorm.")
    ] = None,
    hidden_weight: Annotated[
        float | None,
        typer.Option(
            help="kd: add this times an MSE on the last hidden states (same-size teacher)."
        ),
    ] = None,
    onpolicy_fraction: Annotated[
        float | None,
        typer.Option(help="onpolicy: the share of each step the student answers (rest: kd)."),
    ] = None,
    teacher_model: Annotated[
        str | None,
        typer.Option(help="kd/onpolicy: a local teacher model with the student's tokenizer."),
    ] = None,
    keep_loops: Annotated[
        bool | None,
        typer.Option(
            "--keep-loops/--drop-loops", help="Train on teacher answers that loop (default: drop)."
        ),
    ] = None,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Discard checkpoints and adapter; start over.")
    ] = False,
) -> None:
    """Train a LoRA adapter on the run's teacher answers, without the system prompt.

    Resumes from the last checkpoint in RUN/checkpoints/ if there is one (with the flags the run
    started with; flags you pass override them). Ctrl-C saves a checkpoint and stops.
    """
    from promptdistill.core.rundir import RunDir
    from promptdistill.training.run import resolve_configs, train_run

    run_dir = RunDir(run).require()
    flags = {
        "student": {"model": student, "dtype": dtype, "quantize": quantize_flag(quantize)},
        "datums": {
            "max_len": max_len, "overlong": overlong, "val_fraction": val_fraction,
            "keep_loops": keep_loops,
        },
        "train": {
            "epochs": epochs, "steps": steps, "lr": lr, "lora_r": lora_r,
            "lora_alpha": lora_alpha, "lora_dropout": lora_dropout,
            "target_modules": target_modules, "batch_tokens": batch_tokens,
            "grad_accum": grad_accum, "warmup": warmup, "schedule": schedule,
            "save_every": save_every, "eval_every": eval_every, "seed": seed,
            "objective": objective, "ce_weight": ce_weight, "hidden_weight": hidden_weight,
            "kd_tail": kd_tail,
            "onpolicy_fraction": onpolicy_fraction, "teacher_model": teacher_model,
        },
    }  # fmt: skip
    resolve_configs(run_dir, flags, fresh=fresh)  # a bad flag fails before the run is touched
    with run_dir.locked():  # one command writes a run at a time (core/rundir.py)
        student_cfg, datum_cfg, train_cfg = resolve_configs(run_dir, flags, fresh=fresh)
        result = train_run(run_dir, student_cfg, datum_cfg, train_cfg, stdout(), fresh=fresh)
    if result.interrupted:
        raise typer.Exit(130)


def export(
    run: Annotated[str, typer.Argument(help="Run directory.")],
    merged: Annotated[
        str | None, typer.Option(help="Output folder for the merged standalone model.")
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(help="Output folder for the distilled training set (system prompt stripped)."),
    ] = None,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="--dataset as: openai (chat fine-tuning JSONL, default), hf (save_to_disk), "
            "parquet.",
        ),
    ] = "openai",
    quantize: QuantizeOption = None,
) -> None:
    """Save the run's student as a standalone model (--merged), or its training set for other
    trainers (--dataset: OpenAI fine-tuning JSONL, a Hugging Face dataset, or Parquet).

    A student trained with --quantize 4bit is merged into its base dequantised from nf4 (the
    weights it was trained on); --quantize none merges into the original weights instead."""
    from promptdistill.core.errors import UserError
    from promptdistill.core.rundir import RunDir

    console = stdout()
    if (merged is None) == (dataset is None):
        raise UserError("pass one of --merged OUT (a merged model) and --dataset OUT (the data)")
    if merged is not None:
        from promptdistill.export import export_merged

        with RunDir(run).require().locked():  # train must not replace the adapter meanwhile
            export_merged(
                RunDir(run), Path(merged), log=lambda m: console.print(m, soft_wrap=True),
                quantize=quantize_flag(quantize),
            )  # fmt: skip
        return
    assert dataset is not None
    from promptdistill.datums.dataset import export_dataset

    done = export_dataset(RunDir(run), Path(dataset), fmt.lower())
    for w in done.warnings:
        console.print(f"note: {w}", soft_wrap=True)
    sizes = ", ".join(f"{k} {v}" for k, v in done.rows.items())
    left = {k: v for k, v in done.counts.items() if k != "records" and v}
    console.print(
        f"{done.format} dataset written to {done.out}: {sizes} conversations, system prompt "
        f"stripped ({done.counts['records']} samples read"
        + (f"; left out: {', '.join(f'{k} {v}' for k, v in left.items())}" if left else "")
        + ")",
        soft_wrap=True,
    )
    for f in done.files if done.format != "hf" else []:
        console.print(f"  {f}", soft_wrap=True)
