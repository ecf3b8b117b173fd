"""NLL of given answers under a local model, batched: eval's likelihood numbers.

The examples are (tokens, weights) as training datums are (datums/build.py), so an answer is
scored on exactly the tokens and weights the student was trained on. They are batched by the
trainer's token-budget rule (longest first), collated by the trainer's `collate`, and scored
by the training objective's own chunked NLL (training/objectives.py): the LM head runs only at
answer positions, and no (tokens x vocab) logits are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from promptdistill.datums.build import Datum
from promptdistill.datums.store import to_arrays
from promptdistill.training.batching import budget_batches, collate
from promptdistill.training.objectives import NextTokenNLL, head_weight, loss_hidden


@dataclass(frozen=True, kw_only=True)
class ScoredText:
    nll_sum: float  # nats, summed (weighted) over the answer tokens
    tokens: int


def score_nll(
    model: Any,
    examples: Sequence[tuple[Sequence[int], Sequence[float]]],
    batch_tokens: int = 8192,
    max_rows: int = 32,
) -> list[ScoredText]:
    """Weighted NLL of each example. An example is (tokens, weights) as in a training datum:
    `weights[t]` is the weight of predicting `tokens[t]` from the tokens before it."""
    import torch

    data = to_arrays(
        [
            Datum(id=str(k), split="val", tokens=list(t), weights=list(w))
            for k, (t, w) in enumerate(examples)
        ],
        {},
    )
    lengths = data.lengths()
    order = sorted(range(len(examples)), key=lambda i: -int(lengths[i]))
    device = next(model.parameters()).device
    nll = NextTokenNLL()
    out: list[ScoredText | None] = [None] * len(examples)
    with torch.inference_mode():
        for ids in budget_batches(order, lengths, batch_tokens, "pad", max_rows):
            batch = collate(data, ids, "pad").to(device)
            nll_N = nll.token_nll(loss_hidden(model, batch), head_weight(model), batch)
            sums_B = torch.zeros(len(ids), dtype=torch.float64, device=device)
            sums_B.index_add_(0, batch.rows_N, (nll_N * batch.weights_N).double())
            counts_B = torch.zeros(len(ids), dtype=torch.float64, device=device)
            counts_B.index_add_(0, batch.rows_N, batch.weights_N.double())
            for r, i in enumerate(ids.tolist()):
                out[i] = ScoredText(nll_sum=float(sums_B[r]), tokens=int(round(float(counts_B[r]))))
    return [o for o in out if o is not None]
