"""`promptdistill eval RUN`: did the student become the persona, and what did it save (issue #6).

Three models are compared on the held-out prompts (the validation split plus the prompt set's
fixed held-out prompts):
- the student: base model + RUN/adapter, *without* the system prompt;
- the base: the same model without the adapter, without the system prompt;
- the teacher, *with* the system prompt: its answers are already in samples.jsonl.

`evaluate` reads top to bottom: inputs (inputs.py) -> the local models (local.py) -> likelihood,
text agreement, task metrics and the persona classifier -> the teacher endpoint's latency and
the judge (endpoint.py) -> the report dict (summary.py). Its files: report.py.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from promptdistill.core.config import EvalConfig
from promptdistill.core.errors import UserError
from promptdistill.core.rundir import RunDir
from promptdistill.core.text import loops
from promptdistill.evaluation.endpoint import measure_endpoint
from promptdistill.evaluation.inputs import RunInputs, load_inputs
from promptdistill.evaluation.local import LocalResults, Phase, measure_local
from promptdistill.evaluation.metrics import (
    NLLSummary,
    aggregate_nll,
    chrf,
    mean_ci,
    prompt_effect_recovered,
    rouge_l,
)
from promptdistill.evaluation.summary import (
    MODELS,
    PRIMARY,
    Measured,
    answer_rows,
    assemble,
    efficiency_section,
    task_metrics,
)

Say = Callable[[str], None]


@dataclass(kw_only=True)
class Outcome:
    """What eval produced: the report (a JSON-able dict) and one record per held-out prompt."""

    report: dict[str, Any]
    answers: list[dict[str, Any]]


def evaluate(path: Path, cfg: EvalConfig, say: Say) -> Outcome:
    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_tokenizer
    from promptdistill.personas import load_run_persona

    t0 = time.perf_counter()
    inputs = load_inputs(path, cfg, say)
    notes = dict(inputs.notes)
    heldout = inputs.heldout
    max_new = cfg.max_new_tokens or inputs.sample.sampling.max_tokens
    persona = load_run_persona(inputs.sample.persona, inputs.sample.data_dir).persona
    say(
        f"{len(heldout)} held-out prompts ({sum(i.split == 'heldout' for i in heldout)} fixed, "
        f"{sum(i.split == 'validation' for i in heldout)} validation); up to {max_new} new tokens"
    )
    # the run's teacher (not an endpoint passed for latency) decides whether base+prompt is it
    teacher = inputs.sample.teacher
    teacher_is_base = teacher.base_url is None and same_model(teacher.model, inputs.student.model)
    renderer = Renderer(load_tokenizer(inputs.student.model))
    local = measure_local(inputs, cfg, renderer, teacher_is_base, notes, say)

    nll, effect = likelihood(local, teacher_is_base, notes)
    agreement, per_answer = text_agreement(inputs, local)
    texts = {
        "teacher": [i.teacher for i in heldout],
        **{m: [a.text for a in local.answers[(m, PRIMARY)]] for m in ("student", "base")},
    }
    task = task_metrics(heldout, local.answers, cfg.answer_pattern, renderer.count)
    if task is None:
        notes["task"] = "the prompt set has no gold answers for the held-out prompts"
    classifier, cls_probs, by_turn = persona_classifier(inputs, local, texts, cfg, notes, say)
    endpoint = measure_endpoint(
        inputs, cfg, persona.description, texts, renderer.count, notes, say,
        latency_measured="teacher_latency" in local.efficiency,
    )  # fmt: skip

    efficiency = efficiency_section(inputs, cfg, local.saved_per_prompt, notes)
    efficiency.update(
        {
            "teacher_latency": endpoint.latency,
            **local.efficiency,  # the embedded teacher's latency, when it was timed in process
            "teacher_sampling_latency_s": mean_ci(
                [r.get("latency_s") for r in inputs.samples if r.get("latency_s") is not None]
            ).as_dict(),
            **adapter_size(inputs.adapter),
        }
    )
    measured = Measured(
        description=persona.description, nll=nll, effect=effect, agreement=agreement, task=task,
        classifier=classifier, judge=endpoint.judge, efficiency=efficiency,
        max_new_tokens=max_new, seconds=time.perf_counter() - t0,
        kl=kl_summary(local, notes), loops=loop_rates(texts), notes=notes, by_turn=by_turn,
    )  # fmt: skip
    rows = answer_rows(heldout, local, per_answer, endpoint.scores, cls_probs, cfg.answer_pattern)
    return Outcome(report=assemble(inputs, cfg, measured), answers=rows)


# --------------------------------------------------------------------------- the numbers


def likelihood(
    local: LocalResults, teacher_is_base: bool, notes: dict[str, str]
) -> tuple[dict[str, NLLSummary], float | None]:
    """Pooled per-token NLL of the teacher's answers, and the prompt effect recovered."""

    def pooled(scores: list[Any]) -> NLLSummary:
        return aggregate_nll([s.nll_sum for s in scores], [s.tokens for s in scores])

    nll = {"student": pooled(local.nll_student), "base": pooled(local.nll_base)}
    if local.nll_with is not None:
        nll["base_withprompt"] = pooled(local.nll_with)
    else:
        notes["nll_base_withprompt"] = notes["prompt_effect_recovered"] = (
            "the teacher is not the student's base model run locally (the embedded default), so "
            "the base model's NLL with the system prompt is not the teacher's"
        )
    with_prompt = nll.get("base_withprompt")
    effect = prompt_effect_recovered(
        nll["base"].nll, nll["student"].nll, with_prompt.nll if with_prompt else None
    )
    if effect is None and teacher_is_base:
        notes["prompt_effect_recovered"] = (
            "the system prompt barely changes the base model's NLL of the teacher's answers "
            "(|gap| < 0.001 nats/token), so the ratio is undefined"
        )
    return nll, effect


