"""The run directory, `runs/NAME/`: every file a stage reads or writes is named here, once.

A run describes itself: `config.yaml` maps each stage to the resolved configuration it ran with
(never a secret), and each stage reads the files of the stage before it, so every stage can be
run, resumed and tested alone. The stages own what is inside their files; this class knows only
where the files are.

One writer at a time (issue #16): every command that writes a run holds an exclusive `flock` on
RUN/.lock for as long as it runs (`RunDir.locked`); a second one exits at once, naming the PID
that holds it. The kernel releases a flock when its holder dies, so a killed command never
leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from promptdistill.core.config import StudentConfig
from promptdistill.core.errors import UserError
from promptdistill.core.io import atomic_write_yaml, os_error
from promptdistill.core.yamlio import read_yaml

# exit status of a command refused because another one holds the run (EX_TEMPFAIL: try later)
BUSY_EXIT = 75

# The stages in data-flow order, and the files each one writes (so a changed configuration can
# move exactly those aside, see pipeline/ledger.py).
STAGE_FILES: dict[str, tuple[str, ...]] = {
    "sample": ("samples.jsonl", "failures.jsonl", "system-prompts", "batches.json"),
    "train": (
        "datums",
        "checkpoints",
        "adapter",
        "metrics.jsonl",
        "loss.png",
        "train-dashboard.png",
    ),
    "eval": (
        "report.json",
        "report.md",
        "report-answers.jsonl",
        "report-loss.png",
        "report-metrics.png",
        "report-judge.png",
        "report-accuracy.png",
        "report-correctness.png",
    ),
}
REPORT_PLOTS = {
    "loss": "report-loss.png",
    "metrics": "report-metrics.png",
    "judge": "report-judge.png",
    "accuracy": "report-accuracy.png",
    "correctness": "report-correctness.png",
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

    @property
    def system_prompts(self) -> Path:
        """The system prompts the samples were made with, one file each, named by their hash
        (core/samples.py): stored once per run instead of in every record."""
        return self.path / "system-prompts"

    @property
    def batches(self) -> Path:
        """The Batch API's file and batch ids of this run (sampling/batch_api.py, issue #15)."""
        return self.path / "batches.json"

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

    @property
    def train_dashboard(self) -> Path:
        return self.path / "train-dashboard.png"

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

    @property
    def lock_path(self) -> Path:
        return self.path / ".lock"

    # ---- the folder itself
    def create(self) -> RunDir:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, self.path, "cannot create run directory") from None
        return self

    @contextlib.contextmanager
    def locked(self) -> Iterator[RunDir]:
        """Hold RUN/.lock, exclusively, for the `with` block: one command writes a run at a
        time. The folder must exist. Under torchrun only rank 0 takes it (the other ranks are
        the same command). A run on a read-only file system is not locked: nothing can write
        it, and a command that only reads it (export) still works."""
        if int(os.environ.get("RANK", "0") or 0) > 0:
            yield self
            return
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            if e.errno in (errno.EROFS, errno.EACCES) and self.path.is_dir():
                yield self  # its writes will fail with their own one-line message
                return
            raise os_error(e, self.lock_path) from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"{self.path} is in use by another promptdistill command (PID "
                    f"{_holder(fd)}): wait for it to finish, or stop it, then rerun this one",
                    exit_code=BUSY_EXIT,
                ) from None
            pid = f"{os.getpid()}\n".encode()
            with contextlib.suppress(OSError):  # a full disk: the lock holds all the same
                os.pwrite(fd, pid, 0)
                os.ftruncate(fd, len(pid))
            yield self
        finally:
            os.close(fd)  # releases the lock

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
        """RUN/config.yaml; a file that is not UTF-8, not YAML or not a mapping is a one-line
        error naming it (and its line)."""
        if not self.config_path.exists():
            return {}
        try:
            data, _ = read_yaml(self.config_path)
        except OSError as e:
            raise os_error(e, self.config_path, "cannot read") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise UserError(
                f"{self.config_path}: expected a mapping of stages (sample, train, ...); "
                "fix the file or move it away"
            )
        return data

    def stage_config(self, stage: str) -> dict[str, Any] | None:
        value = self.read_config().get(stage)
        return value if isinstance(value, dict) else None

    def save_stage_config(self, stage: str, config: dict[str, Any]) -> None:
        """Record the resolved configuration of one stage, keeping the others."""
        merged = self.read_config()
        merged[stage] = config
        atomic_write_yaml(self.config_path, merged)

    def sample_keep(self) -> str:
        """`sample --keep` (issue #17): "correct" leaves wrong answers out of the datums."""
        return str((self.stage_config("sample") or {}).get("keep") or "all")

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


def _holder(fd: int) -> str:
    """The PID written into a lock file by its holder (who may not have written it yet)."""
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            return str(int(os.pread(fd, 32, 0).split(b"\n")[0]))
        time.sleep(0.01)
    return "unknown"
