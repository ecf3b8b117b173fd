"""`promptdistill run --stream`: train on the teacher's answers while it is still answering.

Meant for a remote teacher and a local GPU: instead of waiting for the last sample, training
starts as soon as the first answers can fill a batch, and trains one epoch over the samples as
they arrive. Sampling runs in a background thread (sampling/thread.py) and appends to
RUN/samples.jsonl; the trainer, in the main thread, is the normal training loop with a
`SampleStream` as its batch source (training/sources.py). The driver that starts both is
pipeline/streaming.py: nothing in training/ knows about sampling.

Per sample, the path is:
    a complete line of samples.jsonl (a line still being written has no newline yet)
    -> `datums.build.build_datums`, the code `train` uses (mask, truncation, prefix check)
    -> the training split goes to a small buffer; the validation split is kept for val loss
    -> a token-budget batch (`batching.BudgetFill`, the rule every batch follows) of the buffer's
       oldest example and those closest to it in length, once the buffer holds a batch's
       worth of tokens or sampling has ended

Exactly once: samples.jsonl is append-only, so a byte offset names a line for good. A
checkpoint's data position is the offset up to which lines were read plus the offsets of the
lines still waiting in the buffer; a rerun re-reads those and tails on from the offset, while
the sampler skips the prompts already answered.

When the stream ends, RUN/datums is written as `train` writes it and the run is a normal,
complete run: adapter, metrics.jsonl (each step lists the ids it trained on), loss curve.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from promptdistill.core.config import DatumConfig, TrainConfig
from promptdistill.core.errors import UserError
from promptdistill.core.rundir import RunDir
from promptdistill.core.samples import SampleReader
from promptdistill.datums.build import (
    PREFIX_IDS_SHOWN,
    Datum,
    build_datums,
    check_prefix_failures,
    left_out,
    split_of,
)
from promptdistill.datums.store import Datums, prepare_datums, to_arrays, tokenizer_fingerprint
from promptdistill.models.chat import Renderer
from promptdistill.training.batching import Batch, BudgetFill, collate
from promptdistill.training.sources import Batching, Validation

POLL_S = 0.1  # how often the reader looks for new lines while the teacher is answering
READ_BYTES = 1 << 20  # lines read (and tokenized) per go: the first batch need not wait for all
# The reader stops reading ahead once the buffer holds this many batches' worth of tokens: enough
# choice for length bucketing when samples come faster than training, and a checkpoint's list of
# waiting lines stays short. The file itself is the queue beyond that.
BUFFER_BATCHES = 4
GUESS_TOKENS = 256  # tokens per example assumed for the step estimate before any has arrived


# --------------------------------------------------------------------------- reading the file


class SampleTail:
    """The complete lines of an append-only JSONL file after a byte offset."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path, self.offset = path, offset

    def read(self, max_bytes: int = READ_BYTES) -> list[tuple[int, bytes]]:
        """(start offset, line) for complete lines after `offset`, about `max_bytes` of them;
        advances `offset` past them. A last line without its newline is still being written."""
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return []
        with f:
            f.seek(self.offset)
            data = f.read(max_bytes)
            while data and b"\n" not in data:  # one line longer than max_bytes
                more = f.read(max_bytes)
                if not more:
                    return []
                data += more
        end = data.rfind(b"\n") + 1
        out, start = [], self.offset
        for line in data[:end].split(b"\n")[:-1]:
            out.append((start, line))
            start += len(line) + 1
        self.offset += end
        return out

    def line_at(self, offset: int) -> bytes:
        with self.path.open("rb") as f:
            f.seek(offset)
            line = f.readline()
        if not line.endswith(b"\n"):
            raise UserError(
                f"{self.path}: no complete line at byte {offset}, where the last checkpoint "
                "says a sample waits; the file was changed by hand? Move RUN/checkpoints away "
                "to retrain from the start"
            )
        return line[:-1]


