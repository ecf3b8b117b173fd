"""Model-side work for `promptdistill eval`: batched NLL scoring, batched generation, latency.

- NLL: sequences are sorted by length and packed into batches under a token budget (right
  padding), and the LM head runs only on the answer positions, chunk by chunk (the Liger /
  chunked-CE idea done by hand on CPU: with a 49k vocabulary the full logits of a batch cost more
  than the whole decoder).
- Generation: length-sorted batches with *left* padding, so every row's next token sits in the
  last column; greedy or sampled with a seed.
- Latency: one request at a time through `generate` with a streamer that timestamps the first
  new token (time to first token) and the end; the endpoint side streams SSE over aiohttp.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# --------------------------------------------------------------------------- helpers


def _decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The transformer trunk and the LM head of a causal LM (PEFT-wrapped or not)."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return lm.get_decoder(), lm.get_output_embeddings()


def model_device(model: Any) -> Any:
    return next(model.parameters()).device


def _token_batches(lengths: Sequence[int], batch_tokens: int, max_rows: int) -> Iterator[list[int]]:
    """Indices sorted by length (longest first), grouped so rows × longest <= batch_tokens."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batch: list[int] = []
    for i in order:
        longest = lengths[batch[0]] if batch else lengths[i]
        if batch and ((len(batch) + 1) * longest > batch_tokens or len(batch) >= max_rows):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


# --------------------------------------------------------------------------- NLL


@dataclass(frozen=True)
class ScoredText:
    nll_sum: float  # nats, summed over the answer tokens
    tokens: int


def score_nll(
    model: Any,
    examples: Sequence[tuple[Sequence[int], Sequence[float]]],
    pad_id: int,
    batch_tokens: int = 8192,
    max_rows: int = 32,
    head_chunk: int = 1024,
) -> list[ScoredText]:
    """Weighted NLL of each example. An example is (tokens, weights) as in a training datum:
    `weights[t]` is the weight of predicting `tokens[t]` from the tokens before it."""
    import torch

    device = model_device(model)
    decoder, head = _decoder_and_head(model)
    lengths = [len(t) for t, _ in examples]
    out: list[ScoredText | None] = [None] * len(examples)
    with torch.inference_mode():
        for batch in _token_batches(lengths, batch_tokens, max_rows):
            T = max(lengths[i] for i in batch)
            ids_BT = torch.full((len(batch), T), pad_id, dtype=torch.long)
            attn_BT = torch.zeros((len(batch), T), dtype=torch.long)
            weights_BT = torch.zeros((len(batch), T), dtype=torch.float32)
            for r, i in enumerate(batch):  # right padding: answers never move
                toks, w = examples[i]
                ids_BT[r, : len(toks)] = torch.tensor(list(toks))
                attn_BT[r, : len(toks)] = 1
                weights_BT[r, : len(toks)] = torch.tensor(list(w), dtype=torch.float32)
            ids_BT, attn_BT = ids_BT.to(device), attn_BT.to(device)
            weights_BT = weights_BT.to(device)
            hidden_BTD = decoder(input_ids=ids_BT, attention_mask=attn_BT).last_hidden_state
            # position t predicts token t+1: the LM head runs only where that token has weight
            w_BT = weights_BT[:, 1:]
            pick_BT = w_BT > 0
            rows_N = pick_BT.nonzero()[:, 0]
            hidden_ND = hidden_BTD[:, :-1][pick_BT]
            targets_N = ids_BT[:, 1:][pick_BT]
            nll_N = torch.empty(len(targets_N), dtype=torch.float32, device=device)
            for s in range(0, len(targets_N), head_chunk):
                logits_CV = head(hidden_ND[s : s + head_chunk]).float()
                nll_N[s : s + head_chunk] = torch.nn.functional.cross_entropy(
                    logits_CV, targets_N[s : s + head_chunk], reduction="none"
                )
            sums_B = torch.zeros(len(batch), dtype=torch.float64, device=device)
            sums_B.index_add_(0, rows_N, (nll_N * w_BT[pick_BT]).double())
            counts_B = w_BT.sum(1)
            for r, i in enumerate(batch):
                out[i] = ScoredText(float(sums_B[r]), int(round(float(counts_B[r]))))
    return [o for o in out if o is not None]


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class Generated:
    text: str
    tokens: int
    finish_reason: str  # "stop" (end of turn) or "length"


