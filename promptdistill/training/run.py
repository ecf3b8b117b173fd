"""`promptdistill train RUN`: samples -> datums -> a LoRA adapter, resumable.

`train_run` reads top to bottom: configuration -> datums -> student -> batch source -> resume
from the last checkpoint -> the loop (training/loop.py) -> the adapter and the loss curve.
Resume is exact: the data order is a pure function of (seed, epoch), and a checkpoint holds
the adapter, AdamW state, step, RNG states and data position (training/checkpoint.py).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptdistill.core.config import DatumConfig, StudentConfig, TrainConfig
from promptdistill.core.errors import UserError
from promptdistill.core.io import replace_dir, writing
from promptdistill.core.merge import merge, validate
from promptdistill.core.plots import plot_dashboard, plot_loss
from promptdistill.core.rundir import RunDir
from promptdistill.datums.store import Datums, prepare_datums
from promptdistill.training.checkpoint import (
    Checkpointer,
    check_resumable,
    checkpoint_dirs,
    fresh_start,
    load_checkpoint,
    trim_metrics,
)
from promptdistill.training.display import StepLog, fmt_time
from promptdistill.training.distributed import Dist
from promptdistill.training.loop import train
from promptdistill.training.sources import Batching, BatchSource, EpochSource
from promptdistill.training.student import Student, load_student

# A batch source made once the batching is known (the student decides padding or packing):
# `EpochSource` over RUN/datums by default, a `SampleStream` under `run --stream`.
SourceFactory = Callable[[Batching], BatchSource]


@dataclass(kw_only=True)
class TrainResult:
    steps: int
    total_steps: int
    train_loss: float | None
    val_loss: float | None
    adapter: Path | None
    interrupted: bool
    resumed_from: int | None
    tokens_per_s: float
    data_wait_fraction: float


def resolve_configs(
    run: RunDir, flags: dict[str, Any], fresh: bool = False
) -> tuple[StudentConfig, DatumConfig, TrainConfig]:
    """The run's recorded `train` stage (when resuming, so `promptdistill train RUN` goes on
    with the flags it started with), with the flags given on top. `flags` has the sections
    `student`, `datums` and `train`."""
    run.read_config()  # a broken config.yaml is one line now, not after datums and model (#16)
    saved = run.stage_config("train") if (checkpoint_dirs(run) and not fresh) else None
    sections = ("student", "datums", "train")
    merged = merge({k: (saved or {}).get(k) or {} for k in sections}, flags)
    return (
        validate(StudentConfig, merged.get("student", {})),
        validate(DatumConfig, merged.get("datums", {})),
        validate(TrainConfig, merged.get("train", {})),
    )


def train_run(
    run: RunDir,
    student_cfg: StudentConfig,
    datum_cfg: DatumConfig,
    cfg: TrainConfig,
    console: Any,
    fresh: bool = False,
    stream: SourceFactory | None = None,
) -> TrainResult:
    """Train the run's adapter on RUN/datums; with `stream`, on the batches it makes."""
    from promptdistill.training.malloc import reuse_freed_memory

    with reuse_freed_memory():  # no page faults for each step's activations (malloc.py)
        return _train_run(run, student_cfg, datum_cfg, cfg, console, fresh, stream)


