"""RUN/pipeline.json: what each stage of `promptdistill run` was made with, and whether it
finished; and what to do with a stage on the next run.

Each stage is
- skipped when its outputs are complete and were made with the same configuration,
- resumed when its outputs are partial (every stage resumes by itself),
- redone, with a warning, when the configuration that produced them changed. The old outputs
  are moved to RUN/superseded/TIMESTAMP/, never deleted and never mixed with new ones.
`--stream` is part of the train fingerprint: a streamed adapter is a different training from an
epoch-based one, so switching between the two redoes training.
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

from promptdistill.core.io import atomic_write_json, atomic_write_yaml
from promptdistill.core.rundir import STAGE_FILES, RunDir
from promptdistill.pipeline.config import RunConfig

STAGES = list(STAGE_FILES)


def _hash(*parts: Any) -> str:
    return hashlib.sha256(orjson.dumps(parts, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


# Settings added after runs were made with the defaults they now have: left out of the hash at
# those defaults, so the fingerprints of earlier runs stay as they were.
LATER_FIELDS = (
    "objective",
    "ce_weight",
    "hidden_weight",
    "kd_tail",
    "onpolicy_fraction",
    "teacher_model",
    "keep_loops",
    "quantize",
)


def _dump(model: Any) -> dict[str, Any]:
    data: dict[str, Any] = model.model_dump()
    for name in LATER_FIELDS:
        if name in data and data[name] == type(model).model_fields[name].default:
            del data[name]
    return data


def stage_fingerprints(cfg: RunConfig, instructions: str = "") -> dict[str, str]:
    """What each stage's outputs depend on. Throughput knobs (concurrency, rate limits,
    timeouts) and the number of prompts are left out of `sample`: asking for more prompts
    extends the samples, it does not invalidate them. They do invalidate training.
    `instructions`: the persona's teacher instructions (personas.instructions_text)."""
    s = cfg.sample
    sample_parts = [
        "sample",
        s.persona,
        s.seed,
        s.sampling.model_dump(),
        s.teacher.base_url,
        s.teacher.model,
    ]
    if s.logprobs is not None:  # samples with the teacher's logprobs are other samples
        sample_parts.append(s.logprobs)
    if s.turns != 1:  # multi-turn conversations are other samples (issue #14)
        sample_parts.append(f"turns={s.turns}")
    # issue #17: graded, filtered and re-asked samples are other samples (only when set, so
    # the fingerprints of earlier runs stay as they were)
    defaults = type(s).model_fields
    for name in ("keep", "attempts", "answer_pattern"):
        if getattr(s, name) != defaults[name].default:
            sample_parts.append({name: getattr(s, name)})
    if instructions:
        sample_parts.append({"teacher_instructions": instructions})
    sample_fp = _hash(*sample_parts)
    train_parts = [
        "train",
        sample_fp,
        s.n,
        s.include_heldout,
        _dump(cfg.student),
        _dump(cfg.datums),
        _dump(cfg.train),
    ]
    if cfg.stream:  # only then, so the fingerprints of earlier runs stay as they were
        train_parts.append("stream")
    train_fp = _hash(*train_parts)
    eval_fp = _hash("eval", train_fp, _dump(cfg.eval))
    return {"sample": sample_fp, "train": train_fp, "eval": eval_fp}


@dataclass
class Ledger:
    """RUN/pipeline.json: per stage, the fingerprint it was made with and whether it finished."""

    path: Path
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, run: RunDir) -> Ledger:
        path = run.ledger
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
    dest = run.superseded / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    moved = []
    for stage in stages:
        for name in STAGE_FILES[stage]:
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


def plan_stage(
    ledger: Ledger, stage: str, fingerprint: str, scope: str, run: RunDir
) -> tuple[str, list[str]]:
    """('skip' | 'resume' | 'redo' | 'start', stages to move aside).

    `scope` is what a stage can grow into without redoing (the number of prompts to sample):
    a changed scope resumes the stage, a changed fingerprint redoes it and everything after."""
    record = ledger.stages.get(stage)
    if record is None:
        has_outputs = any(run.file(n).exists() for n in STAGE_FILES[stage])
        return ("resume" if has_outputs else "start"), []
    if record.get("fingerprint") != fingerprint:
        downstream = STAGES[STAGES.index(stage) :]
        return "redo", downstream
    complete = record.get("complete") and record.get("scope") == scope
    return ("skip" if complete else "resume"), []