def kl_summary(local: LocalResults, notes: dict[str, str]) -> dict[str, Any]:
    """Held-out KL(teacher || student) and KL(teacher || base) per answer token, pooled, on the
    whole next-token distributions: what distillation minimises, measured directly."""
    if local.kl_student is None or local.kl_base is None or local.nll_with is None:
        notes["kl"] = (
            "the teacher is not the student's base model run locally, so its whole "
            "distribution is not at hand"
        )
        return {}
    tokens = [s.tokens for s in local.nll_with]
    total = max(1, sum(tokens))
    return {
        "student": sum(local.kl_student) / total,
        "base": sum(local.kl_base) / total,
        "tokens": total,
        "student_per_answer": mean_ci(
            [k / max(1, n) for k, n in zip(local.kl_student, tokens, strict=True)]
        ).as_dict(),
        "base_per_answer": mean_ci(
            [k / max(1, n) for k, n in zip(local.kl_base, tokens, strict=True)]
        ).as_dict(),
        "unit": "nats per answer token",
    }


def loop_rates(texts: dict[str, list[str]]) -> dict[str, Any]:
    """The share of each model's held-out answers that loop (core/text.py; sampled for the
    student and base, as the teacher's were)."""
    return {
        m: mean_ci([float(loops(t)) for t in answers]).as_dict() for m, answers in texts.items()
    }


def text_agreement(
    inputs: RunInputs, local: LocalResults
) -> tuple[dict[str, Any], dict[tuple[str, str], list[dict[str, float]]]]:
    """ROUGE-L and chrF of every student and base answer against the teacher's."""
    agreement: dict[str, Any] = {}
    per_answer: dict[tuple[str, str], list[dict[str, float]]] = {}
    for (model_name, decoding), answers in local.answers.items():
        scores = [
            {"rouge_l": rouge_l(a.text, i.teacher), "chrf": chrf(a.text, i.teacher)}
            for a, i in zip(answers, inputs.heldout, strict=True)
        ]
        per_answer[(model_name, decoding)] = scores
        agreement[f"{model_name}_{decoding}"] = {
            "rouge_l": mean_ci([s["rouge_l"] for s in scores]).as_dict(),
            "chrf": mean_ci([s["chrf"] for s in scores]).as_dict(),
            "mean_tokens": sum(a.tokens for a in answers) / len(answers),
            "hit_max_new_tokens": sum(a.finish_reason == "length" for a in answers),
        }
    return agreement, per_answer


