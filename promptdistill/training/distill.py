"""The distillation objectives, `kd` and `onpolicy` (issue #13); `sft` is in objectives.py.

- `Distill` (`kd`): at every answer token of the teacher's samples, KL(teacher || student) on
  the teacher's whole next-token distribution (in process) or its top-K logprobs (from an
  endpoint), plus `ce_weight` x the NLL of the sampled token and `hidden_weight` x an MSE on the
  last hidden states.
- `OnPolicy` (`onpolicy`): a share `fraction` of each micro-batch is answered by the student
  itself and trained on the per-token reverse KL to the teacher; the rest is `kd` (GKD's
  `lmbda`). Validation is the `kd` loss on the teacher's samples.

The losses themselves are kernels in kl.py; the teacher in teacher.py; the student's answers
in onpolicy.py.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from promptdistill.core.config import SamplingParams, TeacherConfig, TrainConfig
from promptdistill.core.errors import UserError
from promptdistill.core.rundir import RunDir
from promptdistill.core.samples import SampleReader
from promptdistill.models.chat import Renderer
from promptdistill.training import kl
from promptdistill.training.batching import Batch, Mode, TeacherTargets
from promptdistill.training.objectives import LossSum, NextTokenNLL, Objective, head_weight
from promptdistill.training.onpolicy import Generation, MergedCopy, student_answers, subset
from promptdistill.training.student import Student
from promptdistill.training.teacher import InProcessTeacher


def _teacher_logits(
    h_NH: torch.Tensor, head_VH: torch.Tensor
) -> Callable[[int, int], torch.Tensor]:
    return lambda s, e: (h_NH[s:e].to(head_VH.dtype) @ head_VH.T).float()


@dataclass
class Distill:
    """`kd`: forward KL to the teacher at every answer token of its samples."""

    teacher: InProcessTeacher | None  # None: the endpoint's top-K logprobs in the datums
    ce_weight: float = 0.0
    hidden_weight: float = 0.0
    tail: Literal["bucket", "renorm"] = "bucket"
    name: str = "kd"

    def prepare(self, batch: Batch, step: int | None) -> list[Batch]:
        if self.teacher is not None:
            batch.teacher = self.teacher.targets(batch)
        elif batch.teacher is None or batch.teacher.top_ids_NK is None:
            raise UserError(
                "--objective kd needs the teacher's distribution: the run's samples carry no "
                "logprobs and its teacher is not a local model; sample with --logprobs 20 from "
                "an endpoint that returns them (OpenAI, vLLM), or pass --teacher-model PATH"
            )
        return [batch]

    def costs(self, loop_s: float) -> str | None:
        return _teacher_cost(self.teacher, loop_s)

    def loss_sum(self, h_NH: torch.Tensor, head_VH: torch.Tensor, batch: Batch) -> LossSum:
        t = batch.teacher
        assert t is not None, "prepare() the batch first"
        if t.hidden_NH is not None and t.head_VH is not None:
            kernel = kl.forward_kl(
                _teacher_logits(t.hidden_NH, t.head_VH), batch.targets_N, self.ce_weight
            )
        else:
            assert t.top_ids_NK is not None and t.top_logp_NK is not None
            kernel = kl.sparse_kl(
                t.top_ids_NK, t.top_logp_NK, batch.targets_N, self.ce_weight, self.tail
            )
        total, stats = kl.chunked_loss(h_NH, head_VH, batch.weights_N, kernel)
        if self.hidden_weight and t.hidden_NH is not None:
            mse_N = (h_NH.float() - t.hidden_NH.float()).pow(2).mean(-1)
            mse = (mse_N * batch.weights_N).sum()
            total = total + self.hidden_weight * mse
            stats["hidden_mse"] = mse.detach()
        return LossSum(total=total, stats=stats)


class Scorer(Protocol):
    """What scores the student's answers: the in-process teacher (its whole distribution), or
    an endpoint (the logprob of each answer token, training/scorer.py)."""

    forward_s: float

    def targets(self, batch: Batch) -> TeacherTargets: ...


@dataclass
class OnPolicy:
    """`onpolicy`: the student's own answers, scored by the teacher (reverse KL)."""

    offpolicy: Distill  # for the rest of each step, and for validation
    teacher: Scorer  # scores the student's answers
    generate_with: Callable[[Batch, list[int]], Batch]  # the student answers these rows
    fraction: float = 1.0
    mode: Mode = "pad"
    name: str = "onpolicy"
    generated_tokens: int = 0
    generate_s: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)

    def prepare(self, batch: Batch, step: int | None) -> list[Batch]:
        if step is None:
            if self.offpolicy.teacher is None and (batch.teacher is None or self.fraction == 1):
                return [batch]  # no teacher distribution for the samples: validate on the NLL
            return self.offpolicy.prepare(batch, None)
        import time

        n = len(batch.examples)
        k = min(n, max(1, round(self.fraction * n)))
        t0 = time.perf_counter()
        mine = self.generate_with(batch, list(range(k)))
        self.generate_s += time.perf_counter() - t0
        self.generated_tokens += int(mine.weight_sum)
        mine.teacher = self.teacher.targets(mine)
        out = [mine]
        if k < n:
            out += self.offpolicy.prepare(subset(batch, list(range(k, n)), self.mode), step)
        return out

    def costs(self, loop_s: float) -> str | None:
        rate = self.generated_tokens / max(self.generate_s, 1e-9)
        answers = (
            f"student answers: {self.generated_tokens} tokens in {self.generate_s:.1f} s "
            f"({rate:.0f} tok/s)"
        )
        return "; ".join(p for p in (_teacher_cost(self.teacher, loop_s), answers) if p)

    def loss_sum(self, h_NH: torch.Tensor, head_VH: torch.Tensor, batch: Batch) -> LossSum:
        t = batch.teacher
        if not batch.onpolicy:
            if t is None:  # validation without the teacher's distribution: the NLL
                return NextTokenNLL().loss_sum(h_NH, head_VH, batch)
            return self.offpolicy.loss_sum(h_NH, head_VH, batch)
        assert t is not None, "prepare() the batch first"
        if t.hidden_NH is not None and t.head_VH is not None:
            kernel = kl.reverse_kl(_teacher_logits(t.hidden_NH, t.head_VH))
        else:
            assert t.token_logp_N is not None
            kernel = kl.sampled_reverse_kl(t.token_logp_N, batch.targets_N)
        total, stats = kl.chunked_loss(h_NH, head_VH, batch.weights_N, kernel)
        return LossSum(total=total, stats=stats)


