"""`promptdistill run`: sample -> train -> eval in one command, resumable and honest.

Each stage is
- skipped when its outputs are complete and were made with the same configuration,
- resumed when its outputs are partial (every stage resumes by itself),
- redone, with a warning, when the configuration that produced them changed. The old outputs
  are moved to RUN/superseded/TIMESTAMP/, never deleted and never mixed with new ones.

RUN/pipeline.json records, per stage, a fingerprint of the configuration that produced it and
of everything upstream, and whether the stage finished. Configuration comes from, lowest first:
the defaults, a preset (`--preset demo`), a run config file (`--config FILE`), then CLI flags.

`--stream` (stream.py) runs sample and train at once: one epoch over the samples as they arrive.
It is part of the train fingerprint: a streamed adapter is a different training from an
epoch-based one, so switching between the two redoes training, with a warning.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, ValidationError
from rich.console import Console

from promptdistill.config import (
    DatumConfig,
    EvalConfig,
    SampleConfig,
    StrictModel,
    StudentConfig,
    TrainConfig,
)
from promptdistill.errors import UserError
from promptdistill.store import RunDir, atomic_write_json, atomic_write_yaml, read_jsonl
from promptdistill.yamlio import describe_validation_error, read_yaml

LEDGER = "pipeline.json"
SUPERSEDED = "superseded"

# What each stage writes, so a changed configuration can move exactly those files aside.
STAGE_OUTPUTS = {
    "sample": ["samples.jsonl", "failures.jsonl"],
    "train": ["datums", "checkpoints", "adapter", "metrics.jsonl", "loss.png"],
    "eval": [
        "report.json",
        "report.md",
        "report-answers.jsonl",
        "report-loss.png",
        "report-metrics.png",
        "report-judge.png",
    ],
}
STAGES = list(STAGE_OUTPUTS)

# Presets are partial configurations applied on top of the defaults.
PRESETS: dict[str, dict[str, Any]] = {
    # The README's main job: a real persona distillation on a 2-core laptop CPU in under 15
    # minutes. The local teacher is decode-bound (~0.37 req/s at 96 tokens, the persona prompt
    # held in its prefix cache), so sampling is most of the time: 120 prompts (+45 held out) took
    # 7.3 of the measured 11.9 minutes and recovered 87% of the prompt's effect on held-out NLL
    # (README). 40 held-out prompts give the report stable numbers. Judge off: a 135M judge's
    # scores are noise, and the embedding classifier measures persona fidelity offline.
    "demo": {
        "sample": {"n": 120, "sampling": {"max_tokens": 96, "temperature": 0.7}},
        "train": {"epochs": 2, "eval_every": 20, "save_every": 20},
        "eval": {"max_heldout": 40, "max_new_tokens": 96, "judge": {"enabled": False}},
    },
}


class RunConfig(StrictModel):
    """Every stage's configuration, as `promptdistill run` resolves it."""

    persona: str
    preset: str | None = None
    sample: SampleConfig
    student: StudentConfig = Field(default_factory=StudentConfig)
    datums: DatumConfig = Field(default_factory=DatumConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    stream: bool = False  # train while sampling, one epoch as samples arrive (stream.py)


# --------------------------------------------------------------------------- configuration


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """Flags the user did not give are None; they must not override lower layers."""
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            value = drop_none(value)
            if value:
                out[key] = value
        elif value is not None:
            out[key] = value
    return out


def resolve_config(
    persona: str,
    preset: str | None,
    config_file: Path | None,
    flags: dict[str, Any],
    persona_sampling: dict[str, Any],
) -> RunConfig:
    """defaults < persona's sampling block < preset < config file < flags."""
    layers: dict[str, Any] = {"persona": persona, "sample": {"persona": persona, "n": 1000}}
    layers = deep_merge(layers, {"sample": {"sampling": persona_sampling}})
    file_data: dict[str, Any] = {}
    file_node = None
    if config_file is not None:
        data, file_node = read_yaml(config_file)
        if not isinstance(data, dict):
            raise UserError(f"{config_file}: expected a mapping of stage configurations")
        file_data = data
        preset = preset or file_data.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise UserError(f"--preset {preset}: unknown preset; known: {', '.join(PRESETS)}")
        layers = deep_merge(layers, PRESETS[preset])
    layers = deep_merge(layers, file_data)
    layers = deep_merge(layers, drop_none(flags))
    layers["preset"] = preset
    layers["persona"] = persona
    layers["sample"]["persona"] = persona
    try:
        return RunConfig.model_validate(layers)
    except ValidationError as e:
        if config_file is not None:
            raise UserError(describe_validation_error(config_file, e, file_node)) from None
        first = e.errors()[0]
        flag = "--" + str(first["loc"][-1]).replace("_", "-")
        raise UserError(f"{flag}: {first['msg']}") from None


# --------------------------------------------------------------------------- fingerprints


def _hash(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def stage_fingerprints(cfg: RunConfig) -> dict[str, str]:
    """What each stage's outputs depend on. Throughput knobs (concurrency, rate limits,
    timeouts) and the number of prompts are left out of `sample`: asking for more prompts
    extends the samples, it does not invalidate them. They do invalidate training."""
    s = cfg.sample
    sample_fp = _hash(
        "sample", s.persona, s.seed, s.sampling.model_dump(), s.teacher.base_url, s.teacher.model
    )
    train_parts = [
        "train",
        sample_fp,
        s.n,
        s.include_heldout,
        cfg.student.model_dump(),
        cfg.datums.model_dump(),
        cfg.train.model_dump(),
    ]
    if cfg.stream:  # only then, so the fingerprints of earlier runs stay as they were
        train_parts.append("stream")
    train_fp = _hash(*train_parts)
    eval_fp = _hash("eval", train_fp, cfg.eval.model_dump())
    return {"sample": sample_fp, "train": train_fp, "eval": eval_fp}


@dataclass
class Ledger:
    """RUN/pipeline.json: per stage, the fingerprint it was made with and whether it finished."""

    path: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, run: RunDir) -> Ledger:
        path = run.file(LEDGER)
        stages = orjson.loads(path.read_bytes()) if path.exists() else {}
        return cls(path, stages if isinstance(stages, dict) else {})

    def mark(self, stage: str, fingerprint: str, scope: str, complete: bool, **extra: Any) -> None:
        self.stages[stage] = {
            "fingerprint": fingerprint,
            "scope": scope,
            "complete": complete,
            "at": _now(),
            **extra,
        }
        atomic_write_json(self.path, self.stages)

    def forget(self, stage: str) -> None:
        self.stages.pop(stage, None)
        atomic_write_json(self.path, self.stages)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def supersede(run: RunDir, stages: list[str], say: Callable[[str], None]) -> Path | None:
    """Move the outputs of `stages` to RUN/superseded/TIMESTAMP/ and forget their config."""
    dest = run.file(SUPERSEDED) / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    moved = []
    for stage in stages:
        for name in STAGE_OUTPUTS[stage]:
            src = run.file(name)
            if src.exists():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.move(str(src), str(dest / name))
                moved.append(name)
    if run.config_path.exists():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run.config_path, dest / run.config_path.name)
        config = run.read_config()
        for stage in stages:
            config.pop(stage, None)
        atomic_write_yaml(run.config_path, config)
    if moved:
        say(f"[yellow]moved {', '.join(moved)} to {dest}[/]")
        return dest
    return None


