"""The LoRA trainer behind `promptdistill train RUN`: a plain, pipelined loop.

Read `train()` top to bottom: datums -> model -> optimizer -> (resume) -> loop with "every N
steps" blocks -> adapter, loss curve, config. Speed tricks, each cited:
- Loss only where it counts: the LM head and log-softmax run only at positions whose next token
  carries weight, in chunks, and the gradient w.r.t. the hidden states is computed inside the
  forward pass so no (N, vocab) logits are kept for backward (Liger Kernel's fused linear +
  cross-entropy, done by hand on CPU). SmolLM2's vocabulary is 49152, so this matters.
- Pipelining: a background thread collates the next batches while the step runs (nanochat
  chat_sft.py); the loss is read back one step late, so steady state has no host-device sync
  (nanoGPT reads `loss.item()` only at log time); checkpoints are written by a background thread
  from a snapshot; GC is frozen after the first step (nanochat).
- Precision: bf16 base weights where the hardware has bf16 (AVX512-BF16 CPUs, GPUs), fp32 LoRA
  weights and AdamW state (PEFT's autocast_adapter_dtype). AdamW with beta2 0.95 (tinker-cookbook).
- Batching: bucketed, unmasked right padding on CPU (batching.py explains and measures why).

Resume is exact: data order is a pure function of (seed, epoch), and a checkpoint holds the
adapter, AdamW state, step (the schedule is a pure function of it), RNG states and data position.
Checkpoints hold no pickle: tensors in safetensors, the rest in JSON.

Streaming (`promptdistill run --stream`): the same loop takes its batches from a
`stream.SampleStream`, which trains one epoch over samples as the teacher writes them.

Multi-GPU: under `torchrun`/`accelerate launch` (WORLD_SIZE > 1) a few torch.distributed lines
split the batches across ranks and all-reduce the (small) LoRA gradients; see docs/training.md.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import random
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from pydantic import ValidationError

from promptdistill.batching import (
    Batch,
    EpochBatches,
    Mode,
    batch_stream,
    collate,
    epoch_batches,
)
from promptdistill.config import DatumConfig, StudentConfig, TrainConfig
from promptdistill.datums import Datums, prepare_datums
from promptdistill.errors import UserError
from promptdistill.store import (
    JsonlWriter,
    RunDir,
    atomic_write_bytes,
    atomic_write_json,
    replace_dir,
)

if TYPE_CHECKING:
    from promptdistill.stream import SampleStream

CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
METRICS = "metrics.jsonl"
LOSS_PNG = "loss.png"
LOSS_CHUNK = 1024  # positions per LM-head chunk: (1024 x 49152) fp32 logits = 200 MB
# Changing any of these makes an old checkpoint a different experiment: refuse to resume it.
RESUME_KEYS = (
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "batch_tokens",
    "grad_accum",
    "seed",
    "batching",
)


class BatchSource(Protocol):
    """Where the loop gets micro-batches, and what it needs to know about them:
    `batching.EpochBatches` over a finished datums file, or `stream.SampleStream` over samples
    as they arrive (its `next` is None once the stream has ended or is stopping)."""

    @property
    def wait_s(self) -> float: ...  # time the loop spent waiting for data

    def next(self) -> Batch | None: ...

    def close(self) -> None: ...

    def position(self, batch: Batch | None = None) -> Any:
        """Where the data stood after `batch` (JSON): what a checkpoint saves."""

    def progress(self, micro: list[Batch]) -> float | None:
        """The LR decay position (0..1), or None to decay with the step count."""

    def estimated_steps(self, step: int) -> int:
        """The total number of steps, as far as it is known after `step`."""

    def step_record(self, micro: list[Batch]) -> dict[str, Any]:
        """This source's fields of the step's metrics.jsonl record."""

    def status(self, record: dict[str, Any]) -> str:
        """This source's part of the display line for a step record."""


@dataclass
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


# --------------------------------------------------------------------------- the loss


