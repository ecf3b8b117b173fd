"""`promptdistill eval RUN`: did the student become the persona, and what did it save (issue #6).

Three models are compared on the held-out prompts (the validation split of issue #5 plus the
prompt set's fixed held-out prompts):
- the student: base model + RUN/adapter, *without* the system prompt;
- the base: the same model without the adapter, without the system prompt;
- the teacher, *with* the system prompt: its answers are already in samples.jsonl.

Order of work, chosen so that no model sits in memory longer than needed and the single-request
latency of the student is timed before anything else has warmed the caches or grown the heap:
1. the student alone (base + adapter, unmerged): NLL of the teacher's answers; then merged:
   single-stream latency and peak memory;
2. the base (a plain second copy): NLL without and with the system prompt;
3. greedy and sampled answers of student and base, batched; base answers for classifier training;
4. text agreement, task metrics, the embedding classifier;
5. free the models; then the teacher endpoint: its latency, and the LLM judge.

Inputs: eval_inputs.py. The report dict: eval_summary.py. Its files: report.py.
"""

from __future__ import annotations

import gc
import hashlib
import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from promptdistill.config import EvalConfig
from promptdistill.errors import UserError
from promptdistill.eval_inputs import Item, RunInputs, load_inputs
from promptdistill.eval_summary import (
    PRIMARY,
    answer_rows,
    assemble,
    efficiency_section,
    task_metrics,
)
from promptdistill.metrics import (
    aggregate_nll,
    chrf,
    mean_ci,
    prompt_effect_recovered,
    rouge_l,
)
from promptdistill.store import RunDir, redact_url

Message = dict[str, str]
Say = Callable[[str], None]
MODELS = ("teacher", "student", "base")
DECODINGS = ("greedy", "sampled")


# --------------------------------------------------------------------------- the local models


@dataclass
class Local:
    """The tokenizer, rendered like training rendered it, and the two local models.

    The student is loaded first, alone, as a PeftModel: its NLL is computed exactly as trained
    (bf16 base weights + fp32 LoRA), then the adapter is merged into the weights (as
    `export --merged` serves it) for generation and latency, where unmerged LoRA layers cost
    about 2x on CPU. The base is a second, plain copy, loaded after the student's latency and
    peak memory are measured, so those numbers are the student's alone.
    """

    tokenizer: Any
    render_prompt: Callable[[Sequence[Message]], list[int]]
    render_answer: Callable[..., tuple[list[int], list[float]]]
    stop_ids: list[int]
    pad_id: int
    device: str
    student: Any = None
    base: Any = None
    adapter_params: int = 0


def _renderers(tokenizer: Any, model_name: str) -> tuple[Any, Any, list[int]]:
    """Prompt rendering and scored examples exactly as issue #5's datums.py renders training
    examples: the student's chat template, loss on the answer up to its end-of-turn token."""
    from promptdistill import datums

    def render_prompt(messages: Sequence[Message]) -> list[int]:
        return datums._render(tokenizer, list(messages), generation_prompt=True)

    def render_answer(
        messages: Sequence[Message], answer: str, truncated: bool = False
    ) -> tuple[list[int], list[float]]:
        """(tokens, weights) of `messages` + the answer. Without a system message this is the
        training datum itself; with one, the same answer tokens and weights follow the
        system-prompted prompt (ChatML renders turns by concatenation; datums checks that)."""
        convo = [*messages, {"role": "assistant", "content": answer}]
        datum = datums.conversation_to_datum(
            convo, tokenizer, teacher_truncated=truncated, model_name=model_name
        )
        if not any(m["role"] == "system" for m in messages):
            return datum.tokens, datum.weights
        bare = render_prompt([m for m in messages if m["role"] != "system"])
        prompt = render_prompt(messages)
        return prompt + datum.tokens[len(bare) :], [0.0] * len(prompt) + datum.weights[len(bare) :]

    return render_prompt, render_answer, sorted(datums.end_of_turn_ids(tokenizer))


def load_local(inputs: RunInputs, say: Say) -> Local:
    """The tokenizer and the student (base + adapter, unmerged)."""
    import torch
    from transformers.utils import logging as hf_logging

    from promptdistill.models import load_student, load_tokenizer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    say(f"loading {inputs.student.model} + {inputs.adapter} on {device}")
    tokenizer = load_tokenizer(inputs.student.model)
    student = load_student(inputs.student.model, inputs.adapter, inputs.student.dtype, device)
    render_prompt, render_answer, stop_ids = _renderers(tokenizer, inputs.student.model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    lora = sum(p.numel() for n, p in student.named_parameters() if "lora_" in n)
    return Local(
        tokenizer, render_prompt, render_answer, stop_ids, pad, device, student, None, lora
    )


def load_base(inputs: RunInputs, local: Local) -> None:
    from promptdistill.models import load_causal_lm

    local.base = load_causal_lm(inputs.student.model, inputs.student.dtype, device=local.device)


def _user(prompt: str) -> list[Message]:
    return [{"role": "user", "content": prompt}]


def _with_system(system: str, prompt: str) -> list[Message]:
    return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]


