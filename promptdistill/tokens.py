"""Token counting with a student model's tokenizer (cached per process)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=4)
def _tokenizer(model: str) -> Any:
    from promptdistill.models import load_tokenizer

    return load_tokenizer(model)


def count_tokens(text: str, model: str = "smollm2-135m") -> int:
    return len(_tokenizer(model)(text, add_special_tokens=False)["input_ids"])