class WeightedNLL(torch.autograd.Function):
    """sum_i w_i * -log p(target_i | h_i), with p = softmax(h_i @ W^T), chunked.

    The gradient w.r.t. h is computed chunk by chunk during forward (d/dlogits = w * (softmax -
    onehot)), so only an (N, hidden) tensor is saved for backward, never (N, vocab) logits. The
    LM head W is frozen (LoRA never trains it), so no gradient for it is needed.
    """

    @staticmethod
    def forward(
        ctx: Any,
        h_NH: torch.Tensor,
        w_VH: torch.Tensor,
        targets_N: torch.Tensor,
        weights_N: torch.Tensor,
    ) -> torch.Tensor:
        need_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=torch.float32, device=h_NH.device)
        grad_NH = torch.empty_like(h_NH) if need_grad else None
        for s in range(0, h_NH.shape[0], LOSS_CHUNK):
            e = min(s + LOSS_CHUNK, h_NH.shape[0])
            t_C, w_C = targets_N[s:e], weights_N[s:e]
            # one (C, V) fp32 buffer, updated in place: logits -> exp(logits - max) -> w * softmax
            buf_CV = (h_NH[s:e] @ w_VH.T).float()
            target_C = buf_CV.gather(1, t_C[:, None]).squeeze(1)
            max_C1 = buf_CV.amax(dim=-1, keepdim=True)
            buf_CV.sub_(max_C1).exp_()
            sum_C1 = buf_CV.sum(dim=-1, keepdim=True)
            lse_C = (max_C1 + sum_C1.log()).squeeze(1)
            total += ((lse_C - target_C) * w_C).sum()
            if grad_NH is not None:  # d(sum w * nll)/d logits = w * (softmax - onehot)
                buf_CV.mul_(w_C[:, None] / sum_C1)
                buf_CV[torch.arange(e - s, device=t_C.device), t_C] -= w_C
                grad_NH[s:e] = buf_CV.to(w_VH.dtype) @ w_VH
        ctx.save_for_backward(grad_NH if grad_NH is not None else h_NH.new_empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (grad_NH,) = ctx.saved_tensors
        return grad_NH * grad_out.to(grad_NH.dtype), None, None, None


def weighted_nll_sum(lm: Any, batch: Batch) -> torch.Tensor:
    """Sum of weighted NLL over a micro-batch. `lm` is the (PEFT-wrapped) *ForCausalLM:
    run its backbone for hidden states, then the LM head only at loss positions."""
    out = lm.model(
        input_ids=batch.input_ids_BT, position_ids=batch.position_ids_BT, use_cache=False
    )
    hidden_BTH = out.last_hidden_state
    h_NH = hidden_BTH.reshape(-1, hidden_BTH.shape[-1]).index_select(0, batch.loss_idx_N)
    head = lm.get_output_embeddings().weight
    if head.requires_grad:  # not our LoRA setup, but keep it correct: plain autograd path
        logits = (h_NH @ head.T).float()
        return (F.cross_entropy(logits, batch.targets_N, reduction="none") * batch.weights_N).sum()
    result: torch.Tensor = WeightedNLL.apply(h_NH, head, batch.targets_N, batch.weights_N)
    return result


def compute_context(model: Any, dtype: torch.dtype, device: torch.device) -> Any:
    """bf16 compute with fp32 LoRA master weights: under autocast the (already bf16) base
    weights are used as they are and only the small LoRA matrices are cast per forward.
    PEFT would otherwise up-cast every LoRA input to fp32 (an extra copy per adapted layer);
    autocast makes that pointless, so it is switched off. fp32 runs need neither."""
    from contextlib import ExitStack

    from peft.helpers import disable_input_dtype_casting

    stack = ExitStack()
    if dtype != torch.float32:
        stack.enter_context(disable_input_dtype_casting(model))
        stack.enter_context(torch.autocast(device.type, dtype=dtype))
    return stack


def to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
    return Batch(
        move(batch.input_ids_BT),
        move(batch.position_ids_BT),
        move(batch.loss_idx_N),
        move(batch.targets_N),
        move(batch.weights_N),
        batch.n_tokens,
        batch.weight_sum,
        batch.epoch,
        batch.index,
    )


@torch.no_grad()
def evaluate(
    lm: Any,
    data: Datums,
    indices: np.ndarray,
    batch_tokens: int,
    mode: Mode,
    device: torch.device,
    pad_id: int,
) -> float:
    """Weighted NLL per loss-bearing token over `indices` (dropout off)."""
    was_training = lm.training
    lm.eval()
    dtype = lm.get_output_embeddings().weight.dtype  # compute as training does
    total = torch.zeros((), dtype=torch.float64, device=device)
    weight = 0.0
    for b in epoch_batches(data.lengths(), indices, batch_tokens, seed=0, epoch=0, mode=mode):
        batch = to_device(collate(data, b, mode, pad_id), device)
        with compute_context(lm, dtype, device):
            total += weighted_nll_sum(lm, batch).double()
        weight += batch.weight_sum
    lm.train(was_training)
    return float(total.item() / max(weight, 1e-9))


# --------------------------------------------------------------------------- schedule


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


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dirs(run: RunDir) -> list[Path]:
    root = run.file(CHECKPOINTS)
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and (p / "state.json").exists())


