"""Distillation losses on logits, chunked: what `kd` and `onpolicy` minimise.

Each loss is a kernel: given one chunk of the student's logits (C x V, fp32, C loss positions),
it returns the per-position loss and its gradient with respect to those logits, computed in
place so that at most two or three (C x V) buffers exist at a time. `ChunkedLoss` runs a
kernel over all N loss positions, forms the gradient with respect to the hidden states chunk
by chunk (as `objectives.WeightedNLL` does for the NLL), and so never keeps (N x V) logits.

- `forward_kl`: KL(p_teacher || p_student) over the whole vocabulary, plus `ce` x the NLL of
  the sampled token (the composite of a well-known Gemma 7B -> 2B distillation). Context
  distillation as Askell et al. 2021 (arXiv 2112.00861) define it.
- `sparse_kl`: the same KL from an endpoint's top-K logprobs only. The mass outside the top K
  is one more bucket (TRL's `loss_add_tail`) or the top K are renormalised (tinker-cookbook's
  sdft.py); docs/training.md says which we use and why.
- `reverse_kl`: KL(p_student || p_teacher) on the student's own answers, exactly, over the whole
  vocabulary (on-policy distillation: tinker-cookbook's train_on_policy.py, GKD with beta 1).
- `sampled_reverse_kl`: its one-sample estimate where only the teacher's logprob of the sampled
  token is known (an endpoint scoring the student's answer), trained as tinker does: a policy
  gradient with the per-token advantage -(log p_student - log p_teacher).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch

KD_CHUNK = 512  # positions per chunk: three (512 x 49152) fp32 buffers are 300 MB

# kernel(start, end, logits_CV) -> (loss_C, grad_CV, stats); logits_CV may be used in place
Kernel = Callable[
    [int, int, torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
]


class ChunkedLoss(torch.autograd.Function):
    """sum_i w_i * loss_i(h_i @ W^T), the loss given per chunk by `kernel`. Per-position stats
    the kernel returns are summed (weighted) into `stats`."""

    @staticmethod
    def forward(
        ctx: Any,
        h_NH: torch.Tensor,
        w_VH: torch.Tensor,
        weights_N: torch.Tensor,
        kernel: Kernel,
        stats: dict[str, torch.Tensor],
    ) -> torch.Tensor:
        grad_NH = torch.empty_like(h_NH) if ctx.needs_input_grad[0] else None
        total = torch.zeros((), dtype=torch.float32, device=h_NH.device)
        for s in range(0, h_NH.shape[0], KD_CHUNK):
            e = min(s + KD_CHUNK, h_NH.shape[0])
            w_C = weights_N[s:e]
            loss_C, grad_CV, chunk_stats = kernel(s, e, (h_NH[s:e] @ w_VH.T).float())
            total += (loss_C * w_C).sum()
            for key, value in chunk_stats.items():
                stats[key] = stats.get(key, torch.zeros_like(total)) + (value * w_C).sum()
            if grad_NH is not None:
                grad_NH[s:e] = grad_CV.mul_(w_C[:, None]).to(w_VH.dtype) @ w_VH
        ctx.save_for_backward(grad_NH if grad_NH is not None else h_NH.new_empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:
        (grad_NH,) = ctx.saved_tensors
        return grad_NH * grad_out.to(grad_NH.dtype), None, None, None, None


def chunked_loss(
    h_NH: torch.Tensor, w_VH: torch.Tensor, weights_N: torch.Tensor, kernel: Kernel
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    stats: dict[str, torch.Tensor] = {}
    total: torch.Tensor = ChunkedLoss.apply(h_NH, w_VH, weights_N, kernel, stats)
    return total, stats


def _log_softmax_(x_CV: torch.Tensor) -> torch.Tensor:
    return x_CV.sub_(torch.logsumexp(x_CV, dim=-1, keepdim=True))


def forward_kl(
    teacher_logits: Callable[[int, int], torch.Tensor], targets_N: torch.Tensor, ce: float = 0.0
) -> Kernel:
    """KL(p_T || p_S) + ce * NLL(target); grad = (1 + ce) p_S - p_T - ce onehot(target)."""

    def kernel(s: int, e: int, logits_CV: torch.Tensor) -> Any:
        logp_s = _log_softmax_(logits_CV)  # buffer 1
        logp_t = _log_softmax_(teacher_logits(s, e))  # buffer 2
        t_C1 = targets_N[s:e, None]
        nll_C = -logp_s.gather(1, t_C1).squeeze(1)
        kl_C = (logp_t.exp() * (logp_t - logp_s)).sum(-1)  # buffer 3, briefly
        grad = logp_s.exp_().mul_(1.0 + ce).sub_(logp_t.exp_())
        if ce:
            grad.scatter_add_(1, t_C1, torch.full_like(t_C1, -ce, dtype=grad.dtype))
        return kl_C + ce * nll_C, grad, {"kl": kl_C, "nll": nll_C}

    return kernel


def reverse_kl(teacher_logits: Callable[[int, int], torch.Tensor]) -> Kernel:
    """KL(p_S || p_T) = sum p_S (log p_S - log p_T); grad = p_S * (log p_S - log p_T - KL)."""

    def kernel(s: int, e: int, logits_CV: torch.Tensor) -> Any:
        logp_s = _log_softmax_(logits_CV)
        diff = _log_softmax_(teacher_logits(s, e)).neg_().add_(logp_s)  # log p_S - log p_T
        p_s = logp_s.exp_()
        kl_C = (p_s * diff).sum(-1)
        grad = diff.sub_(kl_C[:, None]).mul_(p_s)
        return kl_C, grad, {"reverse_kl": kl_C}

    return kernel


def sparse_kl(
    top_ids_NK: torch.Tensor,
    top_logp_NK: torch.Tensor,
    targets_N: torch.Tensor,
    ce: float = 0.0,
    tail: Literal["bucket", "renorm"] = "bucket",
) -> Kernel:
    """KL(p_T || p_S) from the teacher's top-K only (ids -1 where it gave fewer). `bucket`:
    the mass outside the top K is a (K+1)th bucket on both sides; `renorm`: the top K are
    renormalised to sum to 1 and the rest is left out."""

    def kernel(s: int, e: int, logits_CV: torch.Tensor) -> Any:
        logp_s = _log_softmax_(logits_CV)
        ids_CK = top_ids_NK[s:e]
        valid_CK = ids_CK >= 0
        ids_CK = ids_CK.clamp(min=0)
        logp_t_CK = top_logp_NK[s:e].to(logp_s.dtype)
        p_t_CK = logp_t_CK.exp() * valid_CK
        logq_CK = logp_s.gather(1, ids_CK)
        t_C1 = targets_N[s:e, None]
        nll_C = -logp_s.gather(1, t_C1).squeeze(1)
        p_s = logp_s.exp_()
        q_CK = logq_CK.exp() * valid_CK
        if tail == "renorm":
            a_CK = p_t_CK / p_t_CK.sum(-1, keepdim=True).clamp(min=1e-12)
            kl_C = (a_CK * (a_CK.clamp(min=1e-30).log() - logq_CK) * valid_CK).sum(-1)
            grad = p_s.mul_(1.0 + ce)
            grad.scatter_add_(1, ids_CK, -a_CK)
        else:
            tail_t = (1.0 - p_t_CK.sum(-1)).clamp(min=0.0)  # A
            tail_s = (1.0 - q_CK.sum(-1)).clamp(min=1e-6)  # 1 - Q
            kl_C = (p_t_CK * (logp_t_CK - logq_CK) * valid_CK).sum(-1)
            kl_C += tail_t * (tail_t.clamp(min=1e-30).log() - tail_s.log())
            ratio_C1 = (tail_t / tail_s)[:, None]
            grad = p_s.mul_(1.0 - ratio_C1 + ce)
            grad.scatter_add_(1, ids_CK, q_CK * ratio_C1 - p_t_CK)
        if ce:
            grad.scatter_add_(1, t_C1, torch.full_like(t_C1, -ce, dtype=grad.dtype))
        return kl_C + ce * nll_C, grad, {"kl": kl_C, "nll": nll_C}

    return kernel


def sampled_reverse_kl(token_logp_N: torch.Tensor, targets_N: torch.Tensor) -> Kernel:
    """The one-sample reverse-KL estimate d = log p_S(x) - log p_T(x) for the sampled token x,
    and the policy gradient of its expectation: grad = d * (onehot(x) - p_S), the gradient of
    -A * log p_S(x) with the advantage A = -d held fixed (tinker-cookbook train_on_policy.py,
    kl_penalty_coef 1, no discount)."""

    def kernel(s: int, e: int, logits_CV: torch.Tensor) -> Any:
        logp_s = _log_softmax_(logits_CV)
        t_C1 = targets_N[s:e, None]
        est_C = logp_s.gather(1, t_C1).squeeze(1) - token_logp_N[s:e].to(logp_s.dtype)
        grad = logp_s.exp_()
        grad.scatter_add_(1, t_C1, torch.full_like(t_C1, -1.0, dtype=grad.dtype))
        return est_C, grad.mul_(-est_C[:, None]), {"reverse_kl": est_C}

    return kernel
