"""How likely given answers are under local models, batched: eval's likelihood numbers.

The examples are (tokens, weights) as training datums are (datums/build.py), so an answer is
scored on exactly the tokens and weights the student was trained on. They are batched by the
trainer's token-budget rule (longest first), collated by the trainer's `collate`, and scored
by the training objective's own chunked NLL (training/objectives.py): the LM head runs only at
answer positions, and no (tokens x vocab) logits are kept.

With `keep_hidden`, the last hidden states at the answer positions are kept too, so that the
KL between two models' next-token distributions (`kl_sums`) can be formed afterwards with the
LM head, chunk by chunk, without both models in memory at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from promptdistill.datums.build import Datum
from promptdistill.datums.store import to_arrays
from promptdistill.models.prefix import common_prefix, run_prefix
from promptdistill.training.batching import budget_batches, collate
from promptdistill.training.objectives import NextTokenNLL, causal_lm, head_weight, loss_hidden

KL_CHUNK = 512


@dataclass(frozen=True, kw_only=True)
class ScoredText:
    nll_sum: float  # nats, summed (weighted) over the answer tokens
    tokens: int
    hidden: Any = None  # (positions, H) at the answer positions, with keep_hidden
    weights: Any = None  # (positions,) their weights, with keep_hidden


def score_nll(
    model: Any,
    examples: Sequence[tuple[Sequence[int], Sequence[float]]],
    batch_tokens: int = 8192,
    max_rows: int = 32,
    keep_hidden: bool = False,
    share_prefix: bool = False,
) -> list[ScoredText]:
    """Weighted NLL of each example. An example is (tokens, weights) as in a training datum:
    `weights[t]` is the weight of predicting `tokens[t]` from the tokens before it.

    With `share_prefix`, the leading tokens all examples share (a system prompt) are run once
    and their cache reused (models/prefix.py): the same numbers, for a fraction of the work."""
    import torch

    device = next(model.parameters()).device
    skip = common_prefix(examples) if share_prefix else 0
    prefix = None
    if skip:
        with torch.inference_mode():
            prefix = run_prefix(causal_lm(model).get_decoder(), examples[0][0][:skip], device)
    data = to_arrays(
        [
            Datum(id=str(k), split="val", tokens=list(t[skip:]), weights=list(w[skip:]))
            for k, (t, w) in enumerate(examples)
        ],
        {},
    )
    lengths = data.lengths()
    order = sorted(range(len(examples)), key=lambda i: -int(lengths[i]))
    nll = NextTokenNLL()
    out: list[ScoredText | None] = [None] * len(examples)
    with torch.inference_mode():
        for ids in budget_batches(order, lengths, batch_tokens, "pad", max_rows):
            batch = collate(data, ids, "pad").to(device)
            h_NH = loss_hidden(model, batch, prefix)
            nll_N = nll.token_nll(h_NH, head_weight(model), batch)
            sums_B = torch.zeros(len(ids), dtype=torch.float64, device=device)
            sums_B.index_add_(0, batch.rows_N, (nll_N * batch.weights_N).double())
            counts_B = torch.zeros(len(ids), dtype=torch.float64, device=device)
            counts_B.index_add_(0, batch.rows_N, batch.weights_N.double())
            for r, i in enumerate(ids.tolist()):
                mine = batch.rows_N == r
                out[i] = ScoredText(
                    nll_sum=float(sums_B[r]),
                    tokens=int(round(float(counts_B[r]))),
                    hidden=h_NH[mine].clone() if keep_hidden else None,
                    weights=batch.weights_N[mine].clone() if keep_hidden else None,
                )
    return [o for o in out if o is not None]


def kl_sums(teacher: list[ScoredText], other: list[ScoredText], head_VH: Any) -> list[float]:
    """Per example, the weighted sum over its answer positions of KL(teacher || other) of the
    next-token distributions, from the hidden states both kept (`keep_hidden`) and the LM head
    they share (the student's LoRA never touches it)."""
    import torch

    sums = []
    with torch.inference_mode():
        for t, o in zip(teacher, other, strict=True):
            if t.hidden is None or o.hidden is None or len(t.hidden) != len(o.hidden):
                raise ValueError("both scorings must keep the hidden states of the same answer")
            total = 0.0
            for s in range(0, len(t.hidden), KL_CHUNK):
                logp_t = (t.hidden[s : s + KL_CHUNK] @ head_VH.T).float().log_softmax(-1)
                logp_o = (o.hidden[s : s + KL_CHUNK] @ head_VH.T).float().log_softmax(-1)
                kl_C = (logp_t.exp() * (logp_t - logp_o)).sum(-1)
                total += float((kl_C * t.weights[s : s + KL_CHUNK]).sum())
            sums.append(total)
    return sums
