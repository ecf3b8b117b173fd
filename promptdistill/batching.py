"""Token-budget batches with length bucketing, collation, and a background prefetcher.

Data order is a pure function of (seed, epoch): `epoch_batches` shuffles with
`numpy.random.default_rng([seed, epoch])`, so a resumed run replays exactly the batches an
uninterrupted run would have seen, from a saved (epoch, batch) position.

Two ways to put examples of different lengths into one forward pass:
- "pad" (default): bucketed padding. Examples are shuffled, then sorted by length inside windows
  of a few hundred, and cut into batches of B rows whose padded size B * T_max stays under the
  token budget. Rows are right-padded and passed WITHOUT an attention mask: causal attention never
  lets a real token see the pads after it, so no padding mask is needed (SDPA can take its
  `is_causal` fast path; eager, which the trainer uses on CPU, needs only the plain causal mask);
  pad positions produce garbage that carries weight 0. With length-sorted windows padding
  is typically a few percent of the tokens.
- "pack": padding-free packing (the HF `DataCollatorWithFlattening` idea): one row of
  concatenated examples, `position_ids` restarting at 0 per example and no attention mask;
  transformers then builds a block-diagonal mask from the position ids
  (`masking_utils.find_packed_sequence_indices`). On CUDA with FlashAttention this is the fast
  path. On CPU with SDPA the mask is dense: attention costs (sum of lengths)^2 instead of
  sum(length^2), and a materialised mask disables the causal fast path.

Measured on this 2-core CPU with SmolLM2-135M (docs/benchmarks.md, "Training (issue #5)"): "pad"
is faster on CPU, so it is the default there; "pack" is used where FlashAttention is available.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from promptdistill.datums import Datums

Mode = Literal["pad", "pack"]
# Examples are sorted by length inside windows of this many batches' worth of examples: wide
# enough that neighbours have similar lengths, narrow enough that batches stay well mixed.
BUCKET_WINDOW = 64


def epoch_batches(
    lengths: np.ndarray,
    indices: np.ndarray,
    batch_tokens: int,
    seed: int,
    epoch: int,
    mode: Mode = "pad",
) -> list[np.ndarray]:
    """Split `indices` (example ids) into batches under `batch_tokens`, shuffled per epoch.

    The budget counts padded tokens in "pad" mode (rows x longest row) and real tokens in "pack"
    mode. An example longer than the budget gets a batch of its own.
    """
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(indices)
    mean_len = max(1.0, float(lengths[indices].mean())) if len(indices) else 1.0
    window = max(1, int(BUCKET_WINDOW * batch_tokens / mean_len))
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        # longest first, ties broken by id so the order is fully determined by (seed, epoch)
        chunk = chunk[np.lexsort((chunk, -lengths[chunk]))]
        current: list[int] = []
        longest = used = 0
        for i in chunk.tolist():
            n = int(lengths[i])
            if mode == "pad":
                fits = max(longest, n) * (len(current) + 1) <= batch_tokens
            else:
                fits = used + n <= batch_tokens
            if current and not fits:
                batches.append(np.asarray(current, dtype=np.int64))
                current, longest, used = [], 0, 0
            current.append(i)
            longest, used = max(longest, n), used + n
        if current:
            batches.append(np.asarray(current, dtype=np.int64))
    return [batches[j] for j in rng.permutation(len(batches))]


@dataclass
class Batch:
    """One micro-batch, ready for the model.

    The model reads `input_ids_BT` (and `position_ids_BT` when packed); the loss only touches the
    N positions whose next token carries weight, listed by `loss_idx_N` (flat index into B*T).
    """

    input_ids_BT: Any  # torch.LongTensor
    position_ids_BT: Any | None
    loss_idx_N: Any  # LongTensor, flat positions whose prediction carries weight
    targets_N: Any  # LongTensor, the token predicted at each of those positions
    weights_N: Any  # FloatTensor
    n_tokens: int  # real (non-pad) input tokens
    weight_sum: float
    epoch: int = 0
    index: int = 0  # position of this batch in its epoch


def collate(
    data: Datums, batch: np.ndarray, mode: Mode, pad_id: int = 0, pin: bool = False
) -> Batch:
    """Next-token inputs/targets for a list of examples: position t predicts token t+1."""
    import torch

    rows = [data.example(int(i)) for i in batch]
    if mode == "pack":
        inputs = np.concatenate([t[:-1] for t, _ in rows])[None, :]
        targets = np.concatenate([t[1:] for t, _ in rows])[None, :]
        weights = np.concatenate([w[1:] for _, w in rows])[None, :]
        positions = np.concatenate([np.arange(len(t) - 1) for t, _ in rows])[None, :]
    else:
        width = max(len(t) for t, _ in rows) - 1
        inputs = np.full((len(rows), width), pad_id, dtype=np.int64)
        targets = np.zeros((len(rows), width), dtype=np.int64)
        weights = np.zeros((len(rows), width), dtype=np.float32)
        for r, (t, w) in enumerate(rows):
            n = len(t) - 1
            inputs[r, :n], targets[r, :n], weights[r, :n] = t[:-1], t[1:], w[1:]
        positions = None
    flat_w = weights.reshape(-1)
    loss_idx = np.nonzero(flat_w)[0]
    tensors = [
        torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64)),
        None if positions is None else torch.from_numpy(positions.astype(np.int64)),
        torch.from_numpy(loss_idx.astype(np.int64)),
        torch.from_numpy(targets.reshape(-1)[loss_idx].astype(np.int64)),
        torch.from_numpy(flat_w[loss_idx].astype(np.float32)),
    ]
    if pin:  # page-locked host memory lets .to(cuda, non_blocking=True) overlap the copy
        tensors = [None if t is None else t.pin_memory() for t in tensors]
    return Batch(
        tensors[0],
        tensors[1],
        tensors[2],
        tensors[3],
        tensors[4],
        n_tokens=int(sum(len(t) - 1 for t, _ in rows)),
        weight_sum=float(flat_w[loss_idx].sum()),
    )


def batch_stream(
    data: Datums,
    indices: np.ndarray,
    batch_tokens: int,
    seed: int,
    mode: Mode,
    start_epoch: int = 0,
    start_index: int = 0,
    pad_id: int = 0,
    pin: bool = False,
    rank: int = 0,
    world: int = 1,
) -> Iterator[Batch]:
    """Collated micro-batches forever, epoch after epoch, from a saved position.

    With `world` > 1 (DDP), rank r takes every world-th batch of the same global order.
    """
    lengths = data.lengths()
    epoch, index = start_epoch, start_index
    while True:
        batches = epoch_batches(lengths, indices, batch_tokens, seed, epoch, mode)
        for j in range(index, len(batches)):
            if j % world != rank:
                continue
            b = collate(data, batches[j], mode, pad_id, pin)
            b.epoch, b.index = epoch, j
            yield b
        epoch, index = epoch + 1, 0


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


class EpochBatches:
    """The batch source `train` uses for a finished datums file: `batch_stream`'s batches, epoch
    after epoch, prefetched. Its position is (epoch, next batch index), the LR follows the step
    count, and the number of steps is fixed. `stream.SampleStream` is the other source."""

    def __init__(
        self,
        source: Iterator[Batch],
        per_epoch: int,
        total_steps: int,
        start: list[int],
        depth: int,
    ) -> None:
        self._prefetch = Prefetcher(source, depth)
        self.per_epoch = per_epoch
        self.total_steps = total_steps
        self._position = list(start)

    @property
    def wait_s(self) -> float:
        return self._prefetch.wait_s

    def next(self) -> Batch:
        return self._prefetch.next()

    def close(self) -> None:
        self._prefetch.close()

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
