"""`promptdistill eval RUN`: did the student become the persona, and what did it save (issue #6).

Three models are compared on the held-out prompts (the validation split of issue #5 plus the
prompt set's fixed held-out prompts):
- the student: base model + RUN/adapter, *without* the system prompt;
- the base: the same model with the adapter disabled, without the system prompt;
- the teacher, *with* the system prompt: its answers are already in samples.jsonl.

Order of work, chosen so that no model sits in memory longer than needed and the single-request
latency of the student is timed before anything else has warmed the caches or grown the heap:
1. load the student (one PeftModel; `disable_adapter()` gives the base without a second copy);
2. student latency (single stream) and peak memory;
3. NLL of the teacher's answers: base and student without the prompt, base with it;
4. greedy and sampled answers of student and base, batched; base answers for classifier training;
5. text agreement, task metrics, the embedding classifier;
6. free the model; then the teacher endpoint: its latency and the LLM judge.

Everything is collected into one plain dict (see report.py for the files it becomes).
"""

from __future__ import annotations

import gc
import hashlib
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from promptdistill.config import EvalConfig, SampleConfig, StudentConfig
from promptdistill.errors import UserError
from promptdistill.metrics import (
    aggregate_nll,
    chrf,
    exact_match,
    extract_final_answer,
    final_answer_correct,
    mean_ci,
    prompt_effect_recovered,
    rouge_l,
    token_f1,
)
from promptdistill.store import RunDir, read_jsonl, redact_url

Message = dict[str, str]
Say = Callable[[str], None]
MODELS = ("teacher", "student", "base")
DECODINGS = ("greedy", "sampled")
# The decoding whose scores become the headline numbers: sampled with the teacher's own
# sampling parameters, so student and base are compared like for like with the teacher's
# (sampled) answers. Greedy numbers are reported alongside.
PRIMARY = "sampled"


# --------------------------------------------------------------------------- inputs


@dataclass
class Item:
    """One answered prompt from samples.jsonl."""

    id: str
    split: str  # "train", "validation" or "heldout"
    category: str
    prompt: str
    system: str
    teacher: str
    gold: str | None
    usage: dict[str, Any]
    truncated: bool = False

    @staticmethod
    def from_sample(rec: dict[str, Any], split: str) -> Item | None:
        messages = rec.get("messages") or []
        system = next((m["content"] for m in messages if m.get("role") == "system"), "")
        user = next((m["content"] for m in messages if m.get("role") == "user"), None)
        answer = next((m["content"] for m in messages if m.get("role") == "assistant"), None)
        if user is None or not answer:
            return None
        return Item(
            str(rec["id"]),
            split,
            str(rec.get("category") or ""),
            user,
            system,
            answer,
            rec.get("gold"),
            rec.get("usage") or {},
            bool(rec.get("truncated")),
        )


@dataclass
class RunInputs:
    run: RunDir
    sample: SampleConfig
    student: StudentConfig
    val_fraction: float
    samples: list[dict[str, Any]]
    heldout: list[Item]
    train: list[Item]
    adapter: Path
    notes: dict[str, str] = field(default_factory=dict)


def _stage(run: RunDir, name: str, model: type[Any], required: bool) -> Any:
    data = run.stage_config(name)
    if data is None:
        if required:
            raise UserError(
                f"{run.config_path} has no '{name}' section: run `promptdistill {name}` first"
            )
        return None
    try:
        return model.model_validate(data)
    except ValidationError as e:  # pydantic's message is long; keep the first error
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{run.config_path}: {name}.{loc}: {first['msg']}") from None


def student_config(run: RunDir, adapter: Path) -> StudentConfig:
    """The student as `train` recorded it; else the adapter's own base model."""
    train = run.stage_config("train") or {}
    if isinstance(train.get("student"), dict):
        return StudentConfig.model_validate(train["student"])
    base = None
    cfg_file = adapter / "adapter_config.json"
    if cfg_file.is_file():
        base = orjson.loads(cfg_file.read_bytes()).get("base_model_name_or_path")
    return StudentConfig(model=base) if base else StudentConfig()


def _val_fraction(run: RunDir) -> float:
    for stage in ("datums", "train"):
        data = run.stage_config(stage) or {}
        for key in ("val_fraction",):
            if key in data:
                return float(data[key])
        for sub in ("datums", "datum"):
            if isinstance(data.get(sub), dict) and "val_fraction" in data[sub]:
                return float(data[sub]["val_fraction"])
    from promptdistill.config import DatumConfig

    return DatumConfig().val_fraction


def _stable_order(ids: Sequence[str], seed: int) -> list[str]:
    """A seeded order of ids that does not depend on file order (hash of seed and id)."""
    return sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())


