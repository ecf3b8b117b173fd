"""The numbers of `promptdistill eval`, gathered into the report dict (issue #6).

Pure functions of what evaluate.py measured (a `Measured` record): task metrics, efficiency and
cost, the training curve's summary, the "summary" object with a reason for every null, and one
row per prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from promptdistill.core.config import EvalConfig
from promptdistill.core.io import read_jsonl
from promptdistill.core.redact import redact_url
from promptdistill.core.rundir import RunDir
from promptdistill.evaluation.inputs import Item, RunInputs
from promptdistill.evaluation.local import LocalResults
from promptdistill.evaluation.metrics import (
    NLLSummary,
    answers_match,
    dig,
    exact_match,
    extract_final_answer,
    final_answer_correct,
    mean_ci,
    token_f1,
)

MODELS = ("teacher", "student", "base")
# The decoding whose scores become the headline numbers: sampled with the teacher's own
# sampling parameters, so student and base are compared like for like with the teacher's
# (sampled) answers. Greedy numbers are reported alongside.
PRIMARY = "sampled"


@dataclass(kw_only=True)
class Measured:
    """Every section of the report, as evaluate.py measured it."""

    description: str  # the persona's
    nll: dict[str, NLLSummary]  # student, base, base_withprompt
    effect: float | None  # prompt effect recovered
    agreement: dict[str, Any]
    task: dict[str, Any] | None
    classifier: dict[str, Any] | None
    judge: dict[str, Any] | None
    efficiency: dict[str, Any]
    max_new_tokens: int
    seconds: float
    kl: dict[str, Any] = field(default_factory=dict)  # KL(teacher || student / base)
    loops: dict[str, Any] = field(default_factory=dict)  # loop rates per model
    notes: dict[str, str] = field(default_factory=dict)
    # multi-turn samples: the classifier's shares at the first and the last turn (issue #14)
    by_turn: dict[str, Any] | None = None


def task_metrics(
    heldout: list[Item],
    answers: dict[tuple[str, str], list[Any]],
    pattern: str,
    count: Callable[[str], int],
) -> dict[str, Any] | None:
    """EM and token F1 of the *extracted* final answer against the gold answer (on a whole
    multi-sentence reply both would be ~0), final-answer accuracy (numbers by value), and the
    answers' length in tokens (`count`: the student's tokenizer, for every model alike): what a
    reasoning trace costs at inference (issue #17)."""
    idx = [k for k, i in enumerate(heldout) if i.gold is not None]
    if not idx:
        return None
    sources: dict[str, list[str]] = {"teacher": [heldout[k].teacher for k in idx]}
    for (m, d), gens in answers.items():
        sources[f"{m}_{d}"] = [gens[k].text for k in idx]
    golds = [str(heldout[k].gold) for k in idx]
    out: dict[str, Any] = {"answers_with_gold": len(idx), "answer_pattern": pattern}
    for name, texts in sources.items():
        extracted = [extract_final_answer(t, pattern) or "" for t in texts]
        out[name] = {
            "exact_match": mean_ci(
                [exact_match(e, g) for e, g in zip(extracted, golds, strict=True)]
            ).as_dict(),
            "token_f1": mean_ci(
                [token_f1(e, g) for e, g in zip(extracted, golds, strict=True)]
            ).as_dict(),
            "final_answer_accuracy": mean_ci(
                [final_answer_correct(t, g, pattern) for t, g in zip(texts, golds, strict=True)]
            ).as_dict(),
            "answer_tokens": mean_ci([count(t) for t in texts]).as_dict(),
        }
    return out


def efficiency_section(
    inputs: RunInputs, cfg: EvalConfig, saved_per_prompt: list[int], notes: dict[str, str]
) -> dict[str, Any]:
    """System-prompt tokens the student no longer needs, and what they (and the teacher) cost.

    Tokens are counted with the student's tokenizer and chat template: the rendered prompt with
    the system prompt minus the rendered prompt without it (a template that inserts a default
    system prompt, like SmolLM2's, keeps that default, and it is not counted as saved). For a
    remote teacher with another tokenizer this is an estimate.
    """
    saved = sum(saved_per_prompt) / len(saved_per_prompt) if saved_per_prompt else None
    requests = len(inputs.samples)
    prompt_toks = [r["usage"].get("prompt_tokens") for r in inputs.samples if r.get("usage")]
    completion_toks = [
        r["usage"].get("completion_tokens") for r in inputs.samples if r.get("usage")
    ]
    prompt_toks = [t for t in prompt_toks if isinstance(t, int)]
    completion_toks = [t for t in completion_toks if isinstance(t, int)]
    out: dict[str, Any] = {
        "prompt_tokens_saved_per_request": saved,
        "run_requests": requests,
        "prompt_tokens_saved_run": saved * requests if saved is not None else None,
        "teacher_prompt_tokens_per_request": (
            sum(prompt_toks) / len(prompt_toks) if prompt_toks else None
        ),
        "teacher_completion_tokens_per_request": (
            sum(completion_toks) / len(completion_toks) if completion_toks else None
        ),
        "price_in_usd_per_mtok": cfg.price_in,
        "price_out_usd_per_mtok": cfg.price_out,
    }
    if not inputs.sample.teacher.base_url:
        out["token_count_note"] = "exact: the teacher uses the student's tokenizer"
    else:
        out["token_count_note"] = "estimated with the student's tokenizer"
    if cfg.price_in is None:
        notes["cost"] = "pass --price-in (and --price-out) in USD per million tokens to price it"
        return out
    p_in = cfg.price_in / 1e6
    p_out = (cfg.price_out or 0.0) / 1e6
    if saved is not None:
        out["system_prompt_cost_saved_per_1k_requests_usd"] = saved * 1000 * p_in
        out["system_prompt_cost_saved_run_usd"] = saved * requests * p_in
    if prompt_toks:
        # what the teacher's API charged for this run's requests; the local student replaces it
        out["teacher_cost_run_usd"] = sum(prompt_toks) * p_in + sum(completion_toks) * p_out
        out["teacher_cost_per_1k_requests_usd"] = (
            out["teacher_cost_run_usd"] * 1000 / max(len(prompt_toks), 1)
        )
    if cfg.price_out is None:
        notes["cost_out"] = "no --price-out: output tokens priced at 0"
    return out


def _training_summary(run: RunDir) -> dict[str, Any]:
    rows = list(read_jsonl(run.metrics))
    train = [r for r in rows if r.get("loss") is not None]
    val = [r for r in rows if r.get("val_loss") is not None]
    return {
        "steps": max((int(r.get("step", 0)) for r in rows), default=0),
        "first_loss": train[0]["loss"] if train else None,
        "last_loss": train[-1]["loss"] if train else None,
        "first_val_loss": val[0]["val_loss"] if val else None,
        "last_val_loss": val[-1]["val_loss"] if val else None,
        "best_val_loss": min((r["val_loss"] for r in val), default=None),
    }


def classifier_keys(classifier: dict[str, Any] | None) -> dict[str, Any]:
    """The classifier's shares per model, and how well it tells teacher from base on training
    prompts it did not fit (classifier.py)."""
    shares = dig(classifier, "share_placed_with_teacher") or {}
    return {
        **{f"persona_classifier_{m}": shares.get(m) for m in ("student", "base", "teacher")},
        "persona_classifier_cv_accuracy": dig(classifier, "cv_accuracy"),
    }


def assemble(inputs: RunInputs, cfg: EvalConfig, m: Measured) -> dict[str, Any]:
    agg, agreement, task, judge, efficiency, notes = (
        m.nll,
        m.agreement,
        m.task,
        m.judge,
        m.efficiency,
        m.notes,
    )
    classifier, effect = m.classifier, m.effect
    summary: dict[str, Any] = {
        "kl_student": m.kl.get("student"),
        "kl_base": m.kl.get("base"),
        "prompt_effect_recovered": effect,
        "nll_student": agg["student"].nll,
        "nll_base": agg["base"].nll,
        "nll_base_withprompt": agg["base_withprompt"].nll if "base_withprompt" in agg else None,
        "perplexity_student": agg["student"].perplexity,
        "perplexity_base": agg["base"].perplexity,
        "rouge_l_student": dig(agreement, f"student_{PRIMARY}", "rouge_l", "mean"),
        "rouge_l_base": dig(agreement, f"base_{PRIMARY}", "rouge_l", "mean"),
        "chrf_student": dig(agreement, f"student_{PRIMARY}", "chrf", "mean"),
        "chrf_base": dig(agreement, f"base_{PRIMARY}", "chrf", "mean"),
        "judge_student": dig(judge, "student", "mean"),
        "judge_teacher": dig(judge, "teacher", "mean"),
        "judge_base": dig(judge, "base", "mean"),
        **classifier_keys(classifier),
        "task_accuracy_student": dig(task, f"student_{PRIMARY}", "final_answer_accuracy", "mean"),
        "task_accuracy_base": dig(task, f"base_{PRIMARY}", "final_answer_accuracy", "mean"),
        "task_accuracy_teacher": dig(task, "teacher", "final_answer_accuracy", "mean"),
        "answer_tokens_student": dig(task, f"student_{PRIMARY}", "answer_tokens", "mean"),
        "answer_tokens_base": dig(task, f"base_{PRIMARY}", "answer_tokens", "mean"),
        "answer_tokens_teacher": dig(task, "teacher", "answer_tokens", "mean"),
        "prompt_tokens_saved_per_request": efficiency.get("prompt_tokens_saved_per_request"),
        "prompt_tokens_saved_run": efficiency.get("prompt_tokens_saved_run"),
        "cost_saved_run_usd": efficiency.get("system_prompt_cost_saved_run_usd"),
        "student_tokens_per_s": dig(efficiency, "student_latency", "tokens_per_s"),
        "teacher_tokens_per_s": dig(efficiency, "teacher_latency", "tokens_per_s"),
        "student_ttft_s": dig(efficiency, "student_latency", "ttft_s", "mean"),
        "teacher_ttft_s": dig(efficiency, "teacher_latency", "ttft_s", "mean"),
        "student_peak_rss_mb": efficiency.get("student_peak_rss_mb"),
        "adapter_mb": efficiency["adapter_bytes"] / 1e6,
        "loop_rate_student": dig(m.loops, "student", "mean"),
        "loop_rate_teacher": dig(m.loops, "teacher", "mean"),
        "loop_rate_base": dig(m.loops, "base", "mean"),
        "heldout_prompts": len(inputs.heldout),
    }
    if m.by_turn is not None:  # only multi-turn runs have these
        for side in ("first", "last"):
            for model in MODELS:
                summary[f"persona_classifier_{model}_{side}_turn"] = m.by_turn[f"{side}_turn"][
                    model
                ]
    # every null headline number says why it is null
    group = {
        "judge_": "judge",
        "persona_classifier_": "persona_classifier_student",
        "task_accuracy_": "task",
        "answer_tokens_": "task",
        "cost_": "cost",
        "teacher_": "teacher_latency",
        "student_tokens": "student_tokens_per_s",
        "student_ttft": "student_tokens_per_s",
        "kl_": "kl",
    }
    if "judge" not in notes and "judge_missing" in notes:
        notes["judge"] = notes["judge_missing"]
    for key, value in summary.items():
        if value is None and key not in notes:
            reason = next((notes.get(n) for p, n in group.items() if key.startswith(p)), None)
            notes[key] = reason or "not measured"
    teacher = inputs.sample.teacher
    return {
        "schema": "promptdistill.report/1",
        "run": str(inputs.run.path),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(m.seconds, 1),
        "persona": {"name": inputs.sample.persona, "description": m.description},
        "student": {
            "model": inputs.student.model,
            "adapter": str(inputs.adapter),
            "objective": dig(inputs.run.stage_config("train"), "train", "objective") or "sft",
        },
        "teacher": {
            "base_url": redact_url(teacher.base_url) if teacher.base_url else None,
            "model": teacher.model,
            "sampling": inputs.sample.sampling.model_dump(mode="json"),
        },
        "config": cfg.model_dump(mode="json"),
        "heldout": {
            "prompts": len(inputs.heldout),
            "fixed": sum(i.split == "heldout" for i in inputs.heldout),
            "validation": sum(i.split == "validation" for i in inputs.heldout),
            "val_fraction": inputs.val_fraction,
            "max_new_tokens": m.max_new_tokens,
            "primary_decoding": PRIMARY,
        },
        "summary": summary,
        "notes": notes,
        "likelihood": {
            **{k: v.as_dict() for k, v in agg.items()},
            "prompt_effect_recovered": effect,
            "formula": "(NLL_base_noprompt - NLL_student) / (NLL_base_noprompt - "
            "NLL_base_withprompt), nats per answer token",
            "kl": m.kl,
        },
        "loops": m.loops,
        "text_agreement": agreement,
        "persona_fidelity": {
            "judge": judge,
            "classifier": classifier,
            **({"by_turn": m.by_turn} if m.by_turn is not None else {}),
        },
        "task": task,
        "efficiency": efficiency,
        "training": _training_summary(inputs.run),
    }


def answer_rows(
    heldout: list[Item],
    local: LocalResults,
    per_answer: dict[tuple[str, str], list[dict[str, float]]],
    judge_scores: dict[tuple[str, str], Any],
    cls_probs: dict[str, list[float]],
    pattern: str,
) -> list[dict[str, Any]]:
    """report-answers.jsonl: every held-out prompt with each model's answers and scores."""
    answers, nll_with = local.answers, local.nll_with
    nll_student, nll_base = local.nll_student, local.nll_base

    def per_token(s: Any) -> float | None:
        return s.nll_sum / s.tokens if s.tokens else None

    rows = []
    for k, i in enumerate(heldout):
        row: dict[str, Any] = {
            "id": i.id,
            "split": i.split,
            "category": i.category,
            "prompt": i.prompt,
            "gold": i.gold,
            "teacher": i.teacher,
        }
        for (m, d), gens in answers.items():
            row[f"{m}_{d}"] = gens[k].text
        row["nll"] = {
            "student": per_token(nll_student[k]),
            "base": per_token(nll_base[k]),
            "base_withprompt": per_token(nll_with[k]) if nll_with else None,
            "tokens": nll_student[k].tokens,
        }
        row["rouge_l"] = {f"{m}_{d}": s[k]["rouge_l"] for (m, d), s in per_answer.items()}
        row["chrf"] = {f"{m}_{d}": s[k]["chrf"] for (m, d), s in per_answer.items()}
        row["judge"] = {
            m: judge_scores[(m, i.id)].score for m in MODELS if (m, i.id) in judge_scores
        }
        # the judge's last reply per answer, so a low or missing score can be checked by eye
        row["judge_reply"] = {
            m: (judge_scores[(m, i.id)].replies or [None])[-1]
            for m in MODELS
            if (m, i.id) in judge_scores
        }
        row["classifier_p_teacher"] = {m: p[k] for m, p in cls_probs.items()}
        if local.turn_answers and len(i.turns) > 1:  # every turn of a multi-turn conversation
            row["turns"] = [
                {
                    "user": u,
                    "teacher": t,
                    **{m: a[k][j].text for m, a in local.turn_answers.items()},
                }
                for j, (u, t) in enumerate(i.turns)
            ]
        if i.gold is not None:
            texts = {
                "teacher": i.teacher,
                **{f"{m}_{d}": g[k].text for (m, d), g in answers.items()},
            }
            row["final_answer"] = {n: extract_final_answer(t, pattern) for n, t in texts.items()}
            # the per-prompt correctness grid of report-correctness.png (issue #17)
            row["correct"] = {
                n: answers_match(a, str(i.gold)) for n, a in row["final_answer"].items()
            }
        rows.append(row)
    return rows