def _teacher_cost(teacher: Scorer | None, loop_s: float) -> str | None:
    if teacher is None or not teacher.forward_s:
        return None
    share = 100 * teacher.forward_s / max(loop_s, 1e-9)
    return f"teacher forwards {teacher.forward_s:.1f} s ({share:.0f}% of the steps)"


def generator(student: Student, gen: Generation) -> Callable[[Batch, list[int]], Batch]:
    """The student answering a batch's rows, on a merged copy of its current weights."""
    from promptdistill.models.load import load_causal_lm

    copy = MergedCopy(
        student.model, load_causal_lm(student.name, dtype=student.dtype, device=str(student.device))
    )

    def answer(batch: Batch, rows: list[int]) -> Batch:
        return student_answers(copy.sync(), batch, rows, gen, student.mode)

    return answer


# --------------------------------------------------------------------------- from the config


def objective_for(cfg: TrainConfig, student: Student, renderer: Renderer, run: RunDir) -> Objective:
    """The objective `cfg.objective` names, with its teacher."""
    if cfg.objective == "sft":
        return NextTokenNLL()
    teacher = in_process_teacher(cfg, student, renderer, run)
    if cfg.hidden_weight and (
        teacher is None or teacher.head_VH.shape[1] != student_hidden(student)
    ):
        raise UserError(
            "--hidden-weight needs a local teacher with the student's hidden size (the student's "
            "own base model, or --teacher-model with the same architecture)"
        )
    distill = Distill(
        teacher, ce_weight=cfg.ce_weight, hidden_weight=cfg.hidden_weight, tail=cfg.kd_tail
    )
    if cfg.objective == "kd":
        return distill
    turns = int((run.stage_config("sample") or {}).get("turns") or 1)
    if turns > 1 and cfg.onpolicy_fraction >= 1.0:
        # the student answers only a conversation's first user turn (onpolicy.py): with every
        # example replaced by its own answer, the later turns would never be trained on
        raise UserError(
            f"--objective onpolicy: this run's samples have {turns} user turns, but the student "
            "answers only the first one itself; pass --onpolicy-fraction below 1 (e.g. 0.5) so "
            "the rest of each step trains on every teacher turn (kd), or use --objective kd"
        )
    scorer: Scorer
    if teacher is not None:
        scorer = teacher
    else:  # the run's teacher endpoint scores the student's answers (vLLM prompt_logprobs)
        from promptdistill.training.scorer import EndpointScorer

        recorded = (run.stage_config("sample") or {}).get("teacher") or {}
        scorer = EndpointScorer(TeacherConfig.model_validate(recorded), renderer, run.samples)
    sampling = run_sampling(run)
    gen = Generation(
        max_new_tokens=sampling.max_tokens, temperature=sampling.temperature,
        top_p=sampling.top_p, stop_ids=renderer.stop_ids, pad_id=renderer.pad_id,
        suppress_ids=renderer.inner_special_ids, seed=cfg.seed,
    )  # fmt: skip
    return OnPolicy(
        offpolicy=distill, teacher=scorer, generate_with=generator(student, gen),
        fraction=cfg.onpolicy_fraction, mode=student.mode,
    )  # fmt: skip


