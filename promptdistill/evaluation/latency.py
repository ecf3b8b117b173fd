"""Single-stream latency, as one user of each model sees it: time to first token, total time,
tokens. The student locally through the generation engine (models/generate.py); the teacher
streamed from its endpoint through the one client (clients/endpoint.py), or, when it is the
embedded model, through the same engine in process with its system prompt's cache computed
once (as the in-process sampler and a server with prefix caching do). The first request of each
is an untimed warm-up (kernels, allocator, the connection)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from promptdistill.clients.endpoint import Transport, chat_body
from promptdistill.models.generate import generate

if TYPE_CHECKING:  # it imports torch
    from promptdistill.models.prefix import Prefix


@dataclass(frozen=True, kw_only=True)
class Timing:
    ttft_s: float | None
    total_s: float
    tokens: int


def time_local(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    temperature: float,
    top_p: float,
    seed: int = 0,
    prefix: Prefix | None = None,
) -> list[Timing]:
    """One request at a time (batch 1), as a user of a local model sees it. `prefix`: the
    already-run start that every prompt shares (the system prompt)."""
    timings = []
    for k, p in enumerate([prompts[0], *prompts] if prompts else []):
        first = _FirstToken()
        start = time.perf_counter()
        out = generate(
            model, [p], max_new_tokens=max_new_tokens, stop_ids=stop_ids, pad_id=pad_id,
            temperature=temperature, top_p=top_p, seed=seed + k, batch_size=1,
            on_step=first, prefix=prefix,
        )[0]  # fmt: skip
        total = time.perf_counter() - start
        if k > 0:
            ttft = first.at - start if first.at is not None else None
            timings.append(Timing(ttft_s=ttft, total_s=total, tokens=len(out.tokens)))
    return timings


class _FirstToken:
    """An `on_step` callback that notes when the first token came."""

    at: float | None = None

    def __call__(self, _row: int, _token: int) -> None:
        if self.at is None:
            self.at = time.perf_counter()


async def _time_one(
    transport: Transport, body: dict[str, Any], count: Callable[[str], int]
) -> Timing:
    start = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    usage_tokens: int | None = None
    async for delta in transport.stream(body):
        if delta.text:
            first = first or time.perf_counter()
            text.append(delta.text)
        if delta.usage.get("completion_tokens") is not None:
            usage_tokens = int(delta.usage["completion_tokens"])
    total = time.perf_counter() - start
    tokens = usage_tokens if usage_tokens is not None else count("".join(text))
    return Timing(ttft_s=None if first is None else first - start, total_s=total, tokens=tokens)


async def _time_endpoint(
    transport: Transport,
    model: str,
    conversations: Sequence[list[dict[str, str]]],
    max_tokens: int,
    temperature: float,
    top_p: float,
    count: Callable[[str], int],
) -> list[Timing]:
    timings = []
    async with transport:
        for k, messages in enumerate([conversations[0], *conversations] if conversations else []):
            body = chat_body(model, messages, temperature, top_p, max_tokens, None)
            body["stream_options"] = {"include_usage": True}
            t = await _time_one(transport, body, count)
            if k > 0:
                timings.append(t)
    return timings


def time_endpoint(
    base_url: str,
    api_key: str | None,
    model: str,
    conversations: Sequence[list[dict[str, str]]],
    *,
    max_tokens: int,
    temperature: float,
    top_p: float,
    count_tokens: Callable[[str], int],
    timeout_s: float = 300.0,
) -> list[Timing]:
    """Stream each conversation, one at a time. Completion tokens come from the stream's
    usage record when the server sends one, else from counting the text with `count_tokens`."""
    transport = Transport(base_url, api_key, concurrency=1, timeout_s=timeout_s)
    return asyncio.run(
        _time_endpoint(
            transport, model, conversations, max_tokens, temperature, top_p, count_tokens
        )
    )
