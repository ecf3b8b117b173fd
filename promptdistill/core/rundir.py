"""The run directory, `runs/NAME/`: every file a stage reads or writes is named here, once.

A run describes itself: `config.yaml` maps each stage to the resolved configuration it ran with
(never a secret), and each stage reads the files of the stage before it, so every stage can be
run, resumed and tested alone. The stages own what is inside their files; this class knows only
where the files are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml
from pydantic import ValidationError

from promptdistill.core.config import StudentConfig
from promptdistill.core.errors import UserError
from promptdistill.core.io import atomic_write_yaml

# The stages in data-flow order, and the files each one writes (so a changed configuration can
# move exactly those aside, see pipeline/ledger.py).
STAGE_FILES: dict[str, tuple[str, ...]] = {
    "sample": ("samples.jsonl", "failures.jsonl"),
    "train": ("datums", "checkpoints", "adapter", "metrics.jsonl", "loss.png"),
    "eval": (
        "report.json",
        "report.md",
        "report-answers.jsonl",
        "report-loss.png",
        "report-metrics.png",
        "report-judge.png",
    ),
}
REPORT_PLOTS = {
    "loss": "report-loss.png",
    "metrics": "report-metrics.png",
    "judge": "report-judge.png",
}


class RunDir:
    """One self-describing folder per run. `file(name)` is for names this class lists."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- sample
    @property
    def samples(self) -> Path:
        return self.path / "samples.jsonl"

    @property
    def failures(self) -> Path:
        return self.path / "failures.jsonl"

    # ---- train
    @property
    def datums(self) -> Path:
        return self.path / "datums"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def loss_png(self) -> Path:
        return self.path / "loss.png"

    # ---- eval
    @property
    def report_json(self) -> Path:
        return self.path / "report.json"

    @property
    def report_md(self) -> Path:
        return self.path / "report.md"

    @property
    def report_answers(self) -> Path:
        return self.path / "report-answers.jsonl"

    def report_plot(self, kind: str) -> Path:
        return self.path / REPORT_PLOTS[kind]

    def report_against(self, other: str, suffix: str) -> Path:
        return self.path / f"report-vs-{other}.{suffix}"

    # ---- compare, run
    @property
    def compare_log(self) -> Path:
        return self.path / "compare.jsonl"

    @property
    def ledger(self) -> Path:
        return self.path / "pipeline.json"

    @property
    def superseded(self) -> Path:
        return self.path / "superseded"

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    # ---- the folder itself
    def create(self) -> RunDir:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"cannot create run directory {self.path}: {e.strerror}") from None
        return self

    def require(self) -> RunDir:
        if not self.path.is_dir():
            raise UserError(
                f"run directory {self.path} does not exist; run `promptdistill sample` first"
            )
        return self

    def has_adapter(self) -> bool:
        return (self.adapter / "adapter_config.json").is_file()

    def require_adapter(self) -> Path:
        if not self.has_adapter():
            raise UserError(
                f"{self.adapter} has no adapter_config.json: this run has no trained adapter "
                f"yet; run `promptdistill train {self.path}` first"
            )
        return self.adapter

    # ---- config.yaml
    def read_config(self) -> dict[str, Any]:
        if not self.config_path.exists():
            return {}
        data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}

    def stage_config(self, stage: str) -> dict[str, Any] | None:
        value = self.read_config().get(stage)
        return value if isinstance(value, dict) else None

    def save_stage_config(self, stage: str, config: dict[str, Any]) -> None:
        """Record the resolved configuration of one stage, keeping the others."""
        merged = self.read_config()
        merged[stage] = config
        atomic_write_yaml(self.config_path, merged)

    def trained_student(self) -> StudentConfig:
        """The student the adapter was trained on: `config.yaml`'s train stage, else the
        adapter's own `base_model_name_or_path` (what eval, compare and export load)."""
        student = (self.stage_config("train") or {}).get("student")
        if isinstance(student, dict):
            try:
                return StudentConfig.model_validate(student)
            except ValidationError as e:
                msg = e.errors()[0]["msg"]
                raise UserError(f"{self.config_path}: train.student: {msg}") from None
        cfg = self.adapter / "adapter_config.json"
        base = (
            orjson.loads(cfg.read_bytes()).get("base_model_name_or_path") if cfg.is_file() else None
        )
        if not base:
            raise UserError(
                f"{cfg} names no base model and {self.config_path} has no train stage; "
                "retrain the run with `promptdistill train`"
            )
        return StudentConfig(model=str(base))
