"""A token prefix shared by many sequences (a persona's system prompt), run once.

Beethoven's system prompt is ~920 tokens; a held-out answer with its user turn is ~150. Every
sequence the teacher sees starts with the same prompt, so its keys and values are computed once
and every batch attends to them: a forward then costs only the tokens after the prefix (issue
#13; the same trick as vLLM's prefix caching). Used by the in-process teacher in training and in
sampling, by eval's with-prompt scoring and by eval's teacher latency.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, kw_only=True)
class Prefix:
    tokens: list[int]
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (1, heads, P, dim)

    def __len__(self) -> int:
        return len(self.tokens)

    def cache(self, rows: int) -> Any:
        """A fresh DynamicCache holding the prefix for `rows` rows. The forward appends to it,
        so every batch gets its own; the prefix itself is a broadcast view, not a copy."""
        from transformers import DynamicCache

        return DynamicCache(
            ddp_cache_data=[
                (k.expand(rows, *k.shape[1:]), v.expand(rows, *v.shape[1:])) for k, v in self.kv
            ]
        )


def run_prefix(decoder: Any, tokens: Sequence[int], device: torch.device | str) -> Prefix:
    """Run `decoder` (a *Model, or a *ForCausalLM) over `tokens` once and keep its cache. The
    caller sets the context: no_grad, an adapter switched off, autocast."""
    out = decoder(
        input_ids=torch.tensor([list(tokens)], dtype=torch.long, device=device), use_cache=True
    )
    kv = [(k.detach(), v.detach()) for k, v, *_ in out.cache]
    return Prefix(tokens=list(tokens), kv=kv)


def system_prefix(model: Any, renderer: Any, system: str) -> Prefix | None:
    """The run of the tokens that every conversation with this system prompt starts with, as
    `renderer` (models/chat.py) renders it: the shared start of two probe conversations.
    None without a system prompt. The caller sets the context, as for `run_prefix`."""
    if not system:
        return None
    probes = [
        renderer.prompt([{"role": "system", "content": system}, {"role": "user", "content": u}])
        for u in ("a", "b")
    ]
    tokens = probes[0][: _shared_length(probes)]
    return run_prefix(model, tokens, next(model.parameters()).device)


def starts_all(prefix: Prefix, prompts: Sequence[Sequence[int]]) -> bool:
    """Whether every prompt starts with the prefix and goes on after it (a tokenizer that
    merges tokens across the boundary would break this: then run the prompts whole)."""
    P = len(prefix)
    return all(len(p) > P and list(p[:P]) == prefix.tokens for p in prompts)


def _shared_length(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all prompts share."""
    first = prompts[0]
    n = min(len(p) for p in prompts)
    for p in prompts[1:]:
        k = 0
        while k < n and p[k] == first[k]:
            k += 1
        n = k
    return n


def common_prefix(examples: Sequence[tuple[Sequence[int], Sequence[float]]]) -> int:
    """How many leading tokens all (tokens, weights) examples share and none is scored on.

    `weights[t]` weighs the prediction of token t from the hidden state at t - 1, so the last
    prefix position must come before every example's first weighted one."""
    if not examples:
        return 0
    first = list(examples[0][0])
    n = len(first)
    for tokens, weights in examples:
        n = min(n, len(tokens))
        scored = next((t for t, w in enumerate(weights) if w), len(tokens))
        n = min(n, scored - 1)
        k = 0
        while k < n and tokens[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)
