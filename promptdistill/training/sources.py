"""Where the training loop gets its data: the `BatchSource` interface, and `EpochSource`.

The loop (training/loop.py) asks a source for micro-batches, for where the data stands (what a
checkpoint saves), for the LR decay position, the number of steps, the validation examples and
what to show. Two sources answer it:
- `EpochSource`: a finished RUN/datums, epoch after epoch; the data order is a pure function of
  (seed, epoch), so a checkpoint's (epoch, batch) position resumes exactly;
- `training.stream.SampleStream`: one epoch over samples.jsonl as the teacher writes it
  (`promptdistill run --stream`).
The loop treats them alike: it has no branch for either.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from promptdistill.core.config import TrainConfig
from promptdistill.core.rundir import RunDir
from promptdistill.datums.store import Datums
from promptdistill.training.batching import Batch, Mode, batch_stream, epoch_batches


@dataclass(frozen=True, kw_only=True)
class Batching:
    """How batches are cut and moved: known once the student is loaded (the attention kernel
    decides padding or packing), and the same for every source."""

    budget: int  # tokens per micro-batch (padding included in "pad" mode)
    mode: Mode
    pin: bool = False  # page-locked host memory, for an asynchronous copy to a GPU
    rank: int = 0
    world: int = 1
    grad_accum: int = 1


@dataclass(frozen=True, kw_only=True, eq=False)
class Validation:
    """The examples the validation loss is computed on, now (compared by identity)."""

    data: Datums
    indices: np.ndarray


class BatchSource(Protocol):
    """Everything the training loop asks of its data."""

    stop: threading.Event  # set by Ctrl-C (the loop), or by whatever feeds a stream
    fingerprint: str  # what the data is: a checkpoint of other data must not resume

    @property
    def wait_s(self) -> float:
        """Seconds the loop has spent waiting for data."""

    def describe(self) -> str:
        """How the data is cut, for the line `train` prints at the start."""

    def start(self, position: Any | None) -> None:
        """Begin at a checkpoint's data position, or at the start of the data (None)."""

    def next(self) -> Batch | None:
        """The next micro-batch; None once the data has ended or the source is stopping."""

    def position(self, batch: Batch | None = None) -> Any:
        """Where the data stood after `batch` (JSON): what a checkpoint saves."""

    def progress(self, micro: list[Batch]) -> float | None:
        """The LR decay position (0..1), or None to decay with the step count."""

    def estimated_steps(self, step: int) -> int:
        """The total number of steps, as far as it is known after `step`."""

    def step_record(self, micro: list[Batch]) -> dict[str, Any]:
        """This source's fields of the step's metrics.jsonl record."""

    def status(self, record: dict[str, Any]) -> str:
        """This source's part of the display line for a step record."""

    def validation(self) -> Validation:
        """The validation examples as they are now."""

    def finish(self) -> Validation:
        """After the last step: the final validation examples (a stream writes RUN/datums)."""

    def resume_hint(self, run: RunDir) -> str:
        """How to go on after Ctrl-C."""

    def close(self) -> None: ...


class Prefetcher:
    """Runs an iterator in a background thread, `depth` items ahead (nanochat's trick of
    preparing the next batch while the current step computes). numpy and torch release the GIL
    for the heavy parts, so collation overlaps the step. `wait_s` totals the time the consumer
    spent blocked, which is the "waiting for data" figure in the display."""

    def __init__(self, source: Iterator[Batch], depth: int = 2) -> None:
        self._queue: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._source = source
        self.wait_s = 0.0
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for item in self._source:
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
        except BaseException as e:  # surface the producer's error in the consumer
            self._queue.put(e)

    def next(self) -> Batch:
        t0 = time.perf_counter()
        item = self._queue.get()
        self.wait_s += time.perf_counter() - t0
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class EpochSource:
    """A finished datums file, epoch after epoch, prefetched. Its position is (epoch, next
    batch index), the LR follows the step count, and the number of steps is fixed."""

    def __init__(
        self, data: Datums, fingerprint: str, cfg: TrainConfig, batching: Batching
    ) -> None:
        self.data, self.fingerprint, self.cfg, self.batching = data, fingerprint, cfg, batching
        self.stop = threading.Event()
        self.train_idx = data.indices("train")
        self._val = Validation(data=data, indices=data.indices("val")[: cfg.eval_examples])
        b = batching
        self.per_epoch = len(
            epoch_batches(data.lengths(), self.train_idx, b.budget, cfg.seed, 0, b.mode)
        )
        per_step = b.grad_accum * b.world
        self.total_steps = cfg.steps or max(
            1, math.ceil((cfg.epochs or 1.0) * self.per_epoch / per_step)
        )
        self._position = [0, 0]
        self._prefetch: Prefetcher | None = None

    @property
    def wait_s(self) -> float:
        return self._prefetch.wait_s if self._prefetch is not None else 0.0

    def describe(self) -> str:
        return f"{self.per_epoch} batches/epoch"

    def start(self, position: Any | None) -> None:
        self._position = list(position) if position is not None else [0, 0]
        b = self.batching
        stream = batch_stream(
            self.data, self.train_idx, b.budget, self.cfg.seed, b.mode, self._position[0],
            self._position[1], 0, b.pin, b.rank, b.world,
        )  # fmt: skip
        self._prefetch = Prefetcher(stream, depth=b.grad_accum + 1)

    def next(self) -> Batch:
        assert self._prefetch is not None, "start() the source first"
        return self._prefetch.next()

    def position(self, batch: Batch | None = None) -> list[int]:
        if batch is not None:
            self._position = [batch.epoch, batch.index + 1]
        return self._position

    def progress(self, micro: list[Batch]) -> float | None:
        return None  # the schedule is a pure function of the step

    def estimated_steps(self, step: int) -> int:
        return self.total_steps

    def step_record(self, micro: list[Batch]) -> dict[str, Any]:
        epoch, index = self.position(micro[-1])
        return {"epoch": round(epoch + index / self.per_epoch, 4)}

    def status(self, record: dict[str, Any]) -> str:
        return ""

    def validation(self) -> Validation:
        return self._val

    def finish(self) -> Validation:
        return self._val

    def resume_hint(self, run: RunDir) -> str:
        return f"resume with `promptdistill train {run.path}`"

    def close(self) -> None:
        if self._prefetch is not None:
            self._prefetch.close()