def load_inputs(path: Path, cfg: EvalConfig) -> RunInputs:
    from promptdistill.datums import split_of

    run = RunDir(path).require()
    sample = _stage(run, "sample", SampleConfig, required=True)
    adapter = run.file("adapter")
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(
            f"{adapter} has no adapter_config.json: this run has no trained adapter yet; "
            "run `promptdistill train` first"
        )
    records = [r for r in read_jsonl(run.samples) if r.get("messages")]
    if not records:
        raise UserError(f"{run.samples} has no answered prompts; run `promptdistill sample` first")
    val_fraction = _val_fraction(run)
    # the trainer's own split rule (issue #5), so validation prompts were never trained on
    val_ids = {
        str(r["id"])
        for r in records
        if r.get("split") != "heldout" and split_of(str(r["id"]), val_fraction) == "val"
    }
    heldout, train = [], []
    for r in records:
        split = (
            "heldout"
            if r.get("split") == "heldout"
            else ("validation" if str(r["id"]) in val_ids else "train")
        )
        item = Item.from_sample(r, split)
        if item is None:
            continue
        (train if split == "train" else heldout).append(item)
    if not heldout:
        raise UserError(
            f"{run.samples} has no held-out answers (no validation split and no held-out "
            "prompts): sample with the prompt set's held-out prompts (the default) or train "
            "with a validation fraction above 0"
        )
    notes: dict[str, str] = {}
    if cfg.max_heldout is not None and len(heldout) > cfg.max_heldout:
        # the prompt set's fixed held-out prompts first, then a seeded share of the validation
        keep = set(_stable_order([i.id for i in heldout if i.split == "heldout"], cfg.seed))
        fixed = [i for i in heldout if i.id in keep][: cfg.max_heldout]
        rest_ids = _stable_order([i.id for i in heldout if i.id not in keep], cfg.seed)
        rest = set(rest_ids[: cfg.max_heldout - len(fixed)])
        total = len(heldout)
        heldout = [i for i in heldout if (i in fixed) or i.id in rest]
        notes["heldout"] = f"--max-heldout {cfg.max_heldout}: {len(heldout)} of {total} scored"
    train_by_id = {i.id: i for i in train}
    train = [train_by_id[i] for i in _stable_order(list(train_by_id), cfg.seed)]
    return RunInputs(
        run,
        sample,
        student_config(run, adapter),
        val_fraction,
        records,
        heldout,
        train,
        adapter,
        notes,
    )


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
    from peft import PeftModel
    from transformers.utils import logging as hf_logging

    from promptdistill.models import load_causal_lm, load_tokenizer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    say(f"loading {inputs.student.model} + {inputs.adapter} on {device}")
    tokenizer = load_tokenizer(inputs.student.model)
    base = load_causal_lm(inputs.student.model, inputs.student.dtype, device=device)
    try:
        student = PeftModel.from_pretrained(base, str(inputs.adapter), is_trainable=False)
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise UserError(
            f"cannot load the adapter {inputs.adapter} onto {inputs.student.model}: "
            f"{' '.join(str(e).split())[:300]}"
        ) from None
    student.eval()
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
    task = _task_metrics(heldout, answers, cfg.answer_pattern)
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
    efficiency = _efficiency(inputs, cfg, saved_per_prompt, notes)
    efficiency.update(
        {
            "student_latency": student_latency,
            "teacher_latency": teacher_latency,
            "teacher_sampling_latency_s": mean_ci(
                [r.get("latency_s") for r in inputs.samples if r.get("latency_s") is not None]
            ).as_dict(),
            "student_peak_rss_mb": peak_rss,
            "student_dtype": param_counts.pop("dtype"),
            **_adapter_size(inputs.adapter),
            **param_counts,
        }
    )

    report = _assemble(
        inputs, cfg, persona.description, agg, effect, agreement, task, classifier,
        judge_section, efficiency, notes, max_new, time.perf_counter() - t0,
    )  # fmt: skip
    rows = _answer_rows(
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


def _task_metrics(
    heldout: list[Item], answers: dict[tuple[str, str], list[Any]], pattern: str
) -> dict[str, Any] | None:
    """EM and token F1 of the *extracted* final answer against the gold answer (on a whole
    multi-sentence reply both would be ~0), and final-answer accuracy (numbers by value)."""
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
        }
    return out


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


def _efficiency(
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
    rows = list(read_jsonl(run.file("metrics.jsonl")))
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


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict):
            return None
        d = d.get(p)
    return d