def _train_run(
    run: RunDir,
    student_cfg: StudentConfig,
    datum_cfg: DatumConfig,
    cfg: TrainConfig,
    console: Any,
    fresh: bool,
    stream: SourceFactory | None,
) -> TrainResult:
    run.require()
    if not run.samples.exists():
        raise UserError(f"{run.samples} does not exist; run `promptdistill sample` first")
    dist = Dist.from_env()
    say = console.print if dist.main else (lambda *a, **k: None)
    if fresh and dist.main:
        fresh_start(run)

    # ---- data, student, batches, objective
    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_tokenizer
    from promptdistill.training.distill import objective_for

    renderer = Renderer(load_tokenizer(student_cfg.model))
    make_source = stream or _epoch_source(run, renderer, student_cfg, datum_cfg, cfg, dist, say)
    student = load_student(student_cfg, cfg, dist)
    source = make_source(
        Batching(
            budget=cfg.batch_tokens,
            mode=student.mode,
            pin=dist.device.type == "cuda",
            rank=dist.rank,
            world=dist.world,
            grad_accum=cfg.grad_accum,
        )
    )
    objective = objective_for(cfg, student, renderer, run)

    # ---- resume from the last checkpoint, if any
    ckpts = checkpoint_dirs(run)
    start_step, position = _resume(run, ckpts, student, source.fingerprint, cfg, student_cfg)
    resumed_from = start_step if ckpts else None
    source.start(position)
    total = source.estimated_steps(start_step)
    if ckpts and start_step >= total and run.has_adapter():
        source.close()
        say(
            f"{run.path} is already trained ({start_step}/{total} steps); nothing to do "
            "(pass --steps to train longer, or --fresh to start over)"
        )
        return TrainResult(
            steps=start_step, total_steps=total, train_loss=None, val_loss=None,
            adapter=run.adapter, interrupted=False, resumed_from=resumed_from,
            tokens_per_s=0.0, data_wait_fraction=0.0,
        )  # fmt: skip
    if ckpts:
        say(f"resuming from {ckpts[-1].name} (step {start_step}/{total})")

    config_record = _config_record(student, student_cfg, datum_cfg, cfg, total, stream)
    if dist.main:
        run.save_stage_config("train", config_record)
    say(
        f"training {student_cfg.model} ({_precision(student, student_cfg)}, {dist.device}), "
        "objective "
        f"{objective.name}, with LoRA "
        f"r={cfg.lora_r} on {cfg.target_modules}: {student.trainable_params / 1e6:.2f}M "
        f"trainable params, {total} steps of <= {cfg.batch_tokens} tokens x {cfg.grad_accum} "
        f"({source.describe()}, {student.mode} batching)"
    )

    # ---- the loop
    log = StepLog(console, run.metrics if dist.main else None, total, start_step)
    checkpoints = Checkpointer(
        run, student.model, student.optimizer,
        {"config": config_record, "datums_fingerprint": source.fingerprint},
        cfg.keep_checkpoints, enabled=dist.main,
    )  # fmt: skip
    wait_start = source.wait_s
    out = train(
        student, source, objective, cfg, start_step=start_step, position=position,
        resumed=_validated(run, resumed_from), log=log, checkpoints=checkpoints,
    )  # fmt: skip
    wait = (source.wait_s - wait_start) / max(log.loop_s, 1e-9)
    result = TrainResult(
        steps=out.steps, total_steps=out.total_steps, train_loss=log.last_loss,
        val_loss=log.val_loss, adapter=None, interrupted=out.interrupted,
        resumed_from=resumed_from, tokens_per_s=log.tokens_per_s, data_wait_fraction=wait,
    )  # fmt: skip
    if out.interrupted:
        say(
            f"{'interrupted' if stream is None else 'stopped'} at step {out.steps}/"
            f"{out.total_steps}: checkpoint saved to {run.checkpoints}/step-{out.steps:06d}; "
            + source.resume_hint(run)
        )
        return result

    # ---- the adapter, written so that a crash never leaves the run without one
    if dist.main:
        _save_adapter(run, student)
        say(
            f"done: {out.steps} steps in {fmt_time(time.perf_counter() - log.started)}, "
            f"{log.tokens_per_s:,.0f} tokens/s, data wait {100 * wait:.1f}%; "
            f"train loss {log.last_loss:.4f}"
            + (f", val loss {log.val_loss:.4f}" if log.val_loss is not None else "")
            + f"\nadapter: {run.adapter}   loss curve: {run.loss_png}   dashboard: "
            f"{run.train_dashboard}"
        )
        if (extra := objective.costs(log.loop_s)) is not None:
            say(extra)
        if cfg.lora_r > 16:
            say(
                f"note: vLLM serves LoRA rank <= 16 by default; pass --max-lora-rank "
                f"{cfg.lora_r} to `vllm serve`"
            )
    dist.barrier()
    sys.stdout.flush()
    result.adapter = run.adapter
    return result


def _resume(
    run: RunDir,
    ckpts: list[Path],
    student: Student,
    fingerprint: str,
    cfg: TrainConfig,
    student_cfg: StudentConfig,
) -> tuple[int, Any]:
    """(step, data position) of the last checkpoint, loaded into the student and optimizer;
    (0, None) without one. metrics.jsonl keeps only what came before that step."""
    if not ckpts:
        if student.dist.main:
            run.metrics.unlink(missing_ok=True)  # a run killed before its first checkpoint
        return 0, None
    last = ckpts[-1]
    state = json.loads((last / "state.json").read_text())
    check_resumable(state, cfg, student_cfg, fingerprint, last)
    state = load_checkpoint(last, student.model, student.optimizer)
    if student.dist.main:
        trim_metrics(run.metrics, state["step"])
    return int(state["step"]), state["data_position"]