# --------------------------------------------------------------------------- the pipeline


@dataclass
class PipelineResult:
    run: RunDir
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    report: dict[str, Any] | None = None


def plan_stage(
    ledger: Ledger, stage: str, fingerprint: str, scope: str, run: RunDir
) -> tuple[str, list[str]]:
    """('skip' | 'resume' | 'redo' | 'start', stages to move aside).

    `scope` is what a stage can grow into without redoing (the number of prompts to sample):
    a changed scope resumes the stage, a changed fingerprint redoes it and everything after."""
    record = ledger.stages.get(stage)
    if record is None:
        has_outputs = any(run.file(n).exists() for n in STAGE_OUTPUTS[stage])
        return ("resume" if has_outputs else "start"), []
    if record.get("fingerprint") != fingerprint:
        downstream = STAGES[STAGES.index(stage) :]
        return "redo", downstream
    complete = record.get("complete") and record.get("scope") == scope
    return ("skip" if complete else "resume"), []


def run_pipeline(cfg: RunConfig, run: RunDir, console: Console) -> PipelineResult:
    from promptdistill.evaluate import evaluate_and_write
    from promptdistill.personas import load_persona
    from promptdistill.teacher.sample import SampleSummary, sample_run
    from promptdistill.train import train

    def say(message: str) -> None:
        console.print(message, soft_wrap=True)

    run.create()
    persona = load_persona(cfg.persona)
    ledger = Ledger.load(run)
    fps = stage_fingerprints(cfg)
    scopes = {"sample": f"n={cfg.sample.n},heldout={cfg.sample.include_heldout}"}
    extra: dict[str, dict[str, Any]] = {"train": {"stream": True} if cfg.stream else {}}
    run.save_stage_config(
        "run", {"persona": cfg.persona, "preset": cfg.preset, "stream": cfg.stream}
    )
    result = PipelineResult(run)

    def begin(stage: str) -> str | None:
        """Plan `stage` (see plan_stage) and mark it started: 'start' | 'resume', or None when
        it is up to date."""
        scope = scopes.get(stage, "")
        action, to_move = plan_stage(ledger, stage, fps[stage], scope, run)
        if action == "redo":
            was_streamed = bool(ledger.stages.get(stage, {}).get("stream"))
            why = ""
            if stage == "train" and was_streamed != cfg.stream:
                why = (
                    " (it was trained with --stream, one epoch as samples arrived)"
                    if was_streamed
                    else " (now with --stream)"
                )
            say(
                f"[yellow]warning:[/] the {stage} configuration changed since "
                f"{run.path} was made{why}; redoing {', '.join(to_move)}"
            )
            supersede(run, to_move, say)
            for s in to_move:
                ledger.forget(s)
            action = "start"
        if action == "skip":
            say(f"[green]✓[/] {stage}: up to date, skipped")
            result.skipped.append(stage)
            return None
        ledger.mark(stage, fps[stage], scope, complete=False, **extra.get(stage, {}))
        return action

    def done(stage: str) -> None:
        scope = scopes.get(stage, "")
        ledger.mark(stage, fps[stage], scope, complete=True, **extra.get(stage, {}))
        result.ran.append(stage)

    def report_samples(summary: SampleSummary) -> None:
        if summary.interrupted:
            raise KeyboardInterrupt
        if not summary.complete:
            raise UserError(
                f"{summary.failed} of {summary.requested} prompts failed (see {run.failures});"
                " rerun the same command to ask them again"
            )
        say(
            f"samples: {summary.requested} answered "
            f"({summary.answered_now} now, {summary.answered_before} before)"
        )

    def streamed(sampling: bool) -> None:
        """Sample (when `sampling`) and train at once, then record what finished."""
        from promptdistill.stream import stream_train

        if sampling and cfg.sample.teacher.base_url is None:
            say(
                "note: --stream is meant for a remote teacher; the local teacher and the "
                "trainer share this machine"
            )
        outcome = stream_train(
            cfg.sample, cfg.student, cfg.datums, cfg.train, run, console, persona, sampling
        )
        summary = outcome.sample
        if summary is not None and summary.complete:
            done("sample")
        if outcome.train.interrupted:
            raise KeyboardInterrupt
        if summary is not None:
            report_samples(summary)  # raises, leaving train to resume, if prompts failed
        done("train")

    for stage in STAGES:
        if stage in result.ran:  # trained while sampling (--stream)
            continue
        action = begin(stage)
        if action is None:
            continue
        resuming = " (resuming)" if action == "resume" else ""
        if stage == "sample" and cfg.stream:
            train_action = begin("train")
            if train_action is not None:
                if train_action == "resume":
                    resuming = " (resuming)"
                console.rule(f"sample + train, streaming{resuming}")
                streamed(sampling=True)
                continue
        console.rule(f"{stage}{resuming}")
        if stage == "sample":
            report_samples(sample_run(cfg.sample, run, console=console, persona=persona))
        elif stage == "train":
            if cfg.stream:  # the samples are complete: one epoch over them, the same way
                streamed(sampling=False)
                continue
            outcome = train(run, cfg.student, cfg.datums, cfg.train, console, fresh=False)
            if outcome.interrupted:
                raise KeyboardInterrupt
        else:
            result.report = evaluate_and_write(run, cfg.eval, say, reuse=True)
        done(stage)

    if result.report is None:
        from promptdistill.report import REPORT_JSON, load_report

        if run.file(REPORT_JSON).exists():
            result.report = load_report(run.path)
    return result