def student_hidden(student: Student) -> int:
    return int(head_weight(student.lm).shape[1])


def run_sampling(run: RunDir) -> SamplingParams:
    """The teacher's sampling settings, as `sample` recorded them: the student answers alike."""
    recorded = (run.stage_config("sample") or {}).get("sampling")
    return (
        SamplingParams.model_validate(recorded) if isinstance(recorded, dict) else SamplingParams()
    )


def system_prompt_of(run: RunDir) -> str:
    """The system prompt the teacher answered with: the samples', else the persona's."""
    for record in SampleReader(run.samples).records():
        for m in record.get("messages") or []:
            if isinstance(m, dict) and m.get("role") == "system" and m.get("content"):
                return str(m["content"])
        break
    stage = run.stage_config("sample") or {}
    persona = stage.get("persona")
    if not persona:
        raise UserError(
            f"{run.config_path} names no persona: cannot find the teacher's system prompt"
        )
    from promptdistill.personas import load_run_persona, teacher_system

    return teacher_system(load_run_persona(str(persona), stage.get("data_dir")))


def in_process_teacher(
    cfg: TrainConfig, student: Student, renderer: Renderer, run: RunDir
) -> InProcessTeacher | None:
    """The teacher as a local model: the student's own base model with its adapter switched
    off when that is the run's teacher (the embedded default), else `--teacher-model` or the
    run's local teacher; None when the run's teacher is an endpoint."""
    from promptdistill.models.load import load_causal_lm, load_tokenizer
    from promptdistill.models.resolve import resolve_model

    recorded = (run.stage_config("sample") or {}).get("teacher") or {}
    name = cfg.teacher_model
    if name is None:
        if recorded.get("base_url"):
            return None
        name = str(recorded.get("model") or "smollm2-135m")
    system = system_prompt_of(run)
    student_dir = resolve_model(student.name)
    if resolve_model(name).resolve() == student_dir.resolve():
        return InProcessTeacher(
            student.lm.get_decoder(), head_weight(student.lm), renderer, system,
            adapter_off=student.model.disable_adapter, compute=student.compute,
        )  # fmt: skip
    if load_tokenizer(name).get_vocab() != renderer.tokenizer.get_vocab():
        raise UserError(
            f"--teacher-model {name} has another tokenizer than the student: its distribution "
            "cannot be compared token by token; use a teacher of the student's family"
        )
    other = load_causal_lm(name, dtype=student.dtype, device=str(student.device))
    for p in other.parameters():
        p.requires_grad_(False)

    def compute() -> AbstractContextManager[Any]:
        if student.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(student.device.type, dtype=student.dtype)

    return InProcessTeacher(
        other.get_decoder(), other.get_output_embeddings().weight, renderer, system,
        adapter_off=nullcontext, compute=compute,
    )  # fmt: skip
