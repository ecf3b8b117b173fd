"""Eval's local half: the student and the base model on the held-out prompts.

Order of work, chosen so that no model sits in memory longer than needed and the student's
single-request latency is timed before anything else has warmed the caches or grown the heap:
1. the student alone (base + adapter, unmerged): the NLL of the teacher's answers, exactly as
   trained; then merged (as `export --merged` serves it; unmerged LoRA layers cost about 2x on
   CPU): single-stream latency and peak memory;
2. the base (a plain second copy): NLL without and, when it is the teacher, with the prompt;
3. greedy and sampled answers of student and base, batched; base answers to train prompts for
   the persona classifier;
4. for multi-turn samples (`sample --turns K`), each model's sampled answer to every later
   turn, with its own earlier answers in context (`later_turns`).
Everything is rendered by the student's chat template (models/chat.py), as in training.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptdistill.core.config import EvalConfig
from promptdistill.datums.build import scored_example
from promptdistill.evaluation.inputs import Item, RunInputs
from promptdistill.evaluation.latency import Timing, time_local
from promptdistill.evaluation.metrics import mean_ci
from promptdistill.evaluation.scoring import ScoredText, kl_sums, score_nll
from promptdistill.models.chat import Message, Renderer
from promptdistill.models.generate import generate
from promptdistill.training.objectives import head_weight

Say = Callable[[str], None]
DECODINGS = ("greedy", "sampled")
PRIMARY_DECODING = "sampled"  # summary.PRIMARY: the decoding of the headline numbers


@dataclass(frozen=True, kw_only=True)
class LocalAnswer:
    text: str
    tokens: int  # generated tokens, the end-of-turn token included
    finish_reason: str  # "stop" (end of turn) or "length"


@dataclass(kw_only=True)
class LocalResults:
    """What eval measured with the local models, per held-out prompt where it is a list."""

    nll_student: list[ScoredText]
    nll_base: list[ScoredText]
    nll_with: list[ScoredText] | None  # the base *with* the system prompt (the teacher)
    # per held-out answer, the summed KL(teacher || student) and KL(teacher || base) of the
    # next-token distributions at its answer tokens (when the teacher is the base + prompt)
    kl_student: list[float] | None
    answers: dict[tuple[str, str], list[LocalAnswer]]  # (model, decoding) -> answers
    kl_base: list[float] | None
    base_train: list[LocalAnswer]  # base answers to the classifier's train prompts
    saved_per_prompt: list[int]  # system-prompt tokens the student does not need
    efficiency: dict[str, Any] = field(default_factory=dict)
    # multi-turn samples (issue #14): model -> per held-out item, its sampled answer to every
    # turn, with its own earlier answers in context (turns.py); empty for one-turn samples
    turn_answers: dict[str, list[list[LocalAnswer]]] = field(default_factory=dict)


class Phase:
    """Say what runs and how long it took: `with Phase(say, "NLL"):`."""

    def __init__(self, say: Say, what: str) -> None:
        self.say, self.what = say, what

    def __enter__(self) -> Phase:
        self.start = time.perf_counter()
        self.say(f"{self.what} ...")
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.say(f"{self.what}: {time.perf_counter() - self.start:.1f} s")


def user(prompt: str) -> list[Message]:
    return [{"role": "user", "content": prompt}]


def with_system(system: str, prompt: str) -> list[Message]:
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


@dataclass(frozen=True, kw_only=True)
class Answering:
    """How eval's local models answer: the teacher's sampling settings, batched, seeded."""

    renderer: Renderer
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int
    batch_size: int

    def __call__(
        self, model: Any, conversations: list[list[Message]], sample: bool
    ) -> list[LocalAnswer]:
        r = self.renderer
        out = generate(
            model, [r.prompt(c) for c in conversations], max_new_tokens=self.max_new_tokens,
            stop_ids=r.stop_ids, pad_id=r.pad_id,
            temperature=self.temperature if sample else 0.0, top_p=self.top_p, seed=self.seed,
            batch_size=self.batch_size,
        )  # fmt: skip
        return [
            LocalAnswer(
                text=r.decode(g.answer_tokens).strip(),
                tokens=len(g.tokens),
                finish_reason=g.finish_reason,
            )
            for g in out
        ]


def teacher_latency(
    base: Any,
    renderer: Renderer,
    items: list[Item],
    sampling: Any,
    max_new: int,
    seed: int,
    say: Say,
) -> dict[str, Any]:
    """The embedded teacher's single-request latency: the base model with the system prompt,
    whose cache is computed once (models/prefix.py), batch 1, the teacher's sampling."""
    import torch

    from promptdistill.models.prefix import starts_all, system_prefix

    prompts = [renderer.prompt(with_system(i.system, i.prompt)) for i in items]
    with torch.inference_mode():
        prefix = system_prefix(base, renderer, items[0].system)
    if prefix is not None and not starts_all(prefix, prompts):
        prefix = None
    with Phase(say, f"teacher latency, in process ({len(prompts)} single requests)"):
        timings = time_local(
            base, prompts, max_new_tokens=max_new, stop_ids=renderer.stop_ids,
            pad_id=renderer.pad_id, temperature=sampling.temperature, top_p=sampling.top_p,
            seed=seed, prefix=prefix,
        )  # fmt: skip
    return {**timing_summary(timings), "endpoint": "embedded local teacher, in process"}