# --------------------------------------------------------------------------- `runs`


@dataclass
class RunStatus:
    path: Path
    persona: str
    sample: str
    train: str
    eval: str
    headline: dict[str, Any]


def run_status(path: Path) -> RunStatus:
    """What a person wants to know about a run folder at a glance."""
    run = RunDir(path)
    config = run.read_config()
    sample_cfg = config.get("sample") or {}
    answered = sum(1 for _ in read_jsonl(run.samples)) if run.samples.exists() else 0
    wanted = sample_cfg.get("n")
    sample = f"{answered} answered" + (f" (n={wanted})" if wanted else "") if answered else "—"
    train = "—"
    metrics = run.file("metrics.jsonl")
    if run.file("adapter").joinpath("adapter_config.json").exists():
        train = "adapter ready"
    elif metrics.exists():
        steps = [r.get("step", 0) for r in read_jsonl(metrics)]
        train = f"in progress (step {max(steps, default=0)})"
    headline: dict[str, Any] = {}
    evaluation = "—"
    report = run.file("report.json")
    if report.exists():
        summary = orjson.loads(report.read_bytes()).get("summary", {})
        evaluation = "report ready"
        for key in ("prompt_effect_recovered", "persona_classifier_student", "judge_student"):
            headline[key] = summary.get(key)
    persona = sample_cfg.get("persona") or (config.get("run") or {}).get("persona") or "?"
    return RunStatus(path, str(persona), sample, train, evaluation, headline)


def list_runs(root: Path) -> list[RunStatus]:
    if not root.is_dir():
        return []
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / "config.yaml").exists()]
    return [run_status(p) for p in folders]
