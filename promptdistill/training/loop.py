"""The training loop: `train(student, source, objective, cfg)`, a plain loop, read top to bottom.

Each pass is one optimizer step over `grad_accum` micro-batches, with "every N steps" blocks
around it: validation, checkpoint, Ctrl-C. What the loss is comes in as `objective`
(training/objectives.py); where the batches come from as `source` (training/sources.py); the
loop has no branch for either. Speed tricks, each cited:
- Loss only where it counts: the objective runs the LM head only at loss positions, chunked.
- Pipelining: the source collates the next batches in a background thread (nanochat
  chat_sft.py); the loss is read back one step late, so steady state has no host-device sync
  (nanoGPT reads `loss.item()` only at log time); checkpoints are written by a background
  thread from a snapshot (training/checkpoint.py); GC is frozen after the first step
  (nanochat).
"""

from __future__ import annotations

import gc
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from promptdistill.core.config import TrainConfig
from promptdistill.training.batching import Batch, collate, epoch_batches
from promptdistill.training.checkpoint import Checkpointer
from promptdistill.training.display import StepLog
from promptdistill.training.objectives import Objective, forward_loss
from promptdistill.training.sources import BatchSource, Validation
from promptdistill.training.student import Student


@dataclass(kw_only=True)
class LoopResult:
    steps: int
    total_steps: int
    interrupted: bool
    position: Any  # where the data stood after the last step


def lr_at(step: int, total: int, cfg: TrainConfig, progress: float | None = None) -> float:
    """Linear warmup, then cosine / linear decay to 0 or constant: a pure function of step.
    `progress` (0..1), when given, replaces the step-based decay position (streaming)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / (cfg.warmup + 1)
    if cfg.schedule == "constant":
        return cfg.lr
    if progress is None:
        progress = (step - cfg.warmup) / max(1, total - cfg.warmup)
    progress = min(1.0, progress)
    if cfg.schedule == "linear":
        return cfg.lr * (1.0 - progress)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def forward_backward(
    student: Student, micro: list[Batch], objective: Objective, step: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[Batch]]:
    """Gradients of the step's loss: the objective's sum over every loss position of the
    micro-batches (as the objective prepares them: with the teacher's targets, or the student's
    own answers), divided by their total weight, known on the host (no sync). Returns the
    loss and the objective's stats, as detached tensors, and the batches trained on."""
    device = student.device
    batches = [p.to(device) for b in micro for p in objective.prepare(b.to(device), step)]
    weight_sum = max(sum(b.weight_sum for b in batches), 1e-9)
    loss = torch.zeros((), dtype=torch.float32, device=device)
    stats: dict[str, torch.Tensor] = {}
    for b in batches:
        with student.compute():
            out = forward_loss(student.lm, b, objective)
        (out.total / weight_sum).backward()
        loss += out.total.detach() / weight_sum
        for key, value in out.stats.items():
            stats[key] = (
                stats.get(key, torch.zeros_like(loss)) + value.detach().float() / weight_sum
            )
    return loss, stats, batches


@torch.no_grad()
def validation_loss(student: Student, val: Validation, objective: Objective, budget: int) -> float:
    """The objective per loss-bearing token over the validation examples (dropout off)."""
    was_training = student.lm.training
    student.lm.eval()
    total = torch.zeros((), dtype=torch.float64, device=student.device)
    weight = 0.0
    data, mode = val.data, student.mode
    for ids in epoch_batches(data.lengths(), val.indices, budget, seed=0, epoch=0, mode=mode):
        for batch in objective.prepare(collate(data, ids, mode).to(student.device), None):
            with student.compute():
                total += forward_loss(student.lm, batch, objective).total.double()
            weight += batch.weight_sum
    student.lm.train(was_training)
    return float(total.item() / max(weight, 1e-9))


def manage_gc(step: int, start_step: int) -> None:
    """After the first step: freeze the GC (nanochat: avoids ~100 ms pauses); and collect now
    and then, as nanochat does."""
    if step == start_step + 1:
        gc.collect()
        gc.freeze()
        gc.disable()
    elif step % 1000 == 0:
        gc.collect()