def measure_local(
    inputs: RunInputs,
    cfg: EvalConfig,
    renderer: Renderer,
    with_prompt_nll: bool,
    notes: dict[str, str],
    say: Say,
) -> LocalResults:
    """Steps 1-3 of the module docstring."""
    import torch
    from transformers.utils import logging as hf_logging

    from promptdistill.models.load import load_causal_lm, load_student

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    say(f"loading {inputs.student.model} + {inputs.adapter} on {device}")
    threads = choose_threads(say) if device == "cpu" else None
    heldout, sampling = inputs.heldout, inputs.sample.sampling
    max_new = cfg.max_new_tokens or sampling.max_tokens
    name = inputs.student.model

    def score(model: Any, messages: Callable[[Item], list[Message]]) -> list[ScoredText]:
        examples = [
            scored_example(renderer, messages(i), i.teacher, i.truncated, name) for i in heldout
        ]
        # the teacher's system prompt is the same for every held-out prompt: run it once
        return score_nll(model, examples, keep_hidden=with_prompt_nll, share_prefix=True)

    # ---- 1. the student alone: NLL (unmerged, exact), then merged: latency and peak memory
    q = inputs.student.quantize
    student = load_student(name, inputs.adapter, inputs.student.dtype, device, quantize=q)
    adapter_params = sum(p.numel() for n, p in student.named_parameters() if "lora_" in n)
    with Phase(say, f"student NLL of {len(heldout)} teacher answers"):
        nll_student = score(student, lambda i: user(i.prompt))
    if q != "4bit":  # a 4-bit base stays unmerged: merging would requantise it (lossy)
        student = student.merge_and_unload()
    latency_prompts = [renderer.prompt(user(i.prompt)) for i in heldout[: cfg.latency_requests]]
    timings: list[Timing] = []
    if latency_prompts:
        with Phase(say, f"student latency ({len(latency_prompts)} single requests)"):
            timings = time_local(
                student, latency_prompts, max_new_tokens=max_new, stop_ids=renderer.stop_ids,
                pad_id=renderer.pad_id, temperature=sampling.temperature, top_p=sampling.top_p,
                seed=cfg.seed,
            )  # fmt: skip
    else:
        notes["student_tokens_per_s"] = "latency not measured (0 latency requests)"
    efficiency = {
        "student_latency": timing_summary(timings),
        "student_peak_rss_mb": peak_rss_mb(),
        "student_peak_gpu_mb": peak_gpu_mb(device),
        "cpu_threads": threads,
        **param_counts(student, adapter_params),
    }

    # ---- 2. the base: NLL of the teacher's answers without and with the system prompt
    base = load_causal_lm(name, inputs.student.dtype, device=device, quantize=q)
    if with_prompt_nll and cfg.base_url is None and latency_prompts and q != "4bit":
        # the embedded teacher is this base with the system prompt: time it here, in process,
        # as it answered `sample`, instead of starting a server for it (evaluation/endpoint.py;
        # not a 4-bit base: the teacher answered unquantised)
        efficiency["teacher_latency"] = teacher_latency(
            base, renderer, heldout[: cfg.latency_requests], sampling, max_new, cfg.seed, say
        )
    with Phase(say, f"base NLL of {len(heldout)} teacher answers"):
        nll_base = score(base, lambda i: user(i.prompt))
        nll_with = (
            score(base, lambda i: with_system(i.system, i.prompt)) if with_prompt_nll else None
        )
    kl_student = kl_base = None
    if nll_with is not None:  # the teacher's whole distribution is at hand: the direct measure
        with Phase(say, "KL(teacher || student) and KL(teacher || base)"):
            head = head_weight(base)
            kl_student = kl_sums(nll_with, nll_student, head)
            kl_base = kl_sums(nll_with, nll_base, head)

    # ---- 3. answers of student and base, greedy and sampled, and base answers for the classifier
    answer = Answering(
        renderer=renderer, max_new_tokens=max_new, temperature=sampling.temperature,
        top_p=sampling.top_p, seed=cfg.seed, batch_size=cfg.batch_size,
    )  # fmt: skip
    answers: dict[tuple[str, str], list[LocalAnswer]] = {}
    for model_name, model in (("student", student), ("base", base)):
        for decoding in DECODINGS:
            with Phase(say, f"{model_name} answers, {decoding} ({len(heldout)})"):
                answers[(model_name, decoding)] = answer(
                    model, [user(i.prompt) for i in heldout], decoding == "sampled"
                )
    cls_train = inputs.train[: cfg.classifier_train]
    base_train: list[LocalAnswer] = []
    if cls_train:
        with Phase(say, f"base answers to {len(cls_train)} train prompts (classifier)"):
            base_train = answer(base, [user(i.prompt) for i in cls_train], True)
    # ---- 4. multi-turn samples: every later turn, each model in its own conversation
    turn_answers: dict[str, list[list[LocalAnswer]]] = {}
    if any(len(i.turns) > 1 for i in heldout):
        with Phase(say, f"later turns of {sum(len(i.turns) > 1 for i in heldout)} conversations"):
            turn_answers = later_turns(
                {"student": student, "base": base}, heldout, answers, answer, PRIMARY_DECODING
            )
    removed = {s: renderer.system_tokens_removed(s) for s in {i.system for i in heldout}}
    return LocalResults(
        nll_student=nll_student,
        nll_base=nll_base,
        nll_with=nll_with,
        kl_student=kl_student,
        kl_base=kl_base,
        answers=answers,
        base_train=base_train,
        saved_per_prompt=[removed[i.system] for i in heldout],
        efficiency=efficiency,
        turn_answers=turn_answers,
    )