def _peak_rss_mb() -> float:
    """The process's peak resident set size so far (Linux: KiB; macOS: bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _busy_cores(interval_s: float = 0.25) -> float | None:
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


def _choose_threads(say: Say) -> int:
    """One torch thread when the other processes already keep the cores busy.

    torch's OpenMP threads spin at every barrier: with 2 threads on 2 cores that other
    processes hold, a decode step of SmolLM2-135M took 4.9 s instead of 0.34 s with 1 thread
    (measured on the dev machine at load 8). OMP_NUM_THREADS, when set, is respected.
    """
    import torch

    threads = torch.get_num_threads()
    if os.environ.get("OMP_NUM_THREADS") or threads <= 1:
        return threads
    busy = _busy_cores()
    if busy is not None and busy >= 0.75 * threads:
        torch.set_num_threads(1)
        say(f"other processes keep {busy:.1f} of {os.cpu_count()} cores busy: using 1 thread")
        return 1
    return threads


def _peak_gpu_mb(device: str) -> float | None:
    """The most GPU memory torch held for the student (None on CPU)."""
    if not device.startswith("cuda"):
        return None
    import torch

    return float(torch.cuda.max_memory_allocated()) / 1e6


def _timing_summary(timings: Sequence[Any]) -> dict[str, Any]:
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


def _same_model(a: str, b: str) -> bool:
    from promptdistill.models import resolve_model

    if a == b:
        return True
    try:
        return resolve_model(a).resolve() == resolve_model(b).resolve()
    except UserError:
        return False


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


# --------------------------------------------------------------------------- the evaluation


@dataclass
class Outcome:
    """What eval produced: the report (a JSON-able dict) and one record per held-out prompt."""

    report: dict[str, Any]
    answers: list[dict[str, Any]]


def evaluate(path: Path, cfg: EvalConfig, say: Say) -> Outcome:
    from promptdistill import eval_lm
    from promptdistill.personas import load_persona

    t0 = time.perf_counter()
    inputs = load_inputs(path, cfg)
    notes = dict(inputs.notes)
    heldout = inputs.heldout
    sampling = inputs.sample.sampling
    max_new = cfg.max_new_tokens or sampling.max_tokens
    persona = load_persona(inputs.sample.persona).persona
    say(
        f"{len(heldout)} held-out prompts ({sum(i.split == 'heldout' for i in heldout)} fixed, "
        f"{sum(i.split == 'validation' for i in heldout)} validation); up to {max_new} new tokens"
    )
    local = load_local(inputs, say)
    threads = _choose_threads(say) if local.device == "cpu" else None
    teacher_cfg = inputs.sample.teacher
    base_url = cfg.base_url or teacher_cfg.base_url
    teacher_model = cfg.model or teacher_cfg.model
    # the run's teacher (not an endpoint passed for latency) decides whether base+prompt is it
    with_prompt_nll = teacher_cfg.base_url is None and _same_model(
        teacher_cfg.model, inputs.student.model
    )

    # ---- 2. the student alone: NLL (unmerged, exact), then merged: latency and peak memory
    noprompt = [local.render_answer(_user(i.prompt), i.teacher, i.truncated) for i in heldout]
    with Phase(say, f"student NLL of {len(heldout)} teacher answers"):
        nll_student = eval_lm.score_nll(local.student, noprompt, local.pad_id)
    local.student = local.student.merge_and_unload()
    student_latency: dict[str, Any] = {"requests": 0}
    latency_prompts = [
        local.render_prompt(_user(i.prompt)) for i in heldout[: cfg.latency_requests]
    ]
    if latency_prompts:
        with Phase(say, f"student latency ({len(latency_prompts)} single requests)"):
            timings = eval_lm.time_local(
                local.student, latency_prompts, max_new, local.stop_ids, local.pad_id,
                sampling.temperature, sampling.top_p, cfg.seed,
            )  # fmt: skip
        student_latency = _timing_summary(timings)
    else:
        notes["student_tokens_per_s"] = "latency not measured (0 latency requests)"
    peak_rss = _peak_rss_mb()
    peak_gpu = _peak_gpu_mb(local.device)
    param_counts = _param_counts(local.student, local.adapter_params)

    # ---- 3. the base: NLL of the teacher's answers without and with the system prompt
    load_base(inputs, local)
    with Phase(say, f"base NLL of {len(heldout)} teacher answers"):
        nll_base = eval_lm.score_nll(local.base, noprompt, local.pad_id)
        nll_with: list[Any] | None = None
        if with_prompt_nll:
            withprompt = [
                local.render_answer(_with_system(i.system, i.prompt), i.teacher, i.truncated)
                for i in heldout
            ]
            nll_with = eval_lm.score_nll(local.base, withprompt, local.pad_id)
    if not with_prompt_nll:
        notes["nll_base_withprompt"] = notes["prompt_effect_recovered"] = (
            "the teacher is not the student's base model run locally (the embedded default), so "
            "the base model's NLL with the system prompt is not the teacher's"
        )
    agg = {
        "student": aggregate_nll([s.nll_sum for s in nll_student], [s.tokens for s in nll_student]),
        "base": aggregate_nll([s.nll_sum for s in nll_base], [s.tokens for s in nll_base]),
    }
    if nll_with is not None:
        agg["base_withprompt"] = aggregate_nll(
            [s.nll_sum for s in nll_with], [s.tokens for s in nll_with]
        )
    per = agg.get("base_withprompt")
    effect = prompt_effect_recovered(
        agg["base"].nll, agg["student"].nll, per.nll if per is not None else None
    )
    if effect is None and with_prompt_nll:
        notes["prompt_effect_recovered"] = (
            "the system prompt barely changes the base model's NLL of the teacher's answers "
            "(|gap| < 0.001 nats/token), so the ratio is undefined"
        )

    # ---- 4. answers of student and base, greedy and sampled
    prompts = [local.render_prompt(_user(i.prompt)) for i in heldout]
    answers: dict[tuple[str, str], list[Any]] = {}
    for model_name in ("student", "base"):
        for decoding in DECODINGS:
            with Phase(say, f"{model_name} answers, {decoding} ({len(prompts)})"):
                answers[(model_name, decoding)] = _generate(
                    local, prompts, max_new, decoding == "sampled", sampling, cfg, model_name
                )
    cls_train = inputs.train[: cfg.classifier_train]
    base_train: list[Any] = []
    if cls_train:
        with Phase(say, f"base answers to {len(cls_train)} train prompts (classifier)"):
            base_train = _generate(
                local, [local.render_prompt(_user(i.prompt)) for i in cls_train], max_new,
                True, sampling, cfg, "base",
            )  # fmt: skip
    from promptdistill.datums import system_tokens_removed

    removed = {s: system_tokens_removed(local.tokenizer, s) for s in {i.system for i in heldout}}
    saved_per_prompt = [removed[i.system] for i in heldout]
    del local
    gc.collect()

    # ---- 5. text agreement, task metrics, classifier
    agreement: dict[str, Any] = {}
    per_answer: dict[tuple[str, str], list[dict[str, float]]] = {}
    for (model_name, decoding), gens in answers.items():
        scores = [
            {"rouge_l": rouge_l(g.text, i.teacher), "chrf": chrf(g.text, i.teacher)}
            for g, i in zip(gens, heldout, strict=True)
        ]
        per_answer[(model_name, decoding)] = scores
        agreement[f"{model_name}_{decoding}"] = {
            "rouge_l": mean_ci([s["rouge_l"] for s in scores]).as_dict(),
            "chrf": mean_ci([s["chrf"] for s in scores]).as_dict(),
            "mean_tokens": sum(g.tokens for g in gens) / len(gens),
            "hit_max_new_tokens": sum(g.finish_reason == "length" for g in gens),
        }
    texts = {
        "teacher": [i.teacher for i in heldout],
        **{m: [g.text for g in answers[(m, PRIMARY)]] for m in ("student", "base")},
    }
    task = task_metrics(heldout, answers, cfg.answer_pattern)
    if task is None:
        notes["task"] = "the prompt set has no gold answers for the held-out prompts"

    classifier: dict[str, Any] | None = None
    cls_probs: dict[str, list[float]] = {}
    if not cls_train:
        notes["persona_classifier_student"] = "no train-split answers to train the classifier on"
    else:
        from promptdistill.classifier import persona_shares

        with Phase(say, "persona classifier"):
            result = persona_shares(
                [i.teacher for i in cls_train], [g.text for g in base_train], texts
            )
        classifier = result.as_dict()
        cls_probs = result.probabilities

    # ---- 6. the teacher endpoint: latency and the judge
    judge_section, judge_scores, teacher_latency = _endpoint_phase(
        inputs, cfg, persona.description, heldout, texts, max_new, base_url, teacher_model,
        notes, say,
    )  # fmt: skip

    # ---- efficiency
    efficiency = efficiency_section(inputs, cfg, saved_per_prompt, notes)
    efficiency.update(
        {
            "student_latency": student_latency,
            "teacher_latency": teacher_latency,
            "teacher_sampling_latency_s": mean_ci(
                [r.get("latency_s") for r in inputs.samples if r.get("latency_s") is not None]
            ).as_dict(),
            "student_peak_rss_mb": peak_rss,
            "student_peak_gpu_mb": peak_gpu,
            "cpu_threads": threads,
            "student_dtype": param_counts.pop("dtype"),
            **_adapter_size(inputs.adapter),
            **param_counts,
        }
    )

    report = assemble(
        inputs, cfg, persona.description, agg, effect, agreement, task, classifier,
        judge_section, efficiency, notes, max_new, time.perf_counter() - t0,
    )  # fmt: skip
    rows = answer_rows(
        heldout, answers, per_answer, nll_student, nll_base, nll_with, judge_scores, cls_probs,
        cfg.answer_pattern,
    )  # fmt: skip
    return Outcome(report, rows)


# --------------------------------------------------------------------------- pieces


def _generate(
    local: Local,
    prompts: list[list[int]],
    max_new: int,
    sample: bool,
    sampling: Any,
    cfg: EvalConfig,
    model_name: str,
) -> list[Any]:
    from promptdistill import eval_lm

    model = local.base if model_name == "base" else local.student
    return eval_lm.generate_batched(
        model, local.tokenizer, prompts, max_new, local.stop_ids, local.pad_id,
        sample, sampling.temperature, sampling.top_p, cfg.seed, cfg.batch_size,
    )  # fmt: skip


def _param_counts(merged: Any, lora: int) -> dict[str, Any]:
    total = sum(p.numel() for p in merged.parameters())
    return {
        "base_parameters": total,
        "adapter_parameters": lora,
        "adapter_share_of_base": lora / max(total, 1),
        "dtype": str(next(merged.parameters()).dtype).removeprefix("torch."),
    }


def _adapter_size(adapter: Path) -> dict[str, Any]:
    files = [p for p in adapter.rglob("*") if p.is_file()]
    weights = sum(p.stat().st_size for p in files if p.suffix == ".safetensors")
    return {
        "adapter_bytes": sum(p.stat().st_size for p in files),
        "adapter_weights_bytes": weights,
    }


def _api_key(inputs: RunInputs, cfg: EvalConfig) -> str | None:
    from promptdistill.teacher.sample import read_api_key

    teacher = inputs.sample.teacher
    if cfg.api_key_env:
        teacher = teacher.model_copy(update={"api_key_env": cfg.api_key_env, "api_key_file": None})
    return read_api_key(inputs.sample.model_copy(update={"teacher": teacher}))


def _endpoint_phase(
    inputs: RunInputs,
    cfg: EvalConfig,
    description: str,
    heldout: list[Item],
    texts: dict[str, list[str]],
    max_new: int,
    base_url: str | None,
    teacher_model: str,
    notes: dict[str, str],
    say: Say,
) -> tuple[dict[str, Any] | None, dict[tuple[str, str], Any], dict[str, Any]]:
    """Teacher latency through its endpoint, and the LLM judge. A failure here is recorded
    in the notes: the local measurements already made are never thrown away for it."""
    import contextlib

    from promptdistill import eval_lm
    from promptdistill.judge import JudgeItem, run_judge, summarize

    jcfg = cfg.judge
    if jcfg.base_url and not jcfg.model:
        raise UserError("--judge-url needs --judge-model (the model name the judge serves)")
    need_teacher = cfg.latency_requests > 0 or (jcfg.enabled and jcfg.base_url is None)
    latency: dict[str, Any] = {"requests": 0}
    judge_section: dict[str, Any] | None = None
    judge_scores: dict[tuple[str, str], Any] = {}
    if not jcfg.enabled:
        notes["judge"] = "--no-judge"
    if cfg.latency_requests == 0:
        notes["teacher_latency"] = "latency not measured (0 latency requests)"
    if not need_teacher and not jcfg.enabled:
        return None, {}, latency
    sampling = inputs.sample.sampling
    with contextlib.ExitStack() as stack:
        try:
            api_key = _api_key(inputs, cfg)
            url, model = base_url, teacher_model
            if need_teacher and url is None:
                from promptdistill.teacher.local import running_local_teacher

                with Phase(say, f"starting the local teacher ({teacher_model})"):
                    local = stack.enter_context(running_local_teacher(teacher_model, log=say))
                url, model = local.base_url, local.model
        except UserError as e:
            notes["teacher_latency"] = notes["judge"] = f"teacher endpoint unavailable: {e}"
            return None, {}, latency
        if cfg.latency_requests > 0 and url is not None:
            conversations = [
                _with_system(i.system, i.prompt) for i in heldout[: cfg.latency_requests]
            ]
            try:
                with Phase(say, f"teacher latency ({len(conversations)} streamed requests)"):
                    from promptdistill.tokens import count_tokens

                    timings = eval_lm.time_endpoint(
                        url, api_key, model, conversations, max_new, sampling.temperature,
                        sampling.top_p, lambda t: count_tokens(t, inputs.student.model),
                        teacher_timeout(inputs),
                    )  # fmt: skip
                latency = _timing_summary(timings)
                latency["endpoint"] = redact_url(url) if base_url else "embedded local teacher"
            except KeyboardInterrupt:
                say("teacher latency interrupted; going on without it")
                notes["teacher_latency"] = "interrupted (Ctrl-C)"
            except Exception as e:  # any network failure: record it, keep the rest
                reason = " ".join(str(e).split())[:300] or type(e).__name__
                if api_key:
                    reason = reason.replace(api_key, "***")
                notes["teacher_latency"] = f"teacher endpoint failed: {reason}"
        if jcfg.enabled:
            judge_url = jcfg.base_url or url
            judge_model = jcfg.model or model
            items = [
                JudgeItem(m, i.id, i.prompt, texts[m][k])
                for m in MODELS
                for k, i in enumerate(heldout)
            ]
            assert judge_url is not None and judge_model is not None
            try:
                with Phase(say, f"judge ({len(items)} answers, blind, shuffled)"):
                    scores = run_judge(items, description, jcfg, judge_url, judge_model, api_key)
            except KeyboardInterrupt:
                # Ctrl-C while waiting on the judge: keep everything measured so far
                say("judge interrupted; writing the report without it")
                notes["judge"] = "interrupted (Ctrl-C); run eval again to get the judge's scores"
                return None, {}, latency
            except UserError as e:
                notes["judge"] = f"judge unavailable: {e}"
                return None, {}, latency
            summary = summarize(scores)
            judge_scores = {(s.item.model, s.item.prompt_id): s for s in scores}
            judge_section = {
                "endpoint": redact_url(judge_url) if jcfg.base_url or base_url else "embedded",
                "model": judge_model if (jcfg.model or base_url) else teacher_model,
                "decoding": PRIMARY,
                **{m: summary[m].as_dict() for m in MODELS if m in summary},
            }
            missing = sum(s.score is None for s in scores)
            if missing:
                reasons = sorted({s.reason for s in scores if s.reason})
                notes["judge_missing"] = (
                    f"{missing} of {len(scores)} judge scores missing: {'; '.join(reasons)[:300]}"
                )
    return judge_section, judge_scores, latency


def teacher_timeout(inputs: RunInputs) -> float:
    return float(inputs.sample.teacher.timeout_s)


# --------------------------------------------------------------------------- entry point


def fingerprint(run: RunDir, cfg: EvalConfig) -> str:
    """Changes whenever the samples, the adapter, the run's config or the eval flags change."""
    h = hashlib.sha256(orjson.dumps(cfg.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS))
    files = [run.samples, run.config_path, *sorted(run.file("adapter").rglob("*"))]
    for f in files:
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def evaluate_and_write(
    run: RunDir, cfg: EvalConfig, say: Say, reuse: bool = False
) -> dict[str, Any]:
    """Evaluate RUN and write its report files; with `reuse`, an up-to-date report.json (same
    inputs, same flags) is returned as it is instead of being recomputed."""
    from promptdistill.report import REPORT_JSON, load_report, write_report

    fp = fingerprint(run, cfg)
    if reuse and run.file(REPORT_JSON).is_file():
        old = load_report(run.path)
        if old.get("fingerprint") == fp:
            say(f"{run.file(REPORT_JSON)} is up to date; reusing it")
            return old
    outcome = evaluate(run.path, cfg, say)
    outcome.report["fingerprint"] = fp
    write_report(run, outcome.report, outcome.answers)
    return outcome.report