def generate_batched(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[Generated]:
    """Answer each prompt (token ids of a rendered chat ending in the assistant header)."""
    import torch

    device = model_device(model)
    stop = set(stop_ids)
    out: list[Generated | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    # equal-sized batches: 40 prompts at batch_size 32 run as 2 x 20, not 32 + 8 (a batch costs
    # about as many decode steps whatever its size, so a small last batch wastes a whole pass)
    n_batches = -(-len(order) // batch_size) if order else 0
    size = -(-len(order) // n_batches) if n_batches else 1
    with torch.inference_mode():
        for b, start in enumerate(range(0, len(order), size)):
            batch = order[start : start + size]
            T = max(len(prompts[i]) for i in batch)
            ids_BT = torch.full((len(batch), T), pad_id, dtype=torch.long)
            attn_BT = torch.zeros((len(batch), T), dtype=torch.long)
            for r, i in enumerate(batch):  # left padding
                p = prompts[i]
                ids_BT[r, T - len(p) :] = torch.tensor(list(p))
                attn_BT[r, T - len(p) :] = 1
            kwargs: dict[str, Any] = {
                "max_new_tokens": max_new_tokens,
                "do_sample": sample,
                "pad_token_id": pad_id,
                "eos_token_id": list(stop_ids),
            }
            if sample:
                kwargs.update(temperature=max(temperature, 1e-5), top_p=top_p, top_k=0)
                torch.manual_seed(seed * 100_003 + b)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            seqs_BS = model.generate(
                input_ids=ids_BT.to(device), attention_mask=attn_BT.to(device), **kwargs
            )
            new_BN = seqs_BS[:, T:].tolist()
            for r, i in enumerate(batch):
                toks = new_BN[r]
                cut = next((k for k, t in enumerate(toks) if t in stop), None)
                finish = "stop" if cut is not None else "length"
                toks = toks[:cut] if cut is not None else [t for t in toks if t != pad_id]
                text = tokenizer.decode(toks, skip_special_tokens=True).strip()
                out[i] = Generated(text, len(toks) + (cut is not None), finish)
            if on_batch is not None:
                on_batch(len(batch))
    return [o for o in out if o is not None]


# --------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class Timing:
    ttft_s: float | None
    total_s: float
    tokens: int


class _Clock:
    """A generate() streamer: the first put() is the prompt, the next ones are new tokens."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.first: float | None = None
        self.end_time: float | None = None
        self._puts = 0
        self.tokens = 0

    def put(self, value: Any) -> None:
        self._puts += 1
        if self._puts == 1:
            return
        if self.first is None:
            self.first = time.perf_counter()
        self.tokens += int(value.numel())

    def end(self) -> None:
        self.end_time = time.perf_counter()


def time_local(
    model: Any,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    temperature: float,
    top_p: float,
    seed: int = 0,
) -> list[Timing]:
    """One request at a time (batch 1), as a user of a local model sees it. A first,
    untimed request warms up kernels and allocator; it is not counted."""
    import torch

    device = model_device(model)
    timings = []
    with torch.inference_mode():
        for k, p in enumerate([prompts[0], *prompts] if prompts else []):
            clock = _Clock()
            torch.manual_seed(seed + k)
            model.generate(
                input_ids=torch.tensor([list(p)], device=device),
                attention_mask=torch.ones((1, len(p)), dtype=torch.long, device=device),
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=max(temperature, 1e-5) if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None,
                top_k=0 if temperature > 0 else None,
                pad_token_id=pad_id,
                eos_token_id=list(stop_ids),
                streamer=clock,
            )
            if k == 0:
                continue
            end = clock.end_time or time.perf_counter()
            ttft = None if clock.first is None else clock.first - clock.start
            timings.append(Timing(ttft, end - clock.start, clock.tokens))
    return timings


async def _stream_one(
    session: Any, url: str, body: dict[str, Any], count_tokens: Callable[[str], int]
) -> Timing:
    start = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    usage_tokens: int | None = None
    async with session.post(url, data=orjson.dumps(body)) as resp:
        if resp.status != 200:
            detail = (await resp.read())[:200].decode("utf-8", "replace")
            raise RuntimeError(f"HTTP {resp.status}: {' '.join(detail.split())}")
        buffer = b""
        async for chunk in resp.content.iter_any():
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    continue
                try:
                    event = orjson.loads(data)
                except orjson.JSONDecodeError:
                    continue
                if event.get("usage"):
                    usage_tokens = event["usage"].get("completion_tokens", usage_tokens)
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        if first is None:
                            first = time.perf_counter()
                        text.append(piece)
    total = time.perf_counter() - start
    tokens = usage_tokens if usage_tokens is not None else count_tokens("".join(text))
    return Timing(None if first is None else first - start, total, tokens)


async def time_endpoint_async(
    base_url: str,
    api_key: str | None,
    model: str,
    conversations: Sequence[list[dict[str, str]]],
    max_tokens: int,
    temperature: float,
    top_p: float,
    count_tokens: Callable[[str], int],
    timeout_s: float = 300.0,
) -> list[Timing]:
    """Stream each conversation from an OpenAI-compatible endpoint, one at a time; the first
    (untimed) request opens the connection. Completion tokens come from the stream's usage
    record when the server sends one, else from counting the text with the student's tokenizer."""
    import aiohttp

    from promptdistill.teacher.transport import normalize_base_url

    url = normalize_base_url(base_url) + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    timings = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        for k, messages in enumerate([conversations[0], *conversations] if conversations else []):
            body = {
                "model": model,
                "messages": messages,
                "max_tokens": max_tokens,
                "temperature": temperature,
                "top_p": top_p,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            t = await _stream_one(session, url, body, count_tokens)
            if k > 0:
                timings.append(t)
    return timings


def time_endpoint(*args: Any, **kwargs: Any) -> list[Timing]:
    return asyncio.run(time_endpoint_async(*args, **kwargs))
