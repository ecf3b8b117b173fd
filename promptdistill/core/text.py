"""Answers that degenerate into a loop: the same word 4-gram three or more times.

One rule for the datums filter (datums/build.py: such teacher answers are not trained on) and
for eval's loop rates (`loop_rate_student`, `loop_rate_teacher`, `loop_rate_base`). A small
model that is fed loops learns to loop, and amplifies it: the demo's student answered
"1. 1. 1. 1. ..." where the teacher had answered in character (issue #13).
"""

from __future__ import annotations

from collections import Counter

LOOP_NGRAM = 4
LOOP_TIMES = 3


def loops(text: str, n: int = LOOP_NGRAM, times: int = LOOP_TIMES) -> bool:
    """True if some run of `n` words occurs `times` times or more (overlaps count)."""
    words = text.split()
    if len(words) < n + times - 1:
        return False
    counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    return max(counts.values()) >= times
