"""Checkpoints: everything needed to resume a training run exactly, and nothing pickled.

Every `save_every` steps, `RUN/checkpoints/step-XXXXXX/` is written atomically (temp dir, then
rename) by a background thread, from a snapshot taken on the main thread between steps: the LoRA
weights, AdamW state and RNG states as safetensors, the step, data position and configuration as
JSON. The last `keep_checkpoints` are kept. A resumed run reproduces the uninterrupted one: the
data order and the LR schedule are pure functions of the step and the data position.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from safetensors.torch import load_file, save_file

from promptdistill.core.config import StudentConfig, TrainConfig
from promptdistill.core.errors import UserError
from promptdistill.core.io import atomic_write_bytes, atomic_write_json, read_jsonl, writing
from promptdistill.core.rundir import RunDir

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
    "objective",  # issue #13: checkpoints from before it were all sft, the default
    "ce_weight",
    "hidden_weight",
    "kd_tail",
    "onpolicy_fraction",
    "teacher_model",
)


class Checkpointer:
    """Writes checkpoints of one training run in the background, at most one at a time. On
    ranks other than 0 it writes nothing."""

    def __init__(
        self, run: RunDir, model: Any, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
        keep: int, enabled: bool = True,
    ) -> None:  # fmt: skip
        self.run, self.model, self.optimizer, self.meta = run, model, optimizer, meta
        self.keep, self.enabled = keep, enabled
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint")
        self._pending: Future[Path] | None = None

    def save(self, step: int, data_position: Any) -> None:
        if not self.enabled:
            return
        snap = snapshot(
            self.model, self.optimizer, {"step": step, "data_position": data_position, **self.meta}
        )
        self.wait()  # at most one write in flight
        self._pending = self._writer.submit(write_checkpoint, self.run.checkpoints, snap, self.keep)

    def wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def close(self) -> None:
        self._writer.shutdown(wait=True)


def checkpoint_dirs(run: RunDir) -> list[Path]:
    root = run.checkpoints
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
    step = snap["state"]["step"]
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    try:
        with writing(final):  # a full disk: one line naming the checkpoint (issue #16)
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            save_file(snap["trainable"], str(tmp / "adapter.safetensors"))
            save_file(snap["optimizer"], str(tmp / "optimizer.safetensors"))
            save_file(snap["rng_tensors"], str(tmp / "rng.safetensors"))
            atomic_write_json(tmp / "state.json", snap["state"])
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a partial checkpoint frees its space
        raise
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, lm: Any, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
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


def check_resumable(
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
        was = saved["train"].get(key, TrainConfig.model_fields[key].default)
        if was != getattr(cfg, key):
            raise UserError(
                f"{path} was trained with --{key.replace('_', '-')} {was}, "
                f"not {getattr(cfg, key)}: rerun with the same value to resume, or pass --fresh "
                "to start over"
            )
    was_q = saved["student"].get("quantize", "none")  # checkpoints before #17: unquantised
    if was_q != student.quantize:
        raise UserError(
            f"{path} was trained with --quantize {was_q}, not {student.quantize}: rerun with "
            "the same value to resume, or pass --fresh to start over"
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


def fresh_start(run: RunDir) -> None:
    """`--fresh`: forget every checkpoint and the adapter, metrics and loss curve."""
    for folder in (run.checkpoints, run.adapter):
        shutil.rmtree(folder, ignore_errors=True)
    for file in (run.metrics, run.loss_png, run.train_dashboard):
        file.unlink(missing_ok=True)


def trim_metrics(path: Path, upto_step: int) -> None:
    """Drop metric lines logged after the checkpoint we resume from (they will be redone)."""
    if not path.exists():
        return
    keep = [r for r in read_jsonl(path) if r.get("step", 0) <= upto_step]
    keep = [r for r in keep if not (r.get("type") == "train" and r["step"] > upto_step)]
    atomic_write_bytes(path, b"".join(orjson.dumps(r) + b"\n" for r in keep))
