"""`promptdistill runs`: every run folder, its stages and its headline numbers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from promptdistill.core.io import read_jsonl
from promptdistill.core.rundir import RunDir


@dataclass(kw_only=True)
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
    metrics = run.metrics
    if run.has_adapter():
        train = "adapter ready"
    elif metrics.exists():
        steps = [r.get("step", 0) for r in read_jsonl(metrics)]
        train = f"in progress (step {max(steps, default=0)})"
    headline: dict[str, Any] = {}
    evaluation = "—"
    report = run.report_json
    if report.exists():
        summary = orjson.loads(report.read_bytes()).get("summary", {})
        evaluation = "report ready"
        for key in ("prompt_effect_recovered", "persona_classifier_student", "judge_student"):
            headline[key] = summary.get(key)
    persona = sample_cfg.get("persona") or (config.get("run") or {}).get("persona") or "?"
    return RunStatus(
        path=path, persona=str(persona), sample=sample, train=train, eval=evaluation,
        headline=headline,
    )  # fmt: skip


def list_runs(root: Path) -> list[RunStatus]:
    if not root.is_dir():
        return []
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / "config.yaml").exists()]
    return [run_status(p) for p in folders]