@contextmanager
def stop_on_sigint(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C sets `stop` (the loop finishes its step, saves and stops); a second Ctrl-C
    interrupts at once."""

    def on_sigint(_signum: int, _frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    main = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGINT)
    if main:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGINT, old)


def train(
    student: Student,
    source: BatchSource,
    objective: Objective,
    cfg: TrainConfig,
    *,
    start_step: int,
    position: Any,
    resumed: bool,
    log: StepLog,
    checkpoints: Checkpointer,
) -> LoopResult:
    """Optimizer steps from `start_step` until the source's steps are done, the source runs
    dry, or Ctrl-C. `position` is where the data stands at `start_step` (a checkpoint's, when
    `resumed`: that step's validation is in metrics.jsonl already)."""
    dist = student.dist
    total = source.estimated_steps(start_step)
    step = start_step
    # (loss, record, gradient norm), read one step late
    pending: tuple[torch.Tensor, dict[str, Any], torch.Tensor] | None = None
    wait_start = source.wait_s
    last_eval: tuple[int, Validation] | None = None  # (step, examples) of the last validation

    def flush(sync: bool = False) -> None:
        """Report the previous step: its loss has long been computed, so reading it costs no
        stall (nanoGPT: `loss.item()` only at log time). `sync`: and fsync metrics.jsonl."""
        nonlocal pending
        if pending is not None:
            loss, record, grad_norm = pending
            pending = None
            record["grad_norm"] = round(float(grad_norm.item()), 6)  # before clipping (issue #17)
            log.step(record, float(dist.mean(loss).item()), total, source.wait_s - wait_start,
                     source.status(record))  # fmt: skip
        if sync:
            log.sync()

    def validate(at_step: int, val: Validation) -> None:
        nonlocal last_eval
        flush()
        log.validation(
            at_step, total, validation_loss(student, val, objective, cfg.batch_tokens),
            len(val.indices),
        )  # fmt: skip
        last_eval = (at_step, val)

    interrupted = False
    with stop_on_sigint(source.stop):
        try:
            while step < total:
                # ---- every eval_every steps (and before the first): validation loss
                if step % cfg.eval_every == 0 and not (resumed and step == start_step):
                    val = source.validation()
                    if len(val.indices):
                        validate(step, val)

                # ---- one optimizer step over grad_accum micro-batches
                t0, cpu0 = time.perf_counter(), time.process_time()
                micro = [b for b in (source.next() for _ in range(cfg.grad_accum)) if b]
                if not micro:  # the stream has ended, or Ctrl-C while waiting for samples
                    interrupted = source.stop.is_set()
                    break
                lr = lr_at(step, total, cfg, source.progress(micro))
                loss, stats, trained = forward_backward(student, micro, objective, step)
                grad_norm = student.optimizer_step(lr)
                step += 1
                position = source.position(micro[-1])
                total = source.estimated_steps(step)

                # ---- report the previous step now that this one has been queued
                flush()
                dt = time.perf_counter() - t0
                n_tok = sum(b.n_tokens for b in trained)
                log.timed(n_tok, dt)
                record = {
                    "type": "train",
                    "step": step,
                    **source.step_record(micro),  # epoch; a stream's sample ids
                    "lr": lr,
                    "tokens": n_tok,
                    "loss_tokens": int(sum(b.weight_sum for b in trained)),
                    "step_s": round(dt, 4),
                    # all threads' CPU seconds: a step's cost that a busy machine barely changes
                    "cpu_s": round(time.process_time() - cpu0, 4),
                    "tokens_per_s": round(n_tok / dt, 1),
                    "elapsed_s": round(time.perf_counter() - log.started, 2),
                    "data_wait_s": round(source.wait_s - wait_start, 4),
                    **{k: round(float(v), 6) for k, v in stats.items()},
                }
                pending = (loss, record, grad_norm)

                manage_gc(step, start_step)

                # ---- every save_every steps: its metrics line on disk (#16), then a checkpoint
                if step % cfg.save_every == 0 and step < total:
                    flush(sync=True)
                    checkpoints.save(step, position)

                # ---- Ctrl-C: finish this step, save, stop
                if dist.any(source.stop.is_set()):
                    interrupted = True
                    break
            flush(sync=True)

            # ---- the end: final validation and checkpoint
            if not interrupted:
                val = source.finish()  # a stream's final examples differ from the last ones
                total = step
                if len(val.indices) and last_eval != (step, val):
                    validate(step, val)
            if step > start_step or interrupted:
                checkpoints.save(step, position)
            checkpoints.wait()
        finally:
            gc.enable()
            source.close()
            checkpoints.close()
            log.close()
    return LoopResult(steps=step, total_steps=total, interrupted=interrupted, position=position)