def turn_texts(inputs: RunInputs, local: LocalResults) -> dict[str, list[str]]:
    """Each model's first and last answers in the multi-turn held-out conversations, keyed
    `model@first` and `model@last` (empty for one-turn samples)."""
    idx = [k for k, i in enumerate(inputs.heldout) if len(i.turns) > 1]
    if not local.turn_answers or not idx:
        return {}
    out = {
        "teacher@first": [inputs.heldout[k].turns[0][1] for k in idx],
        "teacher@last": [inputs.heldout[k].turns[-1][1] for k in idx],
    }
    for m, per_item in local.turn_answers.items():
        out[f"{m}@first"] = [per_item[k][0].text for k in idx]
        out[f"{m}@last"] = [per_item[k][-1].text for k in idx]
    return out


def persona_classifier(
    inputs: RunInputs,
    local: LocalResults,
    texts: dict[str, list[str]],
    cfg: EvalConfig,
    notes: dict[str, str],
    say: Say,
) -> tuple[dict[str, Any] | None, dict[str, list[float]], dict[str, Any] | None]:
    """Teacher-vs-base on train-split answers; the share of each model's held-out answers it
    places with the teacher (classifier.py), and for multi-turn samples the same share at the
    first and at the last turn of the held-out conversations (personas drift over turns)."""
    cls_train = inputs.train[: cfg.classifier_train]
    if not cls_train:
        notes["persona_classifier_student"] = "no train-split answers to train the classifier on"
        return None, {}, None
    from promptdistill.evaluation.classifier import persona_shares

    by_turn_texts = turn_texts(inputs, local)
    with Phase(say, "persona classifier"):
        result = persona_shares(
            [i.teacher for i in cls_train],
            [a.text for a in local.base_train],
            {**texts, **by_turn_texts},
        )
    by_turn = None
    if by_turn_texts:
        turns = [len(i.turns) for i in inputs.heldout if len(i.turns) > 1]
        by_turn = {
            "conversations": len(turns),
            "turns": {"max": max(turns), "mean": sum(turns) / len(turns)},
            **{
                f"{side}_turn": {m: result.shares.get(f"{m}@{side}") for m in MODELS}
                for side in ("first", "last")
            },
            "measure": "share of answers the persona classifier places with the teacher; "
            "student and base answer every turn with their own earlier answers in context",
        }
    for key in by_turn_texts:
        for table in (result.shares, result.counts, result.probabilities):
            table.pop(key, None)
    return result.as_dict(), result.probabilities, by_turn


def adapter_size(adapter: Path) -> dict[str, Any]:
    files = [p for p in adapter.rglob("*") if p.is_file()]
    weights = sum(p.stat().st_size for p in files if p.suffix == ".safetensors")
    return {
        "adapter_bytes": sum(p.stat().st_size for p in files),
        "adapter_weights_bytes": weights,
    }


def same_model(a: str, b: str) -> bool:
    from promptdistill.models.resolve import resolve_model

    if a == b:
        return True
    try:
        return resolve_model(a).resolve() == resolve_model(b).resolve()
    except UserError:
        return False


# --------------------------------------------------------------------------- entry point


def fingerprint(run: RunDir, cfg: EvalConfig) -> str:
    """Changes whenever the samples, the adapter, the run's config or the eval flags change."""
    h = hashlib.sha256(orjson.dumps(cfg.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS))
    files = [run.samples, run.config_path, *sorted(run.adapter.rglob("*"))]
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
    from promptdistill.evaluation.report import load_report, write_report

    fp = fingerprint(run, cfg)
    if reuse and run.report_json.is_file():
        old = load_report(run.path)
        if old.get("fingerprint") == fp:
            say(f"{run.report_json} is up to date; reusing it")
            return old
    outcome = evaluate(run.path, cfg, say)
    outcome.report["fingerprint"] = fp
    write_report(run, outcome.report, outcome.answers)
    return outcome.report
