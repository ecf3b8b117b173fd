"""The one local generation engine: token ids in, token ids out, batched.

Every local answer goes through `generate`: the student's and the base's answers in eval, the
REPL's streamed answers (a batch of one, with `on_step` and `should_stop`), and the student's
own answers for on-policy training. Like nanochat's engine, it knows nothing about chat
templates or text: callers render prompts and decode answers (models/chat.py).

- Batches are length-sorted, left-padded and equal-sized: 40 prompts at batch_size 32 run as
  2 x 20, not 32 + 8 (a batch costs about as many decode steps whatever its size, so a small
  last batch wastes a whole pass).
- Sampling (temperature, top-p) draws from a private, seeded `torch.Generator` per batch, not
  torch's global RNG: two models answering in two threads (the REPL's student and base) then
  cannot disturb each other's draws, and a seed reproduces an answer.
- A `prefix` that every prompt starts with (the teacher's system prompt, models/prefix.py) is
  not run again: each batch starts from its cached keys and values, and a row is laid out as
  prefix | left padding | the rest, so the padding stays masked wherever it sits. With
  Beethoven's 946-token prompt this doubles the teacher's generated tokens/s (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from promptdistill.models.prefix import Prefix


@dataclass(frozen=True, kw_only=True)
class Generated:
    tokens: list[int]  # the answer, its end-of-turn token included when it stopped
    finish_reason: str  # "stop" (an end-of-turn token) or "length" (max_new_tokens)

    @property
    def answer_tokens(self) -> list[int]:
        """The answer without its end-of-turn token."""
        return self.tokens[:-1] if self.finish_reason == "stop" else self.tokens


NUCLEUS_K = 256  # top-p sampling looks for the nucleus among this many tokens first

# on_step(row, token) for every new token of every unfinished row; should_stop() -> bool
OnStep = Callable[[int, int], None]


def generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = 0,
    batch_size: int = 16,
    suppress_ids: Sequence[int] = (),
    on_step: OnStep | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_batch: Callable[[int], None] | None = None,
    prefix: Prefix | None = None,
) -> list[Generated]:
    """Answer each prompt (token ids ending in the assistant header). temperature 0: greedy.
    `seed` None draws a fresh seed. `suppress_ids` are never generated (special tokens other
    than the end of turn, for answers that must read back as text). `on_step` rows are indices
    into `prompts`. `prefix`: tokens that every prompt starts with, already run (its cache)."""
    import torch

    device = next(model.parameters()).device
    stop = set(int(i) for i in stop_ids)
    out: list[Generated | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    n_batches = -(-len(order) // batch_size) if order else 0
    size = -(-len(order) // n_batches) if n_batches else 1
    with torch.inference_mode():
        for b, start in enumerate(range(0, len(order), size)):
            batch = order[start : start + size]
            ids_BT, attn_BT = _layout([prompts[i] for i in batch], pad_id, prefix)
            T = ids_BT.shape[1]
            processors = []
            if temperature > 0:
                processors.append(_seeded_sampler(temperature, top_p, _batch_seed(seed, b)))
            watch = _watch(T, batch, stop, on_step, should_stop)
            seqs_BS = model.generate(
                input_ids=ids_BT.to(device),
                attention_mask=attn_BT.to(device),
                generation_config=_config(model, max_new_tokens, stop_ids, pad_id, suppress_ids),
                logits_processor=processors,
                stopping_criteria=[watch],
                cache=prefix.cache(len(batch)) if prefix is not None else None,
            )
            for r, i in enumerate(batch):
                toks = seqs_BS[r, T:].tolist()
                cut = next((k for k, t in enumerate(toks) if t in stop), None)
                if cut is not None:
                    out[i] = Generated(tokens=toks[: cut + 1], finish_reason="stop")
                else:  # pads after the row ended early for another reason (should_stop)
                    toks = toks[: watch.lengths[r]]
                    reason = "length" if len(toks) >= max_new_tokens else "stopped"
                    out[i] = Generated(tokens=toks, finish_reason=reason)
            if on_batch is not None:
                on_batch(len(batch))
    return [o for o in out if o is not None]


def _layout(
    prompts: Sequence[Sequence[int]], pad_id: int, prefix: Prefix | None
) -> tuple[Any, Any]:
    """Token ids and attention mask (B, T), left-padded so every row's next token is last;
    with a prefix: prefix | padding | the rest of the prompt."""
    import torch

    P = len(prefix) if prefix is not None else 0
    if prefix is not None and any(list(p[:P]) != prefix.tokens or len(p) <= P for p in prompts):
        raise ValueError("every prompt must start with the prefix and go on after it")
    rests = [p[P:] for p in prompts]
    T = P + max(len(r) for r in rests)
    ids_BT = torch.full((len(rests), T), pad_id, dtype=torch.long)
    attn_BT = torch.zeros((len(rests), T), dtype=torch.long)
    if prefix is not None:
        ids_BT[:, :P] = torch.tensor(prefix.tokens, dtype=torch.long)
        attn_BT[:, :P] = 1
    for r, rest in enumerate(rests):
        ids_BT[r, T - len(rest) :] = torch.tensor(list(rest), dtype=torch.long)
        attn_BT[r, T - len(rest) :] = 1
    return ids_BT, attn_BT


def _batch_seed(seed: int | None, batch: int) -> int | None:
    return None if seed is None else seed * 100_003 + batch


def _config(
    model: Any,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    suppress_ids: Sequence[int] = (),
) -> Any:
    """A fresh GenerationConfig: greedy over the scores our sampler leaves (the model's own
    generation_config may say do_sample=True, see models/resolve.py)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=[int(i) for i in stop_ids] or None,
        pad_token_id=pad_id,
        bos_token_id=model.generation_config.bos_token_id,
        suppress_tokens=[int(i) for i in suppress_ids] or None,
    )