# --------------------------------------------------------------------------- the machine


def peak_rss_mb() -> float:
    """The process's peak resident set size so far (Linux: KiB; macOS: bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def peak_gpu_mb(device: str) -> float | None:
    """The most GPU memory torch held for the student (None on CPU)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return float(torch.cuda.max_memory_allocated()) / 1e6


def busy_cores(interval_s: float = 0.25) -> float | None:
    """How many cores other processes keep busy right now (Linux /proc/stat; else None)."""

    def snapshot() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields), idle

    def own_cpu_s() -> float:
        t = os.times()
        return t.user + t.system

    try:
        total0, idle0 = snapshot()
        own0, wall0 = own_cpu_s(), time.monotonic()
        time.sleep(interval_s)
        total1, idle1 = snapshot()
        own1, wall1 = own_cpu_s(), time.monotonic()
    except (OSError, ValueError, IndexError):
        return None
    cores = os.cpu_count() or 1
    dt = total1 - total0
    if dt <= 0 or wall1 <= wall0:
        return None
    busy = cores * (1.0 - (idle1 - idle0) / dt)
    return max(0.0, busy - (own1 - own0) / (wall1 - wall0))  # not counting this process


def choose_threads(say: Say) -> int:
    """One torch thread when the other processes already keep the cores busy.

    torch's OpenMP threads spin at every barrier: with 2 threads on 2 cores that other
    processes hold, a decode step of SmolLM2-135M took 4.9 s instead of 0.34 s with 1 thread
    (measured on the dev machine at load 8). OMP_NUM_THREADS, when set, is respected.
    """
    import torch

    threads = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS") or threads <= 1:
        return threads
    busy = busy_cores()
    if busy is not None and busy >= 0.75 * threads:
        torch.set_num_threads(1)
        say(f"other processes keep {busy:.1f} of {os.cpu_count()} cores busy: using 1 thread")
        return 1
    return threads


