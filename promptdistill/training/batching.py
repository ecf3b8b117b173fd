"""Token-budget batches with length bucketing, and their collation into model inputs.

The token-budget rule (`BudgetFill`) is written once, here: the trainer's epochs, the streaming
source (training/stream.py) and eval's scoring (evaluation/scoring.py) all fill batches with it.

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

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from promptdistill.datums.store import Datums

Mode = Literal["pad", "pack"]
# Examples are sorted by length inside windows of this many batches' worth of examples: wide
# enough that neighbours have similar lengths, narrow enough that batches stay well mixed.
BUCKET_WINDOW = 64


class BudgetFill:
    """One batch being filled under a token budget. In "pad" mode the padded size counts
    (rows x longest row), in "pack" mode the real tokens; `max_rows` caps the rows too."""

    def __init__(self, budget: int, mode: Mode, max_rows: int | None = None) -> None:
        self.budget, self.mode, self.max_rows = budget, mode, max_rows
        self.rows = self.longest = self.used = 0

    def fits(self, n: int) -> bool:
        if self.max_rows is not None and self.rows >= self.max_rows:
            return False
        if self.mode == "pad":
            return max(self.longest, n) * (self.rows + 1) <= self.budget
        return self.used + n <= self.budget

    def add(self, n: int) -> None:
        self.rows, self.longest, self.used = self.rows + 1, max(self.longest, n), self.used + n


def budget_batches(
    order: Sequence[int], lengths: Any, budget: int, mode: Mode, max_rows: int | None = None
) -> list[np.ndarray]:
    """Cut `order` (example ids) into consecutive batches under the budget. An example longer
    than the budget gets a batch of its own."""
    batches: list[np.ndarray] = []
    current: list[int] = []
    fill = BudgetFill(budget, mode, max_rows)
    for i in order:
        n = int(lengths[i])
        if current and not fill.fits(n):
            batches.append(np.asarray(current, dtype=np.int64))
            current, fill = [], BudgetFill(budget, mode, max_rows)
        current.append(int(i))
        fill.add(n)
    if current:
        batches.append(np.asarray(current, dtype=np.int64))
    return batches


def epoch_batches(
    lengths: np.ndarray,
    indices: np.ndarray,
    batch_tokens: int,
    seed: int,
    epoch: int,
    mode: Mode = "pad",
) -> list[np.ndarray]:
    """Split `indices` (example ids) into batches under `batch_tokens`, shuffled per epoch:
    shuffled, then sorted by length inside windows, then cut by the budget rule."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(indices)
    mean_len = max(1.0, float(lengths[indices].mean())) if len(indices) else 1.0
    window = max(1, int(BUCKET_WINDOW * batch_tokens / mean_len))
    batches: list[np.ndarray] = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        # longest first, ties broken by id so the order is fully determined by (seed, epoch)
        chunk = chunk[np.lexsort((chunk, -lengths[chunk]))]
        batches += budget_batches(chunk.tolist(), lengths, batch_tokens, mode)
    return [batches[j] for j in rng.permutation(len(batches))]


@dataclass(kw_only=True)
class TeacherTargets:
    """What the teacher says at a batch's N loss positions, for the distillation objectives.

    In process (training/teacher.py): the teacher's last hidden states there and its LM head, so
    its whole next-token distribution is one chunked matmul away. From an endpoint: the top-K
    token ids and logprobs it returned (sample --logprobs K), or the logprob it gives the
    batch's own token (scoring a student's answer)."""

    hidden_NH: Any | None = None
    head_VH: Any | None = None
    top_ids_NK: Any | None = None  # LongTensor, -1 where the endpoint gave fewer than K
    top_logp_NK: Any | None = None
    token_logp_N: Any | None = None