def _watch(
    prompt_len: int,
    rows: list[int],
    stop: set[int],
    on_step: OnStep | None,
    should_stop: Callable[[], bool] | None,
) -> Any:
    import torch
    from transformers import StoppingCriteria

    class Watch(StoppingCriteria):
        """Called once per new token: reports it, counts each row's tokens, stops on demand."""

        def __init__(self) -> None:
            self.lengths = [0] * len(rows)
            self.ended = [False] * len(rows)

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            last = input_ids[:, -1].tolist()
            for r, token in enumerate(last):
                if self.ended[r]:
                    continue
                self.lengths[r] += 1
                self.ended[r] = token in stop
                if on_step is not None:
                    on_step(rows[r], int(token))
            halt = should_stop is not None and should_stop()
            return torch.full((input_ids.shape[0],), halt, dtype=torch.bool)

    return Watch()


def _seeded_sampler(temperature: float, top_p: float, seed: int | None) -> Any:
    import torch
    from transformers import LogitsProcessor

    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)

    class SeededSampler(LogitsProcessor):
        """Temperature + top-p sampling with a private generator, returned as one-hot scores
        that greedy decoding then picks (see the module docstring).

        The nucleus is looked for among the `NUCLEUS_K` most likely tokens (a sort of the whole
        vocabulary took half the decode time on CPU); a row whose nucleus is larger than
        that is sorted in full, so the draw is exact either way."""

        def __call__(self, input_ids: Any, scores_BV: Any) -> Any:
            probs_BV = torch.softmax(scores_BV.float() / temperature, dim=-1)
            if top_p < 1.0:
                k = min(NUCLEUS_K, probs_BV.shape[-1])
                top_BK, ids_BK = probs_BV.topk(k, dim=-1)  # sorted, most likely first
                if bool((top_BK.sum(-1) < top_p).any()):
                    top_BK, ids_BK = probs_BV.sort(dim=-1, descending=True)
                outside_BK = top_BK.cumsum(dim=-1) - top_BK > top_p
                top_BK = top_BK.masked_fill(outside_BK, 0.0)
                pick_B1 = torch.multinomial(top_BK, 1, generator=generator)
                choice_B1 = ids_BK.gather(-1, pick_B1)
            else:
                choice_B1 = torch.multinomial(probs_BV, 1, generator=generator)
            onehot_BV = torch.full_like(scores_BV, float("-inf"))
            return onehot_BV.scatter(-1, choice_B1, 0.0)

    return SeededSampler()
