"""On-policy batches: the student answers the training prompts itself (issue #13).

For `--objective onpolicy`, a share of each micro-batch's examples is replaced by the same
prompts with the student's own answers: generated in process, batched, with the current adapter
and the teacher's sampling temperature, through the one generation engine (models/generate.py).
The teacher then scores every token of those answers (training/teacher.py), and the loss is
the per-token reverse KL (training/kl.py). Learning from its own samples, the student is
corrected where it actually goes wrong, not only where the teacher's samples went (tinker-cookbook
distillation/train_on_policy.py; Microsoft LMOps opcd/; TRL GKD's `lmbda`).

Generation is seeded by (seed, epoch, batch index), so a resumed run generates the same answers.
It runs on `MergedCopy`, a plain copy of the base model whose weights are set to base + LoRA
before each step's answers: unmerged LoRA layers cost about twice as much per token on CPU
(docs/eval.md), and merging into the training weights themselves would not undo exactly in
bf16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from promptdistill.datums.build import Datum
from promptdistill.datums.store import to_arrays
from promptdistill.models.generate import generate
from promptdistill.training.batching import Batch, Mode, TeacherTargets, collate


@dataclass(frozen=True, kw_only=True)
class Generation:
    """How the student answers: the teacher's sampling settings, and the end-of-turn ids."""

    max_new_tokens: int
    temperature: float
    top_p: float
    stop_ids: list[int]
    pad_id: int
    suppress_ids: list[int]
    seed: int = 0


class MergedCopy:
    """A plain model with the student's current weights (base + scale * B @ A per LoRA layer),
    for generating; the student's own (training) weights are never touched."""

    def __init__(self, peft_model: Any, plain: Any) -> None:
        from peft.tuners.lora import LoraLayer

        self.plain = plain
        lm = peft_model.get_base_model()
        self.pairs: list[tuple[Any, Any]] = [
            (module, plain.get_submodule(name))
            for name, module in lm.named_modules()
            if isinstance(module, LoraLayer)
        ]
        for p in plain.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def sync(self) -> Any:
        """Copy the student's current weights in; returns the plain model."""
        for lora, target in self.pairs:
            base = lora.get_base_layer().weight
            delta = lora.get_delta_weight("default")
            target.weight.copy_((base.float() + delta.float()).to(target.weight.dtype))
        return self.plain


def examples_batch(
    examples: list[tuple[np.ndarray, np.ndarray]], ids: list[str], mode: Mode
) -> Batch:
    """A batch of the given (tokens, weights) examples, collated as the trainer collates."""
    datums = [
        Datum(id=i, split="train", tokens=t.tolist(), weights=w.tolist())
        for i, (t, w) in zip(ids, examples, strict=True)
    ]
    return collate(to_arrays(datums, {}), np.arange(len(datums)), mode)


def subset(batch: Batch, rows: list[int], mode: Mode) -> Batch:
    """The batch's `rows` only, with the teacher targets of their loss positions."""
    out = examples_batch([batch.examples[r] for r in rows], [batch.ids[r] for r in rows], mode)
    if batch.teacher is not None:
        keep_N = np.isin(batch.rows_N.cpu().numpy(), rows)
        out.teacher = TeacherTargets(
            **{k: None if v is None else v[keep_N] for k, v in vars(batch.teacher).items()}
        )
    return out


def student_answers(
    model: object, batch: Batch, rows: list[int], gen: Generation, mode: Mode
) -> Batch:
    """The prompts of `rows` (each example up to its first answer token) answered by `model`;
    every generated token carries weight 1 (its end-of-turn token too, when it stopped).

    In a multi-turn conversation (`sample --turns K`) that is the first user turn: the later
    user turns were written in reply to the teacher's answers, not to the student's, so the
    student answers the conversation's opening, and its later turns are learnt from the
    teacher's tokens (the kd part of each step)."""
    prompts = []
    for r in rows:
        tokens, weights = batch.examples[r]
        first = int(np.argmax(weights > 0))  # weights[i]: the weight of predicting tokens[i]
        prompts.append(tokens[:first].tolist())
    seed = (gen.seed * 1_000_003 + batch.epoch * 10_007 + batch.index) % (2**31)
    answers = generate(
        model, prompts, max_new_tokens=gen.max_new_tokens, stop_ids=gen.stop_ids,
        pad_id=gen.pad_id, temperature=gen.temperature, top_p=gen.top_p, seed=seed,
        batch_size=len(prompts), suppress_ids=gen.suppress_ids,
    )  # fmt: skip
    examples = [
        (
            np.asarray(p + a.tokens, dtype=np.int32),
            np.asarray([0.0] * len(p) + [1.0] * len(a.tokens), dtype=np.float32),
        )
        for p, a in zip(prompts, answers, strict=True)
        if a.tokens
    ]
    ids = [f"{batch.ids[r]}#student" for r, a in zip(rows, answers, strict=True) if a.tokens]
    out = examples_batch(examples, ids, mode)
    out.onpolicy, out.epoch, out.index = True, batch.epoch, batch.index
    return out
