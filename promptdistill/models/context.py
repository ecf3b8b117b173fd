"""Does a system prompt fit in a model's context? (issue #16)

The student is trained without the system prompt, so training never needs it to fit. But the
model *with* the prompt does: the embedded local teacher answers with it, eval scores the
prompted model with it, and `--objective kd` / `onpolicy` run the student's base with it as the
in-process teacher. A prompt longer than that model's context is silently cut or refused there,
so `personas` and `sample` warn about it.

Counting needs the tokenizer, which costs a transformers import; a prompt of no more UTF-8
bytes than the context fits for sure (a byte-level BPE token is at least one byte), so the
common case costs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from promptdistill.core.errors import UserError
from promptdistill.models.resolve import EMBEDDED, cache_is_valid, models_dir

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")


def context_length(model: str) -> int | None:
    """The model's context in tokens, from its config.json; None if unknown. Only a model on
    this machine is looked at: a warning must never start a conversion or a download."""
    if model in EMBEDDED:
        folder = models_dir() / model
        if not cache_is_valid(folder):
            return None
    else:
        folder = Path(model).expanduser()
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    for key in _CONTEXT_KEYS:
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def overlong_prompt(
    text: str, model: str, count: Callable[[str], int] | None = None
) -> tuple[int, int] | None:
    """(tokens, context) when `text` is longer than `model`'s context, else None. `count`
    counts tokens (the model's tokenizer is loaded when it is needed and not given)."""
    size = len(text.encode("utf-8"))
    context = context_length(model) if size > 512 else None
    if context is None or size <= context:
        return None
    if count is None:
        from promptdistill.models.chat import Renderer
        from promptdistill.models.load import load_tokenizer

        try:
            count = Renderer(load_tokenizer(model)).count
        except UserError:
            return None
    tokens = count(text)
    return (tokens, context) if tokens > context else None


def overlong_warning(persona: str, text: str, model: str, role: str) -> str | None:
    """The warning line for `overlong_prompt`, naming the persona, the model and its role."""
    found = overlong_prompt(text, model)
    if found is None:
        return None
    tokens, context = found
    return (
        f"[yellow]warning:[/] the system prompt of persona '{persona}' is {tokens} tokens, longer "
        f"than the context of {model} ({context} tokens), the {role}: it cannot see all of it "
        "there; shorten the prompt or use a model with a longer context"
    )