def _assemble(
    inputs: RunInputs,
    cfg: EvalConfig,
    description: str,
    agg: dict[str, Any],
    effect: float | None,
    agreement: dict[str, Any],
    task: dict[str, Any] | None,
    classifier: dict[str, Any] | None,
    judge: dict[str, Any] | None,
    efficiency: dict[str, Any],
    notes: dict[str, str],
    max_new: int,
    seconds: float,
) -> dict[str, Any]:
    shares = _get(classifier, "share_placed_with_teacher") or {}
    summary: dict[str, Any] = {
        "prompt_effect_recovered": effect,
        "nll_student": agg["student"].nll,
        "nll_base": agg["base"].nll,
        "nll_base_withprompt": agg["base_withprompt"].nll if "base_withprompt" in agg else None,
        "perplexity_student": agg["student"].perplexity,
        "perplexity_base": agg["base"].perplexity,
        "rouge_l_student": _get(agreement, f"student_{PRIMARY}", "rouge_l", "mean"),
        "rouge_l_base": _get(agreement, f"base_{PRIMARY}", "rouge_l", "mean"),
        "chrf_student": _get(agreement, f"student_{PRIMARY}", "chrf", "mean"),
        "chrf_base": _get(agreement, f"base_{PRIMARY}", "chrf", "mean"),
        "judge_student": _get(judge, "student", "mean"),
        "judge_teacher": _get(judge, "teacher", "mean"),
        "judge_base": _get(judge, "base", "mean"),
        "persona_classifier_student": shares.get("student"),
        "persona_classifier_base": shares.get("base"),
        "persona_classifier_teacher": shares.get("teacher"),
        "task_accuracy_student": _get(task, f"student_{PRIMARY}", "final_answer_accuracy", "mean"),
        "task_accuracy_base": _get(task, f"base_{PRIMARY}", "final_answer_accuracy", "mean"),
        "task_accuracy_teacher": _get(task, "teacher", "final_answer_accuracy", "mean"),
        "prompt_tokens_saved_per_request": efficiency.get("prompt_tokens_saved_per_request"),
        "prompt_tokens_saved_run": efficiency.get("prompt_tokens_saved_run"),
        "cost_saved_run_usd": efficiency.get("system_prompt_cost_saved_run_usd"),
        "student_tokens_per_s": _get(efficiency, "student_latency", "tokens_per_s"),
        "teacher_tokens_per_s": _get(efficiency, "teacher_latency", "tokens_per_s"),
        "student_ttft_s": _get(efficiency, "student_latency", "ttft_s", "mean"),
        "teacher_ttft_s": _get(efficiency, "teacher_latency", "ttft_s", "mean"),
        "student_peak_rss_mb": efficiency.get("student_peak_rss_mb"),
        "adapter_mb": efficiency["adapter_bytes"] / 1e6,
        "heldout_prompts": len(inputs.heldout),
    }
    # every null headline number says why it is null
    group = {
        "judge_": "judge",
        "persona_classifier_": "persona_classifier_student",
        "task_accuracy_": "task",
        "cost_": "cost",
        "teacher_": "teacher_latency",
        "student_tokens": "student_tokens_per_s",
        "student_ttft": "student_tokens_per_s",
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
        "seconds": round(seconds, 1),
        "persona": {"name": inputs.sample.persona, "description": description},
        "student": {"model": inputs.student.model, "adapter": str(inputs.adapter)},
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
            "max_new_tokens": max_new,
            "primary_decoding": PRIMARY,
        },
        "summary": summary,
        "notes": notes,
        "likelihood": {
            **{k: v.as_dict() for k, v in agg.items()},
            "prompt_effect_recovered": effect,
            "formula": "(NLL_base_noprompt - NLL_student) / (NLL_base_noprompt - "
            "NLL_base_withprompt), nats per answer token",
        },
        "text_agreement": agreement,
        "persona_fidelity": {"judge": judge, "classifier": classifier},
        "task": task,
        "efficiency": efficiency,
        "training": _training_summary(inputs.run),
    }


def _answer_rows(
    heldout: list[Item],
    answers: dict[tuple[str, str], list[Any]],
    per_answer: dict[tuple[str, str], list[dict[str, float]]],
    nll_student: list[Any],
    nll_base: list[Any],
    nll_with: list[Any] | None,
    judge_scores: dict[tuple[str, str], Any],
    cls_probs: dict[str, list[float]],
    pattern: str,
) -> list[dict[str, Any]]:
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
        row["classifier_p_teacher"] = {m: p[k] for m, p in cls_probs.items()}
        if i.gold is not None:
            row["final_answer"] = {
                "teacher": extract_final_answer(i.teacher, pattern),
                **{
                    f"{m}_{d}": extract_final_answer(g[k].text, pattern)
                    for (m, d), g in answers.items()
                },
            }
        rows.append(row)
    return rows


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