@dataclass(kw_only=True)
class Batch:
    """One micro-batch, ready for the model.

    The model reads `input_ids_BT` (and `position_ids_BT` when packed); the loss only touches the
    N positions whose next token carries weight, listed by `loss_idx_N` (flat index into B*T).
    `rows_N` and `cols_N` say which of the batch's examples each of those positions belongs to,
    and where in it. `examples` keeps each example's (tokens, weights) on the host, for what the
    distillation objectives build from them (a teacher's input, a prompt for the student).
    """

    input_ids_BT: Any  # torch.LongTensor
    position_ids_BT: Any | None
    loss_idx_N: Any  # LongTensor, flat positions whose prediction carries weight
    targets_N: Any  # LongTensor, the token predicted at each of those positions
    weights_N: Any  # FloatTensor
    rows_N: Any  # LongTensor, the example (0..B-1 in batch order) of each position
    cols_N: Any  # LongTensor, the position inside its example
    n_tokens: int  # real (non-pad) input tokens
    weight_sum: float
    ids: list[str] = field(default_factory=list)  # the examples' ids
    examples: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    teacher: TeacherTargets | None = None
    onpolicy: bool = False  # the answers are the student's own (training/onpolicy.py)
    epoch: int = 0
    index: int = 0  # position of this batch in its epoch

    def to(self, device: Any) -> Batch:
        """The batch on `device` (a no-op on CPU)."""
        if device.type == "cpu":
            return self
        names = ("input_ids_BT", "position_ids_BT", "loss_idx_N", "targets_N", "weights_N")
        moved = {
            name: t.to(device, non_blocking=True)
            for name in (*names, "rows_N", "cols_N")
            if (t := getattr(self, name)) is not None
        }
        if self.teacher is not None:
            moved["teacher"] = TeacherTargets(
                **{
                    k: None if v is None else v.to(device, non_blocking=True)
                    for k, v in vars(self.teacher).items()
                }
            )
        return replace(self, **moved)


def collate(
    data: Datums, batch: np.ndarray, mode: Mode, pad_id: int = 0, pin: bool = False
) -> Batch:
    """Next-token inputs/targets for a list of examples: position t predicts token t+1."""
    import torch

    rows_in = [data.example(int(i)) for i in batch]
    if mode == "pack":
        inputs = np.concatenate([t[:-1] for t, _ in rows_in])[None, :]
        targets = np.concatenate([t[1:] for t, _ in rows_in])[None, :]
        weights = np.concatenate([w[1:] for _, w in rows_in])[None, :]
        positions = np.concatenate([np.arange(len(t) - 1) for t, _ in rows_in])[None, :]
    else:
        width = max(len(t) for t, _ in rows_in) - 1
        inputs = np.full((len(rows_in), width), pad_id, dtype=np.int64)
        targets = np.zeros((len(rows_in), width), dtype=np.int64)
        weights = np.zeros((len(rows_in), width), dtype=np.float32)
        for r, (t, w) in enumerate(rows_in):
            n = len(t) - 1
            inputs[r, :n], targets[r, :n], weights[r, :n] = t[:-1], t[1:], w[1:]
        positions = None
    flat_w = weights.reshape(-1)
    loss_idx = np.nonzero(flat_w)[0]
    if mode == "pack":
        rows = np.concatenate([np.full(len(t) - 1, r) for r, (t, _) in enumerate(rows_in)])
        cols = positions.reshape(-1) if positions is not None else loss_idx
    else:
        rows = np.repeat(np.arange(len(rows_in)), inputs.shape[1])
        cols = np.tile(np.arange(inputs.shape[1]), len(rows_in))
    tensors: dict[str, Any] = {
        "input_ids_BT": torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64)),
        "position_ids_BT": None
        if positions is None
        else torch.from_numpy(positions.astype(np.int64)),
        "loss_idx_N": torch.from_numpy(loss_idx.astype(np.int64)),
        "targets_N": torch.from_numpy(targets.reshape(-1)[loss_idx].astype(np.int64)),
        "weights_N": torch.from_numpy(flat_w[loss_idx].astype(np.float32)),
        "rows_N": torch.from_numpy(rows[loss_idx].astype(np.int64)),
        "cols_N": torch.from_numpy(cols[loss_idx].astype(np.int64)),
    }
    if pin:  # page-locked host memory lets .to(cuda, non_blocking=True) overlap the copy
        tensors = {k: None if t is None else t.pin_memory() for k, t in tensors.items()}
    return Batch(
        **tensors,
        n_tokens=int(sum(len(t) - 1 for t, _ in rows_in)),
        weight_sum=float(flat_w[loss_idx].sum()),
        ids=[data.ids[int(i)] for i in batch],
        examples=rows_in,
        teacher=_sparse_targets(data, batch, rows[loss_idx], cols[loss_idx]),
    )


def _sparse_targets(
    data: Datums, batch: np.ndarray, rows_N: np.ndarray, cols_N: np.ndarray
) -> TeacherTargets | None:
    """The endpoint's top-K logprobs at the loss positions, when the datums carry them: the
    distribution over the token at position t + 1, stored at t + 1."""
    if data.top_ids is None or data.top_logp is None:
        return None
    import torch

    starts = data.offsets[np.asarray(batch, dtype=np.int64)][rows_N] + cols_N + 1
    return TeacherTargets(
        top_ids_NK=torch.from_numpy(data.top_ids[starts].astype(np.int64)),
        top_logp_NK=torch.from_numpy(data.top_logp[starts].astype(np.float32)),
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
