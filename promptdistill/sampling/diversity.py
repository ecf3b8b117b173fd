"""How varied a set of prompts is, and which are near duplicates (issue #14).

- distinct-2 (Li et al. 2016, arXiv 1510.03055): distinct word bigrams over all bigrams, pooled
  over the set; 1.0 means no bigram repeats anywhere.
- mean pairwise similarity: the mean cosine similarity of every pair's MiniLM embeddings
  (models/embed.py); lower is more varied. With unit vectors it is (|sum e|^2 - n) / (n(n-1)),
  so it costs one pass, not n^2 dot products.
- near duplicates: kept greedily in order, a prompt is dropped when its cosine similarity to a
  prompt already kept reaches the threshold. In order, so the kept prompts of a longer list
  start with those of a shorter one (prefix-stable, like template expansion).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

WORD = re.compile(r"\w+|[^\w\s]")


def normalized(text: str) -> str:
    """The form two prompts must share to be exact duplicates: case and spacing ignored."""
    return " ".join(text.casefold().split())


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct word n-grams over all word n-grams of `texts` (lower-cased)."""
    grams: list[tuple[str, ...]] = []
    for t in texts:
        words = WORD.findall(t.lower())
        grams += [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_pairwise_cosine(emb_ND: Any) -> float:
    """The mean cosine similarity over all pairs of rows (rows are unit vectors)."""
    n = int(emb_ND.shape[0])
    if n < 2:
        return 0.0
    total_D = emb_ND.double().sum(0)
    return float(((total_D @ total_D) - n) / (n * (n - 1)))


def keep_distinct(emb_ND: Any, threshold: float, block: int = 256) -> list[int]:
    """Indices of the rows kept, in order: a row whose cosine similarity to a kept row is at
    least `threshold` is a near duplicate."""
    import torch

    kept: list[int] = []
    kept_KD = emb_ND.new_zeros((0, emb_ND.shape[1]))
    for start in range(0, int(emb_ND.shape[0]), block):
        rows_BD = emb_ND[start : start + block]
        # similarity to everything kept before this block, at once
        before_B = (
            (rows_BD @ kept_KD.T).max(1).values
            if len(kept)
            else torch.full((rows_BD.shape[0],), -1.0)
        )
        inside_BB = rows_BD @ rows_BD.T
        block_kept: list[int] = []
        for i in range(rows_BD.shape[0]):
            if before_B[i] >= threshold:
                continue
            if any(inside_BB[i, j] >= threshold for j in block_kept):
                continue
            block_kept.append(i)
        kept += [start + i for i in block_kept]
        kept_KD = torch.cat([kept_KD, rows_BD[block_kept]])
    return kept