def _validated(run: RunDir, step: int | None) -> bool:
    """Does metrics.jsonl hold the validation of `step`, the step resumed from? A run killed
    between that checkpoint and its validation has not, and validates again (issue #16)."""
    from promptdistill.core.io import read_jsonl

    if step is None:
        return False
    if step == 0:
        return True
    return any(r.get("type") == "eval" and r.get("step") == step for r in read_jsonl(run.metrics))


def _save_adapter(run: RunDir, student: Student) -> None:
    """RUN/adapter, replaced atomically, the loss curve and the dashboard."""
    tmp = run.file(f".{run.adapter.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with writing(run.adapter):
            student.save_adapter(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, run.adapter)
    rows = _metrics(run)
    with writing(run.loss_png):
        plot_loss(rows, run.loss_png, f"promptdistill train: {run.path.name}")
    with writing(run.train_dashboard):
        plot_dashboard(rows, run.train_dashboard, f"promptdistill train: {run.path.name}")


def _epoch_source(
    run: RunDir,
    renderer: Any,
    student_cfg: StudentConfig,
    datum_cfg: DatumConfig,
    cfg: TrainConfig,
    dist: Dist,
    say: Callable[..., None],
) -> SourceFactory:
    """RUN/datums, built (by rank 0) if the samples, datum settings or tokenizer changed."""
    if not dist.main:
        dist.barrier()  # rank 0 builds the datums; the others then read them
    data, rebuilt = prepare_datums(run, renderer, datum_cfg, student_cfg.model)
    if dist.main:
        dist.barrier()
    _say_datums(data, datum_cfg, rebuilt, say)
    fingerprint = json.loads((run.datums / "fingerprint.json").read_text())["fingerprint"]
    return lambda batching: EpochSource(data, fingerprint, cfg, batching)


def _say_datums(data: Datums, cfg: DatumConfig, rebuilt: bool, say: Callable[..., None]) -> None:
    from promptdistill.core.samples import skipped_note
    from promptdistill.datums.build import prefix_note

    st = data.stats
    say(
        f"datums: {st['train']['examples']} train / {st['val']['examples']} val examples, "
        f"{st['train']['loss_tokens']} answer tokens to learn; {st['truncated']} truncated, "
        f"{st['dropped']} dropped (> --max-len {cfg.max_len}); teacher answers left out: "
        f"{st.get('loops', 0)} looping"
        + (" (kept: --keep-loops)" if cfg.keep_loops else "")
        + f", {st.get('empty', 0)} empty{prefix_note(st)}"
        + (f", {st['incorrect']} wrong (--keep correct)" if st.get("keep") == "correct" else "")
        + "; system prompt removed: "
        f"{st['system_tokens_removed_mean']:.0f} tokens/example" + ("" if rebuilt else " (cached)")
    )
    if st.get("skipped_lines"):
        say(f"[yellow]warning:[/] {skipped_note(st['skipped_first'], st['skipped_lines'])}")


def _config_record(
    student: Student,
    student_cfg: StudentConfig,
    datum_cfg: DatumConfig,
    cfg: TrainConfig,
    total: int,
    stream: SourceFactory | None,
) -> dict[str, Any]:
    """The train stage of RUN/config.yaml (and of every checkpoint)."""
    return {
        "student": student_cfg.model_dump(),
        "datums": datum_cfg.model_dump(),
        "train": cfg.model_dump(),
        "total_steps": total,
        "batching": student.mode,
        "dtype": _dtype(student),
        "device": str(student.device),
        "world_size": student.dist.world,
        "trainable_params": student.trainable_params,
        "stream": stream is not None,
    }


def _dtype(student: Student) -> str:
    return str(student.dtype).removeprefix("torch.")


def _precision(student: Student, cfg: StudentConfig) -> str:
    if cfg.quantize == "4bit":
        return f"4-bit nf4 base (double quantised), {_dtype(student)} compute, fp32 LoRA"
    return _dtype(student)


def _metrics(run: RunDir) -> list[dict[str, Any]]:
    from promptdistill.core.io import read_jsonl

    return list(read_jsonl(run.metrics))
