"""Training objectives: what the loss is, as an argument of the loop (the seam of issue #12).

An objective gets the student's hidden states at the loss positions, the (frozen) LM head and
the batch, and returns the loss summed over those positions with its stats. It never sees the
model, so a new loss is a new class here and nothing else (TRL's `generalized_jsd_loss` is a pure
function of logits in the same spirit; tinker-cookbook passes `loss_fn` to `forward_backward`).

The LM head and log-softmax run only at positions whose next token carries weight, chunk by
chunk, and the gradient with respect to the hidden states is formed during the forward pass, so
no (N, vocab) logits tensor is kept for backward (Liger Kernel's fused linear cross-entropy, by
hand on CPU). SmolLM2's vocabulary is 49152: one (1024 x 49152) fp32 chunk is 200 MB.

Validation (training/loop.py) and eval's scoring (evaluation/scoring.py) use the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F  # noqa: N812

from promptdistill.models.prefix import Prefix
from promptdistill.training.batching import Batch

LOSS_CHUNK = 1024  # positions per LM-head chunk


@dataclass(kw_only=True)
class LossSum:
    """A micro-batch's loss, summed (weighted) over its loss positions; the loop divides by the
    step's total weight. `stats` are further detached sums of the same kind for metrics.jsonl
    (e.g. a distillation loss's KL and NLL parts)."""

    total: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective(Protocol):
    @property
    def name(self) -> str:
        """What `--objective` calls it."""

    def prepare(self, batch: Batch, step: int | None) -> list[Batch]:
        """The batches to train on for one micro-batch of the source (with what the teacher
        says about them; on-policy: the student's own answers for some of them). `step` None:
        for the validation loss, which is never on-policy."""

    def loss_sum(self, h_NH: torch.Tensor, head_VH: torch.Tensor, batch: Batch) -> LossSum:
        """The summed loss at the N loss positions of `batch`, from their hidden states."""

    def costs(self, loop_s: float) -> str | None:
        """What it cost on top of the student's steps (teacher forwards, own answers), for
        the line `train` prints at the end; None: nothing."""


# --------------------------------------------------------------------------- the shared pieces


def causal_lm(model: Any) -> Any:
    """The *ForCausalLM inside a PEFT wrapper (LoRA layers injected and active), or `model`."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def loss_hidden(lm: Any, batch: Batch, prefix: Prefix | None = None) -> torch.Tensor:
    """The backbone's last hidden states at the batch's loss positions, (N, H). Right-padded
    rows need no attention mask: causal attention never lets a real token see the pads after
    it (training/batching.py). With `prefix`, every row continues those tokens (models/prefix.py):
    the batch holds only what follows them, and attends to their cached keys and values."""
    lm = causal_lm(lm)
    positions_BT = batch.position_ids_BT  # None in pad batching: the model counts from 0, or
    if positions_BT is not None and prefix is not None:  # from the cache's length
        positions_BT = positions_BT + len(prefix)
    out = lm.get_decoder()(
        input_ids=batch.input_ids_BT,
        position_ids=positions_BT,
        cache=prefix.cache(batch.input_ids_BT.shape[0]) if prefix is not None else None,
        use_cache=prefix is not None,
    )
    hidden_BTH = out.last_hidden_state
    return hidden_BTH.reshape(-1, hidden_BTH.shape[-1]).index_select(0, batch.loss_idx_N)


def head_weight(lm: Any) -> torch.Tensor:
    weight: torch.Tensor = causal_lm(lm).get_output_embeddings().weight
    return weight


def forward_loss(lm: Any, batch: Batch, objective: Objective) -> LossSum:
    """Run the student on `batch` and apply `objective`: the loop's and validation's forward."""
    return objective.loss_sum(loss_hidden(lm, batch), head_weight(lm), batch)


def chunked_nll(
    h_NH: torch.Tensor,
    w_VH: torch.Tensor,
    targets_N: torch.Tensor,
    grad_weights_N: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-log softmax(h W^T)[target] per position, in (C x V) chunks. With `grad_weights_N`, also
    d(sum_i w_i nll_i)/dh = w * (softmax - onehot) @ W, formed chunk by chunk (no logits kept)."""
    nll_N = torch.empty(h_NH.shape[0], dtype=torch.float32, device=h_NH.device)
    grad_NH = torch.empty_like(h_NH) if grad_weights_N is not None else None
    for s in range(0, h_NH.shape[0], LOSS_CHUNK):
        e = min(s + LOSS_CHUNK, h_NH.shape[0])
        t_C = targets_N[s:e]
        # one (C, V) fp32 buffer, updated in place: logits -> exp(logits - max) -> w * softmax
        buf_CV = (h_NH[s:e] @ w_VH.T).float()
        target_C = buf_CV.gather(1, t_C[:, None]).squeeze(1)
        max_C1 = buf_CV.amax(dim=-1, keepdim=True)
        buf_CV.sub_(max_C1).exp_()
        sum_C1 = buf_CV.sum(dim=-1, keepdim=True)
        nll_N[s:e] = (max_C1 + sum_C1.log()).squeeze(1) - target_C
        if grad_NH is not None and grad_weights_N is not None:
            w_C = grad_weights_N[s:e]
            buf_CV.mul_(w_C[:, None] / sum_C1)
            buf_CV[torch.arange(e - s, device=t_C.device), t_C] -= w_C
            grad_NH[s:e] = buf_CV.to(w_VH.dtype) @ w_VH
    return nll_N, grad_NH


class WeightedNLL(torch.autograd.Function):
    """sum_i w_i * -log p(target_i | h_i), with p = softmax(h_i @ W^T), chunked (`chunked_nll`).

    Only the (N, hidden) gradient is saved for backward. The LM head W is frozen (LoRA never
    trains it), so no gradient for it is needed.
    """

    @staticmethod
    def forward(
        ctx: Any,
        h_NH: torch.Tensor,
        w_VH: torch.Tensor,
        targets_N: torch.Tensor,
        weights_N: torch.Tensor,
    ) -> torch.Tensor:
        grad_w = weights_N if ctx.needs_input_grad[0] else None
        nll_N, grad_NH = chunked_nll(h_NH, w_VH, targets_N, grad_w)
        ctx.save_for_backward(grad_NH if grad_NH is not None else h_NH.new_empty(0))
        return (nll_N * weights_N).sum()

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (grad_NH,) = ctx.saved_tensors
        return grad_NH * grad_out.to(grad_NH.dtype), None, None, None


# --------------------------------------------------------------------------- objectives


@dataclass(frozen=True)
class NextTokenNLL:
    """`sft`: the weighted NLL of the teacher's sampled answer, one token per position."""

    name: str = "sft"

    def prepare(self, batch: Batch, step: int | None) -> list[Batch]:
        return [batch]

    def costs(self, loop_s: float) -> str | None:
        return None

    def loss_sum(self, h_NH: torch.Tensor, head_VH: torch.Tensor, batch: Batch) -> LossSum:
        if head_VH.requires_grad:  # not our LoRA setup, but keep it correct: plain autograd
            logits_NV = (h_NH @ head_VH.T).float()
            nll_N = F.cross_entropy(logits_NV, batch.targets_N, reduction="none")
            return LossSum(total=(nll_N * batch.weights_N).sum())
        total: torch.Tensor = WeightedNLL.apply(h_NH, head_VH, batch.targets_N, batch.weights_N)
        return LossSum(total=total)

    def token_nll(self, h_NH: torch.Tensor, head_VH: torch.Tensor, batch: Batch) -> torch.Tensor:
        """-log p(target) at each loss position, without gradient (eval's scoring)."""
        return chunked_nll(h_NH, head_VH, batch.targets_N)[0]
