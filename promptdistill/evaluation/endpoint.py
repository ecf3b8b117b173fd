"""Eval's endpoint half: the teacher's latency through its endpoint, and the LLM judge.

A failure here is recorded in the report's notes: the local measurements already made are
never thrown away for it. The embedded teacher is started here when it is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from promptdistill.clients.keys import read_api_key
from promptdistill.core.config import EvalConfig
from promptdistill.core.errors import UserError
from promptdistill.core.redact import redact_url
from promptdistill.evaluation.inputs import RunInputs
from promptdistill.evaluation.judge import JudgeItem, JudgeScore, run_judge, summarize
from promptdistill.evaluation.latency import time_endpoint
from promptdistill.evaluation.local import Phase, timing_summary, with_system
from promptdistill.evaluation.summary import PRIMARY

Say = Callable[[str], None]
MODELS = ("teacher", "student", "base")


@dataclass(kw_only=True)
class EndpointResults:
    latency: dict[str, Any] = field(default_factory=lambda: {"requests": 0})
    judge: dict[str, Any] | None = None  # the report's judge section
    scores: dict[tuple[str, str], JudgeScore] = field(default_factory=dict)  # (model, id)


def api_key(inputs: RunInputs, cfg: EvalConfig) -> str | None:
    teacher = inputs.sample.teacher
    if cfg.api_key_env:
        teacher = teacher.model_copy(update={"api_key_env": cfg.api_key_env, "api_key_file": None})
    return read_api_key(teacher)


def measure_endpoint(
    inputs: RunInputs,
    cfg: EvalConfig,
    description: str,
    texts: dict[str, list[str]],
    count_tokens: Callable[[str], int],
    notes: dict[str, str],
    say: Say,
    latency_measured: bool = False,
) -> EndpointResults:
    """Teacher latency and the judge; `texts` are every model's held-out answers.
    `latency_measured`: the embedded teacher's latency was timed in process (local.py), so no
    server is started for it."""
    jcfg = cfg.judge
    if jcfg.base_url and not jcfg.model:
        raise UserError("--judge-url needs --judge-model (the model name the judge serves)")
    base_url = cfg.base_url or inputs.sample.teacher.base_url
    teacher_model = cfg.model or inputs.sample.teacher.model
    time_teacher = cfg.latency_requests > 0 and not latency_measured
    need_teacher = time_teacher or (jcfg.enabled and jcfg.base_url is None)
    out = EndpointResults()
    if not jcfg.enabled:
        notes["judge"] = "--no-judge"
    if cfg.latency_requests == 0:
        notes["teacher_latency"] = "latency not measured (0 latency requests)"
    if not need_teacher and not jcfg.enabled:
        return out
    with contextlib.ExitStack() as stack:
        try:
            key = api_key(inputs, cfg)
            url, model = base_url, teacher_model
            if need_teacher and url is None:
                from promptdistill.clients.local_server import running_local_teacher

                with Phase(say, f"starting the local teacher ({teacher_model})"):
                    local = stack.enter_context(running_local_teacher(teacher_model, log=say))
                url, model = local.base_url, local.model
        except UserError as e:
            notes["teacher_latency"] = notes["judge"] = f"teacher endpoint unavailable: {e}"
            return out
        if time_teacher and url is not None:
            out.latency = _teacher_latency(inputs, cfg, url, model, key, count_tokens, notes, say)
            if out.latency.get("requests"):
                out.latency["endpoint"] = redact_url(url) if base_url else "embedded local teacher"
        if jcfg.enabled:
            judge_url, judge_model = jcfg.base_url or url, jcfg.model or model
            assert judge_url is not None and judge_model is not None
            items = [
                JudgeItem(model=m, prompt_id=i.id, prompt=i.prompt, answer=texts[m][k])
                for m in MODELS
                for k, i in enumerate(inputs.heldout)
            ]
            try:
                with Phase(say, f"judge ({len(items)} answers, blind, shuffled)"):
                    scores = run_judge(items, description, jcfg, judge_url, judge_model, key)
            except KeyboardInterrupt:
                # Ctrl-C while waiting on the judge: keep everything measured so far
                say("judge interrupted; writing the report without it")
                notes["judge"] = "interrupted (Ctrl-C); run eval again to get the judge's scores"
                return out
            except UserError as e:
                notes["judge"] = f"judge unavailable: {e}"
                return out
            out.scores = {(s.item.model, s.item.prompt_id): s for s in scores}
            summary = summarize(scores)
            out.judge = {
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
    return out


def _teacher_latency(
    inputs: RunInputs,
    cfg: EvalConfig,
    url: str,
    model: str,
    key: str | None,
    count_tokens: Callable[[str], int],
    notes: dict[str, str],
    say: Say,
) -> dict[str, Any]:
    conversations = [
        with_system(i.system, i.prompt) for i in inputs.heldout[: cfg.latency_requests]
    ]
    sampling = inputs.sample.sampling
    max_tokens = cfg.max_new_tokens or sampling.max_tokens
    try:
        with Phase(say, f"teacher latency ({len(conversations)} streamed requests)"):
            timings = time_endpoint(
                url, key, model, conversations, max_tokens=max_tokens,
                temperature=sampling.temperature, top_p=sampling.top_p, count_tokens=count_tokens,
                timeout_s=float(inputs.sample.teacher.timeout_s),
            )  # fmt: skip
        return timing_summary(timings)
    except KeyboardInterrupt:
        say("teacher latency interrupted; going on without it")
        notes["teacher_latency"] = "interrupted (Ctrl-C)"
    except Exception as e:  # any network failure: record it, keep the rest
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        if key:
            reason = reason.replace(key, "***")
        notes["teacher_latency"] = f"teacher endpoint failed: {reason}"
    return {"requests": 0}