def snapshot(lm: Any, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """Copies of everything a checkpoint holds, taken on the main thread between steps, so the
    background writer never races the optimizer."""
    trainable = {
        n: p.detach().to("cpu", copy=True) for n, p in lm.named_parameters() if p.requires_grad
    }
    opt_tensors: dict[str, torch.Tensor] = {}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(params):
        for key, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                opt_tensors[f"{i}.{key}"] = (
                    value.detach()
                    .to("cpu", copy=True)
                    .reshape(value.shape if value.dim() else (1,))
                )
    np_state = np.random.get_state()
    rng = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],  # type: ignore[index]
    }
    rng_tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng_tensors[f"cuda.{i}"] = s
    return {
        "trainable": trainable,
        "optimizer": opt_tensors,
        "rng_tensors": rng_tensors,
        "state": {
            **state,
            "rng": rng,
            "param_groups": [
                {k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups
            ],
        },
    }


def write_checkpoint(root: Path, snap: dict[str, Any], keep: int) -> Path:
    """Write a snapshot to root/step-XXXXXX atomically (temp dir + rename); keep the last few."""
    from safetensors.torch import save_file

    step = snap["state"]["step"]
    final = root / f"step-{step:06d}"
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(snap["trainable"], str(tmp / "adapter.safetensors"))
    save_file(snap["optimizer"], str(tmp / "optimizer.safetensors"))
    save_file(snap["rng_tensors"], str(tmp / "rng.safetensors"))
    atomic_write_json(tmp / "state.json", snap["state"])
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, lm: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    trainable = load_file(str(path / "adapter.safetensors"))
    params = dict(lm.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in trainable]
    if missing:
        raise UserError(
            f"checkpoint {path} does not match this LoRA setup ({missing[0]} missing)"
            "; pass --fresh to start over"
        )
    with torch.no_grad():
        for n, t in trainable.items():
            params[n].copy_(t)
    state: dict[str, Any] = json.loads((path / "state.json").read_text())
    opt_tensors = load_file(str(path / "optimizer.safetensors"))
    plist = [p for g in optimizer.param_groups for p in g["params"]]
    for i, p in enumerate(plist):
        entry = {}
        for key in ("step", "exp_avg", "exp_avg_sq"):
            if f"{i}.{key}" in opt_tensors:
                t = opt_tensors[f"{i}.{key}"]
                entry[key] = (t.reshape(()) if key == "step" else t).to(p.device)
        if entry:
            optimizer.state[p] = entry
    for group, saved in zip(optimizer.param_groups, state["param_groups"], strict=True):
        group.update({k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()})
    py = state["rng"]["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["rng"]["numpy"]
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), *npy[2:]))
    rng_tensors = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng_tensors["torch"])
    if torch.cuda.is_available():
        cuda = [rng_tensors[k] for k in sorted(rng_tensors) if k.startswith("cuda.")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    return state


# --------------------------------------------------------------------------- display


def _fmt_time(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Display:
    """A rich live progress line on a terminal; plain log lines otherwise (CI, pipes, files)."""

    def __init__(self, console: Any, total: int, start: int) -> None:
        self.console, self.total = console, total
        self.live = bool(console.is_terminal)
        self.every = max(1, min(10, total // 20 or 1))
        self._progress: Any = None
        if self.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task("train", total=total, completed=start, info="")
            self._progress.start()

    def update(self, step: int, info: str, total: int) -> None:
        self.total = total  # fixed, or a stream's estimate refined as samples arrive
        if self._progress is not None:
            self._progress.update(self._task, completed=step, info=info, total=self.total)
        elif step % self.every == 0 or step == self.total:
            self.console.print(f"step {step}/{self.total} | {info}", soft_wrap=True)

    def log(self, message: str) -> None:
        self.console.print(message, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


# --------------------------------------------------------------------------- loss curve


def plot_loss(metrics: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from promptdistill.store import read_jsonl

    rows = list(read_jsonl(metrics))
    train = [(r["step"], r["loss"]) for r in rows if r.get("type") == "train"]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("type") == "eval"]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        steps, losses = zip(*train, strict=True)
        ax.plot(steps, losses, alpha=0.35, label="train (per step)")
        ema, smooth = 0.0, []
        for i, x in enumerate(losses):  # debiased EMA, as in the live display
            ema = 0.9 * ema + 0.1 * x
            smooth.append(ema / (1 - 0.9 ** (i + 1)))
        ax.plot(steps, smooth, label="train (smoothed)")
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("weighted NLL per answer token")
    ax.set_title(f"promptdistill train: {metrics.parent.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())


# --------------------------------------------------------------------------- configuration


def resolve_configs(
    run: RunDir, overrides: dict[str, Any], fresh: bool = False
) -> tuple[StudentConfig, DatumConfig, TrainConfig]:
    """Flags the user gave override the run's saved `train` stage (when resuming) or defaults.

    So `promptdistill train RUN` on an interrupted run continues with the flags it started with.
    """
    saved = run.stage_config("train") if (checkpoint_dirs(run) and not fresh) else None
    student = dict((saved or {}).get("student", {}))
    datums = dict((saved or {}).get("datums", {}))
    train = dict((saved or {}).get("train", {}))
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("student", "dtype"):
            student["model" if key == "student" else "dtype"] = value
        elif key in DatumConfig.model_fields:
            datums[key] = value
        else:
            train[key] = value
    if overrides.get("steps") is not None:
        train["epochs"] = None
    elif overrides.get("epochs") is not None:
        train["steps"] = None
    try:
        return StudentConfig(**student), DatumConfig(**datums), TrainConfig(**train)
    except ValidationError as e:  # name the flag, pydantic's message is long
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise UserError(f"--{loc.replace('_', '-')}: {first['msg']}") from None


def _check_resumable(
    state: dict[str, Any], cfg: TrainConfig, student: StudentConfig, datums_fp: str, path: Path
) -> None:
    streamed = state["datums_fingerprint"].startswith("stream:")
    if streamed != datums_fp.startswith("stream:"):
        raise UserError(
            f"{path} was trained {'with' if streamed else 'without'} `promptdistill run "
            "--stream`: resume it the same way, or pass --fresh to start over"
        )
    saved = state["config"]
    for key in RESUME_KEYS:
        if saved["train"].get(key) != getattr(cfg, key):
            raise UserError(
                f"{path} was trained with --{key.replace('_', '-')} {saved['train'].get(key)}, "
                f"not {getattr(cfg, key)}: rerun with the same value to resume, or pass --fresh "
                "to start over"
            )
    if saved["student"]["model"] != student.model:
        raise UserError(
            f"{path} was trained on --student {saved['student']['model']}: rerun "
            "with it to resume, or pass --fresh to start over"
        )
    if state["datums_fingerprint"] != datums_fp:
        raise UserError(
            f"samples.jsonl or the datum settings changed since {path} was written, so the "
            "data order would differ: pass --fresh to retrain on the new samples"
        )


def _fresh_start(run: RunDir) -> None:
    for name in (CHECKPOINTS, ADAPTER):
        shutil.rmtree(run.file(name), ignore_errors=True)
    for name in (METRICS, LOSS_PNG):
        run.file(name).unlink(missing_ok=True)


def _trim_metrics(path: Path, upto_step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be redone)."""
    from promptdistill.store import atomic_write_bytes, read_jsonl

    if not path.exists():
        return
    import orjson

    keep = [r for r in read_jsonl(path) if r.get("step", 0) <= upto_step]
    keep = [r for r in keep if not (r.get("type") == "train" and r["step"] > upto_step)]
    atomic_write_bytes(path, b"".join(orjson.dumps(r) + b"\n" for r in keep))


# --------------------------------------------------------------------------- the loop


def train(
    run: RunDir,
    student: StudentConfig,
    datum_cfg: DatumConfig,
    cfg: TrainConfig,
    console: Any,
    fresh: bool = False,
    streaming: SampleStream | None = None,
) -> TrainResult:
    """Train the run's adapter. With `streaming`, one epoch over samples as they arrive."""
    from promptdistill.malloc import reuse_freed_memory

    with reuse_freed_memory():  # no page faults for each step's activations (malloc.py)
        return _train(run, student, datum_cfg, cfg, console, fresh, streaming)


def _train(
    run: RunDir,
    student: StudentConfig,
    datum_cfg: DatumConfig,
    cfg: TrainConfig,
    console: Any,
    fresh: bool,
    streaming: SampleStream | None,
) -> TrainResult:
    from peft import LoraConfig, get_peft_model

    from promptdistill.models import load_causal_lm, load_tokenizer, resolve_dtype, resolve_model

    run.require()
    if not run.samples.exists():
        raise UserError(f"{run.samples} does not exist; run `promptdistill sample` first")

    # ---- distributed (only under torchrun / accelerate launch): a few guarded lines
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main_rank = rank == 0
    say = console.print if main_rank else (lambda *a, **k: None)

    # ---- data: datums (cached by fingerprint), batches as a pure function of (seed, epoch)
    if fresh and main_rank:
        _fresh_start(run)
    model_dir = resolve_model(student.model)
    tokenizer = load_tokenizer(student.model)
    if streaming is not None:  # samples as they arrive: the datums files are written at the end
        datums_fp = streaming.open(tokenizer, say)
        data = streaming.val_data(cfg.eval_examples)
    else:
        if world > 1 and not main_rank:
            torch.distributed.barrier()  # rank 0 builds the datums; the others then read them
        data, rebuilt = prepare_datums(run, tokenizer, datum_cfg, student.model)
        if world > 1 and main_rank:
            torch.distributed.barrier()
        st = data.stats
        say(
            f"datums: {st['train']['examples']} train / {st['val']['examples']} val examples, "
            f"{st['train']['loss_tokens']} answer tokens to learn; {st['truncated']} truncated, "
            f"{st['dropped']} dropped (> --max-len {datum_cfg.max_len}); system prompt removed: "
            f"{st['system_tokens_removed_mean']:.0f} tokens/example"
            + ("" if rebuilt else " (cached)")
        )
        datums_fp = json.loads((run.file("datums") / "fingerprint.json").read_text())["fingerprint"]
    train_idx, val_idx = data.indices("train"), data.indices("val")[: cfg.eval_examples]
    mode: Mode = cfg.batching if cfg.batching != "auto" else "pad"  # type: ignore[assignment]
    pad_id = 0
    per_epoch = len(epoch_batches(data.lengths(), train_idx, cfg.batch_tokens, cfg.seed, 0, mode))
    total = cfg.steps or max(
        1, math.ceil((cfg.epochs or 1.0) * per_epoch / (cfg.grad_accum * world))
    )
    if streaming is not None:  # one epoch over what arrives: an estimate, refined as it does
        total = streaming.estimated_steps(0)

    # ---- model: bf16 (or fp32) frozen base + fp32 LoRA
    dtype = resolve_dtype(student.dtype, device.type)
    base = load_causal_lm(student.model, dtype=dtype, device=str(device))
    if device.type == "cpu" and base.config._attn_implementation == "sdpa":
        # Measured on SmolLM2-135M, bf16, 256-token rows (docs/benchmarks.md): PyTorch's CPU
        # flash-attention kernel took ~26% of a training step, its backward above all; plain
        # matmul + softmax ("eager") took ~10%. At our row lengths the (T x T) scores are small.
        base.set_attn_implementation("eager")
    if cfg.batching == "auto" and "flash" in str(base.config._attn_implementation):
        mode = "pack"
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,  # type: ignore[arg-type]  # PEFT accepts floats
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.target_modules
        if cfg.target_modules == "all-linear"
        else [m.strip() for m in cfg.target_modules.split(",") if m.strip()],
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, lora, autocast_adapter_dtype=True)
    model.peft_config["default"].base_model_name_or_path = str(model_dir)
    lm: Any = model.base_model.model  # the *ForCausalLM, LoRA layers injected
    lm.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in params)
    # weight decay 0: LoRA's B starts at zero and decay would only pull it back (tinker: AdamW,
    # beta2 0.95, no decay). foreach is the fast multi-tensor path on CPU and GPU alike.
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, foreach=True
    )

    # ---- resume from the last checkpoint, if any
    pos: Any  # [epoch, batch], or a stream's position in samples.jsonl
    start_step, pos, resumed_from = 0, [0, 0], None
    ckpts = checkpoint_dirs(run)
    if ckpts:
        last = ckpts[-1]
        state = json.loads((last / "state.json").read_text())
        _check_resumable(state, cfg, student, datums_fp, last)
        state = load_checkpoint(last, model, optimizer)
        start_step, pos, resumed_from = state["step"], state["data_position"], state["step"]
        if streaming is not None:
            streaming.resume(pos)
        if main_rank:
            _trim_metrics(run.file(METRICS), start_step)
        done = start_step >= total and run.file(ADAPTER).joinpath("adapter_config.json").exists()
        if done and streaming is None:
            say(
                f"{run.path} is already trained ({start_step}/{total} steps); nothing to do "
                "(pass --steps to train longer, or --fresh to start over)"
            )
            return TrainResult(
                start_step, total, None, None, run.file(ADAPTER), False, resumed_from, 0.0, 0.0
            )
        say(f"resuming from {last.name} (step {start_step}/{total})")
    elif main_rank:
        run.file(METRICS).unlink(missing_ok=True)  # a run killed before its first checkpoint

    config_record = {
        "student": student.model_dump(),
        "datums": datum_cfg.model_dump(),
        "train": cfg.model_dump(),
        "total_steps": total,
        "batching": mode,
        "dtype": str(dtype).removeprefix("torch."),
        "device": str(device),
        "world_size": world,
        "trainable_params": n_trainable,
        "stream": streaming is not None,
    }
    if main_rank:
        run.save_stage_config("train", config_record)
    say(
        f"training {student.model} ({str(dtype).removeprefix('torch.')}, {device}) with LoRA "
        f"r={cfg.lora_r} on {cfg.target_modules}: {n_trainable / 1e6:.2f}M trainable params, "
        f"{'~' if streaming else ''}{total} steps of <= {cfg.batch_tokens} tokens x "
        f"{cfg.grad_accum} ("
        + (f"{per_epoch} batches/epoch" if streaming is None else "one epoch as samples arrive")
        + f", {mode} batching)"
    )

    # ---- pipelining: prefetch thread, background checkpoint writer, SIGINT -> save and stop
    pin = device.type == "cuda"
    prefetch: BatchSource
    if streaming is not None:
        prefetch = streaming.start(cfg.batch_tokens, mode, pad_id, pin)
    else:
        stream = batch_stream(
            data, train_idx, cfg.batch_tokens, cfg.seed, mode, pos[0], pos[1], pad_id, pin, rank,
            world,
        )  # fmt: skip
        prefetch = EpochBatches(stream, per_epoch, total, pos, depth=cfg.grad_accum + 1)
    pos = prefetch.position()  # where it starts (a checkpoint's, or the data's start)
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
    pending_write: Future[Path] | None = None
    stop = threading.Event() if streaming is None else streaming.stop  # also stops sampling

    def on_sigint(_signum: int, _frame: Any) -> None:
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C is immediate

    old_handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_sigint)
    metrics = JsonlWriter(run.file(METRICS), fsync_every=64) if main_rank else None
    display = Display(console, total, start_step) if main_rank else None

    def save(step: int, data_position: Any) -> None:
        nonlocal pending_write
        if not main_rank:
            return
        snap = snapshot(
            model,
            optimizer,
            {
                "step": step,
                "data_position": data_position,
                "config": config_record,
                "datums_fingerprint": datums_fp,
            },
        )
        if pending_write is not None:
            pending_write.result()  # at most one write in flight
        pending_write = writer.submit(
            write_checkpoint, run.file(CHECKPOINTS), snap, cfg.keep_checkpoints
        )

    def log_train(record: dict[str, Any]) -> None:
        if metrics is not None:
            metrics.write(record)

    step = start_step
    pending: tuple[int, torch.Tensor, float, dict[str, Any]] | None = None  # read one step late
    smooth, n_smooth = 0.0, 0
    last_loss: float | None = None
    val_loss: float | None = None
    tokens_seen = 0
    t_start = time.perf_counter()
    wait_start = prefetch.wait_s
    loop_tokens, loop_time = 0, 0.0

    def flush_pending() -> None:
        """Read the previous step's loss (it has long finished: no stall) and report it."""
        nonlocal pending, smooth, n_smooth, last_loss
        if pending is None:
            return
        p_step, p_loss, p_lr, p_rec = pending
        pending = None
        if world > 1:
            torch.distributed.all_reduce(p_loss)
            p_loss = p_loss / world
        last_loss = float(p_loss.item())
        smooth, n_smooth = 0.9 * smooth + 0.1 * last_loss, n_smooth + 1
        log_train({**p_rec, "loss": round(last_loss, 6)})
        if display is not None:
            elapsed = time.perf_counter() - t_start
            rate = loop_tokens / loop_time if loop_time else 0.0
            eta = (total - p_step) * (elapsed / max(1, p_step - start_step))
            wait = (prefetch.wait_s - wait_start) / max(elapsed, 1e-9)
            info = (
                f"loss {smooth / (1 - 0.9**n_smooth):.3f}"
                + (f" | val {val_loss:.3f}" if val_loss is not None else "")
                + f" | lr {p_lr:.2e} | {rate:,.0f} tok/s | eta {_fmt_time(eta)}"
                + f" | data wait {100 * wait:.1f}%"
                + prefetch.status(p_rec)
            )
            display.update(p_step, info, total)

    last_eval = -1

    def validate(at_step: int) -> None:
        nonlocal val_loss, last_eval
        val_loss, last_eval = (
            evaluate(lm, data, val_idx, cfg.batch_tokens, mode, device, pad_id),
            at_step,
        )
        if metrics is not None:
            metrics.write(
                {
                    "type": "eval",
                    "step": at_step,
                    "val_loss": round(val_loss, 6),
                    "val_examples": len(val_idx),
                }
            )
        if display is not None and not display.live:
            display.log(f"step {at_step}/{total} | val loss {val_loss:.4f}")

    interrupted = False
    try:
        while step < total or streaming is not None:  # a stream ends when its data does
            # ---- every eval_every steps (and before the first): validation loss
            if streaming is not None and step % cfg.eval_every == 0:
                data = streaming.val_data(cfg.eval_examples)  # the val examples so far
                val_idx = data.indices("val")
            if len(val_idx) and step % cfg.eval_every == 0 and step != resumed_from:
                flush_pending()
                validate(step)

            # ---- one optimizer step over grad_accum micro-batches
            t0 = time.perf_counter()
            micro = [b for b in (prefetch.next() for _ in range(cfg.grad_accum)) if b is not None]
            if not micro:  # the stream has ended, or Ctrl-C while waiting for samples
                interrupted = stop.is_set()
                break
            lr = lr_at(step, total, cfg, prefetch.progress(micro))
            for group in optimizer.param_groups:
                group["lr"] = lr
            weight_sum = sum(b.weight_sum for b in micro)  # known on the host: no sync
            step_loss = torch.zeros((), dtype=torch.float32, device=device)
            for b in micro:
                with compute_context(model, dtype, device):
                    nll = weighted_nll_sum(lm, to_device(b, device))
                (nll / weight_sum).backward()
                step_loss += nll.detach() / weight_sum
            if world > 1:
                for p in params:
                    if p.grad is not None:
                        torch.distributed.all_reduce(p.grad)
                        p.grad /= world
            torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            n_tok = sum(b.n_tokens for b in micro)
            tokens_seen += n_tok
            step += 1
            pos = prefetch.position(micro[-1])
            total = prefetch.estimated_steps(step)

            # ---- report the previous step now that this one has been queued (one step late)
            flush_pending()
            dt = time.perf_counter() - t0
            loop_tokens, loop_time = loop_tokens + n_tok, loop_time + dt
            pending = (
                step,
                step_loss,
                lr,
                {
                    "type": "train",
                    "step": step,
                    **prefetch.step_record(micro),  # epoch; a stream's sample ids
                    "lr": lr,
                    "tokens": n_tok,
                    "loss_tokens": int(weight_sum),
                    "step_s": round(dt, 4),
                    "tokens_per_s": round(n_tok / dt, 1),
                    "elapsed_s": round(time.perf_counter() - t_start, 2),
                    "data_wait_s": round(prefetch.wait_s - wait_start, 4),
                },
            )

            # ---- after the first step: freeze the GC (nanochat: avoids ~100 ms pauses)
            if step == start_step + 1:
                gc.collect()
                gc.freeze()
                gc.disable()
            elif step % 1000 == 0:  # and collect now and then, as nanochat does
                gc.collect()

            # ---- every save_every steps: checkpoint in the background
            if step % cfg.save_every == 0 and (step < total or streaming is not None):
                save(step, pos)

            # ---- Ctrl-C: finish this step, save, stop
            stopping = stop.is_set()
            if world > 1:  # every rank stops at the same step, or the collectives hang
                flag = torch.tensor([float(stopping)], device=device)
                torch.distributed.all_reduce(flag)
                stopping = bool(flag.item())
            if stopping:
                interrupted = True
                break
        flush_pending()

        # ---- the end: final validation, checkpoint, adapter, loss curve
        if streaming is not None and not interrupted:  # write RUN/datums as `train` does, and
            data = streaming.finish(say)  # validate on the val examples `train` would use
            val_idx, last_eval, total = data.indices("val")[: cfg.eval_examples], -1, step
        if not interrupted and len(val_idx) and last_eval != step:
            validate(step)
        if step > start_step or interrupted:
            save(step, pos)
        if pending_write is not None:
            pending_write.result()
    finally:
        gc.enable()
        prefetch.close()
        writer.shutdown(wait=True)
        if display is not None:
            display.close()
        if metrics is not None:
            metrics.close()
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, old_handler)

    elapsed = time.perf_counter() - t_start
    rate = loop_tokens / loop_time if loop_time else 0.0
    wait_frac = (prefetch.wait_s - wait_start) / max(loop_time, 1e-9)
    if interrupted:
        say(
            f"{'interrupted' if streaming is None else 'stopped'} at step {step}/{total}: "
            f"checkpoint saved to {run.file(CHECKPOINTS)}/step-{step:06d}; "
            + (
                f"resume with `promptdistill train {run.path}`"
                if streaming is None
                else "rerun the same `promptdistill run ... --stream` command to go on"
            )
        )
        return TrainResult(
            step, total, last_loss, val_loss, None, True, resumed_from, rate, wait_frac
        )

    adapter_dir = run.file(ADAPTER)
    if main_rank:
        tmp = run.file(f".{ADAPTER}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(str(tmp), safe_serialization=True)
        replace_dir(tmp, adapter_dir)  # a crash never leaves the run without an adapter
        plot_loss(run.file(METRICS), run.file(LOSS_PNG))
        say(
            f"done: {step} steps in {_fmt_time(elapsed)}, {rate:,.0f} tokens/s, data wait "
            f"{100 * wait_frac:.1f}%; train loss {last_loss:.4f}"
            + (f", val loss {val_loss:.4f}" if val_loss is not None else "")
            + f"\nadapter: {adapter_dir}   loss curve: {run.file(LOSS_PNG)}"
        )
        if cfg.lora_r > 16:
            say(
                f"note: vLLM serves LoRA rank <= 16 by default; pass --max-lora-rank "
                f"{cfg.lora_r} to `vllm serve`"
            )
    if world > 1:
        torch.distributed.barrier()
    sys.stdout.flush()
    return TrainResult(
        step, total, last_loss, val_loss, adapter_dir, False, resumed_from, rate, wait_frac
    )