def _record(line: bytes, reader: SampleReader, at: str = "") -> dict[str, Any] | None:
    """A sample record in full (core/samples.py), or None for a blank or garbled line (a line
    still being written) or one that is not a sample record (`reader` says where)."""
    if not line.strip():
        return None
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return reader.expand(value, at=at or None)


# --------------------------------------------------------------------------- the batch source


class Producer(Protocol):
    """Whatever appends to samples.jsonl while the stream reads it (sampling/thread.py)."""

    ready: threading.Event  # it has written its config.yaml entry (the trainer writes next)
    done: threading.Event  # it will append nothing more
    error: BaseException | None


@dataclass(kw_only=True)
class StreamBatch(Batch):
    """A micro-batch that knows where the stream stood after it (`ids`: the samples it holds)."""

    before: int = 0  # training examples handed out before this batch
    position: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True)
class _Item:
    datum: Datum
    offset: int  # where its line starts in samples.jsonl


class SampleStream:
    """One epoch of training batches over samples.jsonl as it grows; see the module docstring.

    The driver `open`s it (the examples to expect, the fingerprint); the trainer gives it its
    batching (`with_batching`) and then drives it as any `BatchSource`: `start` (from a
    checkpoint's position), `next` until None, and `finish` at the end.
    """

    def __init__(
        self,
        run: RunDir,
        datum_cfg: DatumConfig,
        model_name: str,
        renderer: Renderer,
        train_cfg: TrainConfig,
        wanted_ids: list[str],
        stop: threading.Event,
        producer: Producer | None = None,
        say: Callable[[str], None] = lambda _msg: None,
    ) -> None:
        self.run, self.datum_cfg, self.model_name = run, datum_cfg, model_name
        self.renderer, self.say = renderer, say
        self.eval_examples, self.grad_accum = train_cfg.eval_examples, train_cfg.grad_accum
        self.wanted_ids, self.stop, self.producer = wanted_ids, stop, producer
        self.fingerprint = ""
        self.keep = "all"  # the sampler's --keep (issue #17), read once sampling has started
        self.wait_s = 0.0
        self.expected = 0  # training examples the finished samples will hold (see `open`)
        self.trained = 0  # training examples handed out as batches, over all runs
        self.batches = 0
        self._tail = SampleTail(run.samples)  # the reader thread's
        # records in full; the reader thread's says where a line is not a record, the scans'
        # (of lines it reads again) stay quiet
        self._records = SampleReader(
            run.samples, on_skip=lambda m: say(f"[yellow]warning:[/] {m}; skipped")
        )
        self._quiet = SampleReader(run.samples)
        self._template: dict[str, Any] = {"prefix_failed": 0, "checked": 0, "prefix_failed_ids": []}
        self._offset = 0  # lines before it are in the buffer, trained, or not for training
        self._seen: set[str] = set()
        self._buffer: list[_Item] = []
        self._buffer_tokens = 0
        self._val: list[Datum] = []
        self._val_cache: tuple[int, Datums] | None = None
        self._arrived_tokens = self._arrived = 0  # training examples read, for the estimate
        self._exhausted = False  # sampling has ended and every line has been read
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._reader: threading.Thread | None = None
        self._batching = Batching(budget=train_cfg.batch_tokens, mode="pad")
        self._last_position: dict[str, Any] = {}

    # ---- setup: `open` by the driver, `with_batching` and `start` by the trainer

    def open(self) -> None:
        """Count the training examples to expect, and fingerprint the data for checkpoints."""
        if self.producer is not None:  # its config.yaml write must not race the trainer's
            self.producer.ready.wait()
            if self.producer.error is not None:
                raise self.producer.error
        # The prompts' ids are fixed by (persona, n, seed) and the split is a hash of the id, so
        # the number of training examples is known before a single answer arrives (fewer only
        # where a prompt fails or an answer is dropped as too long).
        self.keep = self.run.sample_keep()
        ids = set(self.wanted_ids)
        scan = SampleTail(self.run.samples)
        while lines := scan.read():
            for _, line in lines:
                record = _record(line, self._quiet)
                if record is not None and record.get("split") != "heldout":
                    ids.add(str(record.get("id", "")))
        vf = self.datum_cfg.val_fraction
        self.expected = sum(1 for i in ids if split_of(i, vf) == "train")
        self.say(
            f"streaming: one epoch over ~{self.expected} training examples as the teacher "
            "answers; training starts once the first answers fill a batch"
        )
        h = hashlib.sha256()
        h.update(self.datum_cfg.model_dump_json().encode())
        h.update(self.model_name.encode())
        h.update(tokenizer_fingerprint(self.renderer).encode())
        if self.keep != "all":  # only then, so the fingerprints of earlier runs stay as they were
            h.update(f"keep:{self.keep}".encode())
        self.fingerprint = "stream:" + h.hexdigest()

    def with_batching(self, batching: Batching) -> SampleStream:
        """This stream, cutting batches as `batching` says (the trainer's `SourceFactory`)."""
        self._batching = batching
        return self

    def describe(self) -> str:
        return "one epoch as samples arrive"

    def start(self, position: Any | None) -> None:
        """Start reading, from a checkpoint's position if there is one."""
        if position is not None:
            self._resume(position)
        self._last_position = self._position()
        self._reader = threading.Thread(target=self._read_loop, name="stream-reader", daemon=True)
        self._reader.start()

    def _resume(self, position: dict[str, Any]) -> None:
        """Continue from a checkpoint: lines before `offset` are done, except those in
        `pending`, which were read but not trained yet."""
        offset, pending = int(position["offset"]), [int(x) for x in position["pending"]]
        self.trained, self.batches = int(position["trained"]), int(position.get("batches", 0))
        self.expected = int(position.get("expected", self.expected))
        # the ids already read (duplicates are skipped as build_datums skips them), and the
        # validation lines among them (a few spare, for any build_datums drops)
        val_lines: list[tuple[int, bytes]] = []
        scan, keep = SampleTail(self.run.samples), self.keep
        while scan.offset < offset:
            lines = scan.read()
            if not lines:
                raise UserError(
                    f"{self.run.samples} is shorter than the last checkpoint's position "
                    f"(byte {offset}); move RUN/checkpoints away to retrain from the start"
                )
            for start, line in lines:
                record = _record(line, self._quiet) if start < offset else None
                if record is None or record.get("split") == "heldout" or left_out(record, keep):
                    continue  # held out, or a wrong answer under --keep correct
                rid = str(record.get("id", ""))
                new = rid not in self._seen
                self._seen.add(rid)
                is_val = split_of(rid, self.datum_cfg.val_fraction) == "val"
                if new and is_val and len(val_lines) < 2 * self.eval_examples + 16:
                    val_lines.append((start, line))
        self._tail.offset = self._offset = offset
        self._ingest([(o, self._tail.line_at(o)) for o in pending], offset, dedup=False)
        self._ingest(val_lines, offset, dedup=False)

    # ---- the reader thread: tail the file, tokenize, fill the buffer

    def _sampling_done(self) -> bool:
        return self.producer is None or self.producer.done.is_set()

    def _read_loop(self) -> None:
        try:
            while not self._closed.is_set():
                with self._cond:  # the file is the queue: read ahead only this far
                    while self._buffer_tokens >= BUFFER_BATCHES * self._batching.budget:
                        if self._closed.is_set():
                            return
                        self._cond.wait(POLL_S)
                finished = self._sampling_done()  # before reading: no line is missed
                lines = self._tail.read()
                if lines:
                    self._ingest(lines, self._tail.offset)
                elif finished:
                    with self._cond:
                        self._exhausted = True
                        self._cond.notify_all()
                    return
                else:
                    self._closed.wait(POLL_S)
        except BaseException as e:  # e.g. a chat template that is not prefix-stable
            with self._cond:
                self._error = e
                self._cond.notify_all()

    def _ingest(self, lines: list[tuple[int, bytes]], offset: int, dedup: bool = True) -> None:
        """Tokenize lines as `train` does, then add them and move the read offset, atomically,
        so that a position taken at any time is consistent."""
        records, starts = [], {}
        for start, line in lines:
            record = _record(line, self._records if dedup else self._quiet,
                             f"{self.run.samples} (byte {start})")  # fmt: skip
            if record is None or record.get("split") == "heldout" or left_out(record, self.keep):
                continue  # held out, or a wrong answer under --keep correct (a later may be right)
            rid = str(record.get("id", ""))
            if dedup and rid in self._seen:  # build_datums keeps the first of duplicate ids
                continue
            self._seen.add(rid)
            records.append(record)
            starts[rid] = start
        datums, stats = build_datums(
            records, self.renderer, self.datum_cfg, self.model_name, check_template=False
        )
        self._check_template(stats)
        with self._cond:
            for d in datums:
                if d.split == "train":
                    self._buffer.append(_Item(datum=d, offset=starts[d.id]))
                    self._buffer_tokens += len(d.tokens)
                    self._arrived += 1
                    self._arrived_tokens += len(d.tokens)
                elif len(self._val) < self.eval_examples:
                    self._val.append(d)
            self._buffer.sort(key=lambda item: item.offset)  # resume adds waiting lines first
            self._offset = max(self._offset, offset)
            self._cond.notify_all()

    def _check_template(self, stats: dict[str, Any]) -> None:
        """The prefix-check rule of `build_datums`, over the records read so far: a few failed
        records are skipped; most of them, once a fair number have arrived, refuse the
        template (issue #16)."""
        t = self._template
        t["prefix_failed"] += stats["prefix_failed"]
        t["checked"] += stats["checked"]
        t["prefix_failed_ids"] = (t["prefix_failed_ids"] + stats["prefix_failed_ids"])[
            :PREFIX_IDS_SHOWN
        ]
        if t["checked"] >= 16 or self._sampling_done():
            check_prefix_failures(t, self.model_name)

    # ---- the trainer's side

    def next(self) -> StreamBatch | None:
        """The next micro-batch; waits while the buffer cannot fill one and the teacher is
        still answering. None once everything is trained, or when stopping."""
        t0 = time.perf_counter()
        try:
            with self._cond:
                while True:
                    if self._error is not None:
                        raise self._error
                    if self.stop.is_set():
                        return None
                    if self._buffer_tokens >= self._batching.budget or (
                        self._exhausted and self._buffer
                    ):
                        break
                    if self._exhausted:
                        return None
                    self._cond.wait(POLL_S)
                items = self._take_batch()
                before = self.trained
                self.trained += len(items)
                self.batches += 1
                position = self._position()
                self._cond.notify_all()
        finally:
            self.wait_s += time.perf_counter() - t0
        data = to_arrays([it.datum for it in items], {})
        b = collate(data, np.arange(len(items)), self._batching.mode, 0, self._batching.pin)
        return StreamBatch(**vars(b), before=before, position=position)

    def _take_batch(self) -> list[_Item]:
        """The oldest waiting example and those closest to it in length, under the token
        budget (`BudgetFill`). The oldest goes first, so nothing waits for long; its neighbours
        in length keep padding small."""
        lengths = [len(it.datum.tokens) for it in self._buffer]
        by_distance = sorted(
            range(1, len(lengths)), key=lambda i: (abs(lengths[i] - lengths[0]), i)
        )
        fill = BudgetFill(self._batching.budget, self._batching.mode)
        chosen = [0]
        fill.add(lengths[0])
        for i in by_distance:
            if fill.fits(lengths[i]):
                chosen.append(i)
                fill.add(lengths[i])
        keep = set(chosen)
        items = [self._buffer[i] for i in sorted(keep)]
        self._buffer = [it for i, it in enumerate(self._buffer) if i not in keep]
        self._buffer_tokens -= fill.used
        return items

    def _position(self) -> dict[str, Any]:
        return {
            "offset": self._offset,
            "pending": [it.offset for it in self._buffer],
            "trained": self.trained,
            "batches": self.batches,
            "expected": self.expected,
        }

    def position(self, batch: Batch | None = None) -> dict[str, Any]:
        """Where the stream stood after `batch` (what a checkpoint saved then must hold)."""
        if isinstance(batch, StreamBatch):
            self._last_position = batch.position
        return self._last_position

    # The LR schedule decays with the fraction of the expected training examples trained, not
    # with a step count: the number of steps is unknown until sampling ends (answer lengths,
    # failures), and an estimated total that moves as samples arrive would make the LR jump
    # and a resumed run disagree with the first. The expected count is exact up front (`open`),
    # the fraction only grows, a checkpoint restores it exactly, and it reaches 1 with the last
    # sample (a little less if some prompts failed).
    def progress(self, micro: list[Batch]) -> float:
        first = micro[0]
        before = first.before if isinstance(first, StreamBatch) else self.trained
        return before / max(1, self.expected)

    def estimated_steps(self, step: int) -> int:
        """Steps for the whole epoch: the steps so far plus the expected examples left at the
        examples per step seen so far (before the first, from the tokens per example)."""
        left = max(0, self.expected - self.trained)
        if step > 0 and self.trained:
            per_step = self.trained / step
        else:
            mean = self._arrived_tokens / self._arrived if self._arrived else GUESS_TOKENS
            per_step = max(1.0, self._batching.budget / mean) * self.grad_accum
        return max(step, step + math.ceil(left / per_step))

    def step_record(self, micro: list[Batch]) -> dict[str, Any]:
        """What metrics.jsonl keeps per step: the ids trained on, and how far the epoch is."""
        ids = [i for b in micro if isinstance(b, StreamBatch) for i in b.ids]
        after = self.position(micro[-1])
        return {
            "epoch": round(after["trained"] / max(1, self.expected), 4),
            "examples": len(ids),
            "trained": after["trained"],  # examples so far, this step's included
            "ids": ids,
            "samples_offset": after["offset"],
        }

    def status(self, record: dict[str, Any]) -> str:
        """For the display line of the step `record` (a `step_record`) describes."""
        with self._cond:
            waiting = len(self._buffer)
        answering = "" if self._sampling_done() else ", teacher answering"
        done = record.get("trained", self.trained)
        return f" | {done}/~{self.expected} examples ({waiting} waiting{answering})"

    def validation(self) -> Validation:
        """The validation examples that have arrived so far (the first `eval_examples`, in
        file order: once that many have arrived, the same set `train` validates on)."""
        with self._cond:
            val = self._val[: self.eval_examples]
        if self._val_cache is None or self._val_cache[0] != len(val):
            self._val_cache = (len(val), to_arrays(val, {}))
        data = self._val_cache[1]
        return Validation(data=data, indices=data.indices("val"))

    def finish(self) -> Validation:
        """After the last batch: RUN/datums, exactly as `train` builds it, for eval and reruns;
        the final validation loss is on the examples `train` would use."""
        data, _ = prepare_datums(self.run, self.renderer, self.datum_cfg, self.model_name)
        n = data.stats["train"]["examples"]
        self.say(
            f"datums: {n} train / {data.stats['val']['examples']} val examples written to "
            f"{self.run.datums}; {self.trained} trained on as they arrived"
        )
        if n != self.trained:  # would mean a sample was skipped or trained twice: say so
            self.say(f"[yellow]warning:[/] the stream trained on {self.trained} examples, not {n}")
        return Validation(data=data, indices=data.indices("val")[: self.eval_examples])

    def resume_hint(self, run: RunDir) -> str:
        return "rerun the same `promptdistill run ... --stream` command to go on"

    def close(self) -> None:
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        if self._reader is not None:
            self._reader.join(timeout=10)
