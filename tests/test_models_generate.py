"""The one generation engine: batched answers equal one-at-a-time answers; seeds reproduce;
streaming callbacks and stopping."""

from __future__ import annotations

from typing import Any

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
