"""RUN/batches.json: every Batch API file and batch of a run, and which prompts each holds.

It is written atomically after each step that creates something on the server (an upload, a
batch) and before anything is waited for, so a command killed at any moment leaves a record
of everything it started: the next one polls those batches instead of submitting their prompts
again (issue #15). A batch whose answers are merged into samples.jsonl is marked `merged`; its
prompts that got no answer are free to be asked again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields

import orjson

from promptdistill.clients.batches import TERMINAL, BatchInfo
from promptdistill.core.errors import UserError
from promptdistill.core.io import atomic_write_bytes
from promptdistill.core.rundir import RunDir


@dataclass(kw_only=True)
class Recorded:
    """One input file, and the batch made from it (None until it is created)."""

    input_file_id: str
    ids: list[str]  # the prompt ids in the file, in order
    bytes: int
    round: int = 0  # 0: first asked; 1, 2, ...: follow-ups of lines a batch did not answer
    batch_id: str | None = None
    status: str = "uploaded"
    completed: int = 0
    failed: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[str] = field(default_factory=list)
    merged: bool = False
    uploaded_at: float = field(default_factory=time.time)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    def update(self, info: BatchInfo) -> bool:
        """Take in a retrieve's answer; True when something changed."""
        before = (self.status, self.completed, self.failed, self.output_file_id)
        self.batch_id = info.id
        self.status, self.completed, self.failed = info.status, info.completed, info.failed
        self.output_file_id, self.error_file_id = info.output_file_id, info.error_file_id
        self.errors = info.errors
        return before != (self.status, self.completed, self.failed, self.output_file_id)


@dataclass
class BatchState:
    """RUN/batches.json, loaded; `save()` after every change that must survive a kill."""

    run: RunDir
    endpoint: str  # the redacted base URL the batches live at
    model: str
    batches: list[Recorded] = field(default_factory=list)

    @classmethod
    def load(cls, run: RunDir, endpoint: str, model: str) -> BatchState:
        """The run's batches, which must live at `endpoint`: polling another server for them
        would only say they do not exist."""
        path = run.batches
        if not path.exists():
            return cls(run, endpoint, model)
        try:
            data = orjson.loads(path.read_bytes())
            names = {f.name for f in fields(Recorded)}
            batches = [Recorded(**{k: v for k, v in b.items() if k in names})
                       for b in data["batches"]]  # fmt: skip
            recorded_at = str(data["endpoint"])
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(
                f"{path}: not a batch record this version can read ({e}); move it away to "
                "start over (its batches stay on the server)"
            ) from None
        state = cls(run, recorded_at, str(data.get("model", model)), batches)
        if recorded_at != endpoint and state.open():
            raise UserError(
                f"{path} records {len(state.open())} running batches at {recorded_at}, not at "
                f"{endpoint}; pass --base-url {recorded_at} to collect them (or to cancel them "
                "with --cancel-batches)"
            )
        state.endpoint = endpoint
        return state

    def open(self) -> list[Recorded]:
        """Batches whose answers are not merged yet (running, or finished and not collected)."""
        return [b for b in self.batches if not b.merged]

    def submitted(self) -> set[str]:
        """The prompts in open batches: not to be submitted again."""
        return {i for b in self.open() for i in b.ids}

    def save(self) -> None:
        # orjson writes the dataclasses itself: asdict() would deep-copy every id list (1 s
        # per save at 50,000 ids on the dev machine)
        data = {"endpoint": self.endpoint, "model": self.model, "batches": self.batches}
        atomic_write_bytes(self.run.batches, orjson.dumps(data) + b"\n")
