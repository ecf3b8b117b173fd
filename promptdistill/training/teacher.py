"""The teacher's next-token distribution, in process, for `kd` and `onpolicy` (issue #13).

When the teacher is the student's own base model (the embedded default: SmolLM2 with the
persona's system prompt), its exact distribution is one forward pass away: the loaded student
with its LoRA adapter switched off (PEFT `disable_adapter()`), given the system prompt. No
server and no second copy of the weights. Another local model that shares the student's
tokenizer works the same way (`--teacher-model PATH`).

The system prompt is the same for every example, so its key/value cache is computed once and
reused: a teacher forward costs only the user and answer tokens (Beethoven's ~960-token prompt
would otherwise cost more than the rest of the example). The teacher is frozen, so its hidden
states at an example's answer positions are kept (up to a memory budget) and reused in later
epochs. What the loss needs is those hidden states and the teacher's LM head: the objective
forms the logits chunk by chunk (training/kl.py), never as a (tokens x vocab) tensor.

Rendering: the student's example has no system prompt (SmolLM2's template injects its default
one); the teacher's has the persona's. Both render every turn by concatenation, so they share
everything after the system block: teacher tokens = prefix + student tokens[skip:], with the
prefix and `skip` found once on a probe conversation and checked.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch

from promptdistill.core.errors import UserError
from promptdistill.models.chat import Renderer
from promptdistill.models.prefix import run_prefix
from promptdistill.training.batching import Batch, TeacherTargets

CACHE_BYTES = 2 << 30  # hidden states kept for reuse across epochs, at most


def shared_suffix(renderer: Renderer, system_prompt: str) -> tuple[list[int], int]:
    """(teacher prefix, skip): teacher tokens = prefix + student tokens[skip:], for every
    conversation, so that the answer tokens and their positions line up."""
    probe = [
        {"role": "user", "content": "How are you today?"},
        {"role": "assistant", "content": "Very well, thank you."},
    ]
    student = renderer.tokens(probe, False)
    teacher = renderer.tokens([{"role": "system", "content": system_prompt}, *probe], False)
    common = 0
    while common < min(len(student), len(teacher)) and student[-1 - common] == teacher[-1 - common]:
        common += 1
    answer = len(student) - len(renderer.prompt(probe[:1]))
    if common <= answer:
        raise UserError(
            "the student's chat template renders the conversation differently with and without "
            "a system prompt, so the teacher's distribution cannot be lined up with the "
            "student's answer tokens; use --objective sft, or a ChatML-style student"
        )
    return teacher[: len(teacher) - common], len(student) - common


class InProcessTeacher:
    """The teacher's last hidden states at a batch's loss positions, and its LM head."""

    def __init__(
        self,
        decoder: Any,
        head_VH: torch.Tensor,
        renderer: Renderer,
        system_prompt: str,
        adapter_off: Callable[[], AbstractContextManager[Any]],
        compute: Callable[[], AbstractContextManager[Any]],
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.decoder, self.head_VH = decoder, head_VH
        self.adapter_off, self.compute = adapter_off, compute
        self.prefix, self.skip = shared_suffix(renderer, system_prompt)
        self.cache_bytes = cache_bytes
        self._cache: dict[str, torch.Tensor] = {}
        self._cached_bytes = 0
        self.forward_s = 0.0  # time spent in teacher forwards (the cost of kd over sft)
        with torch.no_grad(), self.adapter_off(), self.compute():
            self._prefix = run_prefix(decoder, self.prefix, head_VH.device)

    def targets(self, batch: Batch) -> TeacherTargets:
        """The teacher's view of `batch` (its hidden states, in loss-position order)."""
        rows_N = batch.rows_N.tolist()
        counts = [0] * len(batch.examples)
        for r in rows_N:
            counts[r] += 1
        missing = [
            r
            for r in range(len(batch.examples))
            if batch.onpolicy or batch.ids[r] not in self._cache
        ]
        computed = self._hidden(batch, missing) if missing else {}
        parts = []
        for r in range(len(batch.examples)):
            h = computed[r] if r in computed else self._cache[batch.ids[r]]
            if len(h) != counts[r]:
                raise RuntimeError(f"teacher positions of {batch.ids[r]} do not match")
            parts.append(h)
            if r in computed and not batch.onpolicy:
                self._keep(batch.ids[r], h)
        return TeacherTargets(hidden_NH=torch.cat(parts), head_VH=self.head_VH)

    def _keep(self, example_id: str, h: torch.Tensor) -> None:
        size = h.numel() * h.element_size()
        if self._cached_bytes + size <= self.cache_bytes:
            self._cache[example_id] = h
            self._cached_bytes += size

    def _hidden(self, batch: Batch, rows: list[int]) -> dict[int, torch.Tensor]:
        """Teacher forward over `rows` of the batch: prefix (cached) + each example after
        `skip`; the hidden states at each row's loss positions."""
        import time

        t0 = time.perf_counter()
        device = self.head_VH.device
        inputs = [batch.examples[r][0][self.skip : -1] for r in rows]
        width = max(len(x) for x in inputs)
        ids_BT = torch.zeros((len(rows), width), dtype=torch.long)
        for i, x in enumerate(inputs):  # right padding, no mask: causal attention ignores it
            ids_BT[i, : len(x)] = torch.from_numpy(x.astype("int64"))
        cache = self._prefix.cache(len(rows))
        with torch.no_grad(), self.adapter_off(), self.compute():
            out = self.decoder(input_ids=ids_BT.to(device), cache=cache, use_cache=True)
        hidden_BTH = out.last_hidden_state
        rows_N, cols_N = batch.rows_N.to(device), batch.cols_N.to(device)
        result = {}
        for i, r in enumerate(rows):
            cols = cols_N[rows_N == r] - self.skip
            if len(cols) and int(cols.min()) < 0:
                raise RuntimeError("a loss position lies in the teacher's system prompt")
            result[r] = hidden_BTH[i].index_select(0, cols).detach()
        self.forward_s += time.perf_counter() - t0
        return result