def timing_summary(timings: Sequence[Timing]) -> dict[str, Any]:
    if not timings:
        return {"requests": 0}
    tokens = sum(t.tokens for t in timings)
    total = sum(t.total_s for t in timings)
    ttfts = [t.ttft_s for t in timings if t.ttft_s is not None]
    return {
        "requests": len(timings),
        "ttft_s": mean_ci(ttfts).as_dict(),
        "total_s": mean_ci([t.total_s for t in timings]).as_dict(),
        "completion_tokens": tokens,
        # generated tokens over wall time, the prompt's prefill included: what a user waits for
        "tokens_per_s": tokens / total if total > 0 else None,
    }


def param_counts(merged: Any, lora: int) -> dict[str, Any]:
    """Parameters of the base (a 4-bit weight counted by its unpacked shape) and the adapter."""

    def numel(p: Any) -> int:
        state = getattr(p, "quant_state", None)  # bitsandbytes' Params4bit: 2 values a byte
        return int(state.shape.numel()) if state is not None else int(p.numel())

    named = list(merged.named_parameters())
    total = sum(numel(p) for n, p in named if "lora_" not in n)
    dtype = str(named[0][1].dtype).removeprefix("torch.")
    if getattr(merged, "is_loaded_in_4bit", False):
        dtype = f"nf4 ({dtype} compute)"
    return {
        "base_parameters": total,
        "adapter_parameters": lora,
        "adapter_share_of_base": lora / max(total, 1),
        "student_dtype": dtype,
    }


def later_turns(
    models: dict[str, Any],
    heldout: Sequence[Item],
    answers: dict[tuple[str, str], list[LocalAnswer]],
    answer: Answering,
    decoding: str,
) -> dict[str, list[list[LocalAnswer]]]:
    """Each model's answers to every turn of the held-out conversations, turn 1 being its
    `decoding` answer already made. A model sees the recorded user turns (the simulator wrote
    them in reply to the teacher) and *its own* earlier answers, as a user talking to it
    would: drift over turns is its own (MT-Bench asks its second turns the same way)."""
    out: dict[str, list[list[LocalAnswer]]] = {}
    most = max(len(i.turns) for i in heldout)
    for name, model in models.items():
        per_item = [[a] for a in answers[(name, decoding)]]
        for t in range(1, most):
            rows = [k for k, i in enumerate(heldout) if len(i.turns) > t]
            convos = []
            for k in rows:
                convo: list[Message] = []
                for (u, _), own in zip(heldout[k].turns[:t], per_item[k], strict=True):
                    convo += [
                        {"role": "user", "content": u},
                        {"role": "assistant", "content": own.text},
                    ]
                convos.append([*convo, {"role": "user", "content": heldout[k].turns[t][0]}])
            for k, a in zip(rows, answer(model, convos, decoding == "sampled"), strict=True):
                per_item[k].append(a)
        out[name] = per_item
    return out
