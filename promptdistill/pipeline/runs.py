"""`promptdistill runs`: every run folder, its stages and its headline numbers.

A broken run folder (a corrupt report.json, a config.yaml that is not YAML or not UTF-8, a
samples.jsonl with a bad line) is listed as broken, with the reason, and never hides the
healthy ones (issue #16).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from promptdistill.core.errors import UserError
from promptdistill.core.io import os_error, read_jsonl
from promptdistill.core.rundir import RunDir
from promptdistill.core.samples import SampleReader


@dataclass(kw_only=True)
class RunStatus:
    path: Path
    persona: str
    sample: str
    train: str
    eval: str
    headline: dict[str, Any] = field(default_factory=dict)
    broken: str | None = None  # why the folder could not be read, if it could not


def run_status(path: Path) -> RunStatus:
    """What a person wants to know about a run folder at a glance."""
    run = RunDir(path)
    config = run.read_config()
    sample_cfg = config.get("sample") or {}
    answered = sum(1 for _ in SampleReader(run.samples).records()) if run.samples.exists() else 0
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
        summary = _report_summary(report)
        evaluation = "report ready"
        for key in ("prompt_effect_recovered", "persona_classifier_student", "judge_student"):
            headline[key] = summary.get(key)
    persona = sample_cfg.get("persona") or (config.get("run") or {}).get("persona") or "?"
    return RunStatus(
        path=path, persona=str(persona), sample=sample, train=train, eval=evaluation,
        headline=headline,
    )  # fmt: skip


def _report_summary(report: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(report.read_bytes())
    except orjson.JSONDecodeError:
        raise UserError(f"{report}: not valid JSON; rerun `promptdistill eval`") from None
    except OSError as e:
        raise os_error(e, report, "cannot read") from None
    summary = data.get("summary") if isinstance(data, dict) else None
    if not isinstance(summary, dict):
        raise UserError(f"{report}: has no 'summary'; rerun `promptdistill eval`")
    return {k: v if isinstance(v, int | float) else None for k, v in summary.items()}


def broken_status(path: Path, why: str) -> RunStatus:
    return RunStatus(path=path, persona="?", sample="", train="", eval="", broken=why)


def list_runs(root: Path) -> list[RunStatus]:
    """Every run folder under `root` (a folder with a config.yaml), broken ones flagged."""
    if not root.is_dir():
        return []
    folders = [p for p in sorted(root.iterdir()) if p.is_dir() and (p / "config.yaml").exists()]
    out = []
    for folder in folders:
        try:
            out.append(run_status(folder))
        except UserError as e:
            out.append(broken_status(folder, str(e)))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            out.append(broken_status(folder, f"{folder}: cannot be read ({e})"))
    return out
