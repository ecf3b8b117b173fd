"""The one generation engine: batched answers equal one-at-a-time answers; seeds reproduce;
streaming callbacks and stopping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tiny import SYSTEM_PROMPT, USER_PROMPTS

from promptdistill.models.generate import generate


def test_batched_greedy_equals_one_at_a_time(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                tokenize=True, return_dict=False)
        for t in ("hello", "tell me about the symphony in vienna please", "why")
    ]  # fmt: skip
    stop = [tok.convert_tokens_to_ids("<|im_end|>")]
    kw = {"max_new_tokens": 6, "stop_ids": stop, "pad_id": tok.pad_token_id}
    together = generate(model, prompts, **kw)
    alone = [generate(model, [p], **kw)[0] for p in prompts]
    assert [g.tokens for g in together] == [g.tokens for g in alone]
    assert all(len(g.tokens) <= 6 for g in together)


def test_a_seed_reproduces_a_sampled_answer_and_streaming_sees_every_token(
    tiny: tuple[Any, Any],
) -> None:
    model, tok = tiny
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "hello world"}], add_generation_prompt=True,
        tokenize=True, return_dict=False,
    )  # fmt: skip
    kw = {"max_new_tokens": 8, "stop_ids": [], "pad_id": tok.pad_token_id, "temperature": 1.5}
    seen: list[int] = []
    a = generate(model, [prompt], seed=7, on_step=lambda _row, t: seen.append(t), **kw)[0]
    b = generate(model, [prompt], seed=7, **kw)[0]
    assert a.tokens == b.tokens == seen and len(a.tokens) == 8 and a.finish_reason == "length"
    draws = {tuple(generate(model, [prompt], seed=s, **kw)[0].tokens) for s in range(6)}
    assert len(draws) > 1  # sampling, not greedy


def test_should_stop_ends_generation_at_once(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "why"}], add_generation_prompt=True, tokenize=True,
        return_dict=False,
    )  # fmt: skip
    steps: list[int] = []
    out = generate(
        model, [prompt], max_new_tokens=50, stop_ids=[], pad_id=tok.pad_token_id,
        on_step=lambda _row, t: steps.append(t), should_stop=lambda: len(steps) >= 3,
    )[0]  # fmt: skip
    assert len(out.tokens) == 3 and out.finish_reason == "stopped"


def test_a_cached_prefix_gives_the_answers_of_the_whole_prompt(smollm2_dir: Path) -> None:
    """The teacher's system prompt run once (models/prefix.py) and rows laid out as prefix |
    padding | rest answer exactly as the whole prompts do, in one batch of uneven lengths.
    The real SmolLM2 in fp32: a random tiny model's answers hardly depend on the context."""
    import torch

    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_causal_lm, load_tokenizer
    from promptdistill.models.prefix import run_prefix

    model, renderer = load_causal_lm(smollm2_dir, "fp32"), Renderer(load_tokenizer(smollm2_dir))
    system = {"role": "system", "content": SYSTEM_PROMPT}
    prompts = [renderer.prompt([system, {"role": "user", "content": u}]) for u in USER_PROMPTS[:3]]
    shared = next(k for k in range(len(prompts[0])) if len({p[k] for p in prompts}) > 1)
    with torch.inference_mode():
        prefix = run_prefix(model, prompts[0][:shared], "cpu")
    kw = {"max_new_tokens": 10, "stop_ids": renderer.stop_ids, "pad_id": renderer.pad_id}
    whole = generate(model, prompts, **kw)
    assert len({tuple(g.tokens) for g in whole}) == 3  # the answers depend on the prompt
    assert [g.tokens for g in generate(model, prompts, prefix=prefix, **kw)] == [
        g.tokens for g in whole
    ]
