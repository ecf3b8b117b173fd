"""Stream one chat answer, token by token, from either kind of model `compare` puts side by side.

- `EndpointChat`: an OpenAI-compatible `/chat/completions` endpoint with `stream: true` (the
  teacher, *with* the persona's system prompt). Server-sent events are read with aiohttp, the
  transport the project measured fastest (docs/DEVELOPERS.md).
- `LocalChat`: a local Hugging Face causal LM (the student with its adapter, or the bare base
  model), *without* a system prompt. `generate` runs in a thread and hands text to the event loop
  through a streamer; a stopping criterion watches a flag so Ctrl-C stops it within one token.

Both fill an `Answer` in place while they stream, so a display can redraw it at any moment, and
both turn every failure into `Answer.error` instead of raising: one side failing must not stop
the other (issue #7). `answer_all` runs several sides at the same time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from promptdistill.config import SamplingParams
from promptdistill.store import redact, redact_url
from promptdistill.teacher.transport import chat_body, normalize_base_url

Message = dict[str, str]


# --------------------------------------------------------------------------- one answer


@dataclass
class Answer:
    """One side's answer to one prompt, with the numbers shown under its panel."""

    side: str  # "teacher", "student" or "base"
    title: str  # what the panel header says about the model
    text: str = ""
    error: str | None = None
    stopped: bool = False  # interrupted by the user
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens: int = 0
    tokens_exact: bool = True  # False: counted from stream chunks, the server sent no usage
    prompt_tokens: int | None = None
    prompt_tokens_exact: bool = True  # False: estimated with the student's tokenizer
    finish_reason: str | None = None

    @property
    def done(self) -> bool:
        return self.finished_at is not None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started

    @property
    def total_s(self) -> float:
        return (self.finished_at or time.perf_counter()) - self.started

    @property
    def tokens_per_s(self) -> float | None:
        """Decode speed: tokens after the first over the time after the first (as vLLM's TPOT)."""
        if self.first_token_at is None or self.tokens < 2:
            return None
        decode_s = (self.finished_at or time.perf_counter()) - self.first_token_at
        # below 10 ms the tokens arrived in one burst (one network read): no meaningful rate
        return (self.tokens - 1) / decode_s if decode_s > 0.01 else None

    def first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()

    def finish(self) -> None:
        if self.finished_at is None:
            self.finished_at = time.perf_counter()

    def record(self) -> dict[str, Any]:
        """The JSON form used by `--json` and `/save`."""
        ttft, tps = self.ttft_s, self.tokens_per_s
        return {
            "text": self.text,
            "error": self.error,
            "stopped": self.stopped,
            "finish_reason": self.finish_reason,
            "ttft_s": None if ttft is None else round(ttft, 4),
            "total_s": round(self.total_s, 4),
            "tokens": self.tokens,
            "tokens_exact": self.tokens_exact,
            "tokens_per_s": None if tps is None else round(tps, 2),
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_exact": self.prompt_tokens_exact,
        }


class Chat(Protocol):
    """Anything that can stream an answer to a conversation into an `Answer`."""

    async def answer(
        self, messages: Sequence[Message], sampling: SamplingParams, out: Answer
    ) -> None: ...


async def answer_all(
    jobs: Sequence[tuple[Chat, Sequence[Message], Answer]], sampling: SamplingParams
) -> None:
    """Run every side at the same time and wait for all of them.

    Cancelling this coroutine (Ctrl-C under `asyncio.Runner`) cancels every side; each side's own
    cleanup stops its generation before this returns, so nothing keeps running behind the prompt.
    """
    tasks = [asyncio.create_task(chat.answer(msgs, sampling, out)) for chat, msgs, out in jobs]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for _, _, out in jobs:
            if not out.done:
                out.stopped = True
                out.finish()


# --------------------------------------------------------------------------- endpoint (teacher)


class EndpointError(Exception):
    """A failure talking to the endpoint, already worded for the user and free of secrets."""


@dataclass
class EndpointChat:
    """Streams from `{base_url}/chat/completions`. The API key only ever goes into a header."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0
    count_prompt: Callable[[Sequence[Message]], int] | None = None  # estimate if no usage comes
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return normalize_base_url(self.base_url) + "/chat/completions"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        # One session per event loop, kept across turns: the connection stays alive between
        # prompts, so the second prompt's time to first token does not pay a new handshake.
        if self._session is None or self._session.closed:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=min(10.0, self.timeout_s), sock_read=self.timeout_s
            )
            self._session = aiohttp.ClientSession(timeout=timeout)
        return self._session

    def body(self, messages: Sequence[Message], sampling: SamplingParams) -> dict[str, Any]:
        # No `stream_options`: `transformers serve` rejects unknown fields with an error, and it
        # sends `usage` on the last chunk anyway; servers that do not are counted by chunk.
        body = chat_body(
            self.model,
            list(messages),
            sampling.temperature,
            sampling.top_p,
            sampling.max_tokens,
            sampling.seed,
        )
        body["stream"] = True
        return body

    async def answer(
        self, messages: Sequence[Message], sampling: SamplingParams, out: Answer
    ) -> None:
        out.started = time.perf_counter()
        if self.count_prompt is not None and out.prompt_tokens is None:
            out.prompt_tokens, out.prompt_tokens_exact = self.count_prompt(messages), False
        try:
            await self._stream(messages, sampling, out)
        except asyncio.CancelledError:
            out.stopped = True
            raise
        except EndpointError as e:
            out.error = str(e)
        except TimeoutError:
            out.error = f"teacher at {redact_url(self.url)} sent nothing for {self.timeout_s:g} s"
        except aiohttp.ClientConnectorError as e:
            out.error = f"cannot reach teacher at {redact_url(self.url)}: {e.strerror or e}"
        except aiohttp.ClientError as e:
            out.error = f"teacher at {redact_url(self.url)}: {type(e).__name__}: {e}"
        finally:
            out.finish()
            if out.error:
                out.error = redact(out.error, [self.api_key])

    async def _stream(
        self, messages: Sequence[Message], sampling: SamplingParams, out: Answer
    ) -> None:
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = orjson.dumps(self.body(messages, sampling))
        async with self._client().post(self.url, data=data, headers=headers) as resp:
            if resp.status != 200:
                raise EndpointError(await _http_error(resp, self.url))
            chunks, usage_seen = 0, False
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue  # blank separators, `: keep-alive` comments, `event:` lines
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    break
                try:
                    event = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    raise EndpointError(
                        f"teacher at {redact_url(self.url)} sent a malformed event: "
                        f"{payload[:120].decode('utf-8', 'replace')}"
                    ) from None
                if not isinstance(event, dict):
                    continue
                if "error" in event:  # mid-stream failure, e.g. `transformers serve`
                    raise EndpointError(f"teacher error mid-answer: {_error_text(event)}")
                for choice in event.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if text := delta.get("content"):
                        out.first_token()
                        out.text += text
                        chunks += 1
                    if reason := choice.get("finish_reason"):
                        out.finish_reason = reason
                if usage := event.get("usage"):
                    usage_seen = True
                    out.tokens, out.tokens_exact = int(usage.get("completion_tokens") or 0), True
                    if usage.get("prompt_tokens"):
                        out.prompt_tokens = int(usage["prompt_tokens"])
                        out.prompt_tokens_exact = True
                elif not usage_seen:
                    # most servers send one token per chunk; exact usage replaces this if it comes
                    out.tokens, out.tokens_exact = chunks, False


async def _http_error(resp: aiohttp.ClientResponse, url: str) -> str:
    text = (await resp.content.read(4096)).decode("utf-8", "replace")
    try:
        detail = _error_text(orjson.loads(text))
    except orjson.JSONDecodeError:
        detail = " ".join(text.split())[:300]
    hint = {
        401: "; check the API key (--api-key-env / --api-key-file)",
        403: "; check the API key (--api-key-env / --api-key-file)",
        404: "; check --base-url (it should end in /v1) and --model",
    }.get(resp.status, "")
    return (
        f"teacher at {redact_url(url)} answered HTTP {resp.status}: {detail or resp.reason}{hint}"
    )


def _error_text(body: Any) -> str:
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("message") or err)[:300]
        return str(err)[:300]
    return str(body)[:300]


# --------------------------------------------------------------------------- local model


class LocalChat:
    """A local causal LM answering a conversation, streamed from a `generate` thread.

    `render` turns messages into the prompt token ids exactly as training rendered them (the
    student must see the same template it was trained on, including the default system prompt
    SmolLM2's template injects when none is given).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        render: Callable[[Sequence[Message]], list[int]],
        stop_ids: Sequence[int] = (),
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.render = render
        # end-of-turn ids besides the model's EOS (e.g. ChatML's <|im_end|>)
        self.stop_ids = list(stop_ids)

    async def answer(
        self, messages: Sequence[Message], sampling: SamplingParams, out: Answer
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        out.started = time.perf_counter()
        try:
            ids = self.render(messages)
        except Exception as e:  # a template error belongs in this side's panel
            out.error = f"cannot render the conversation: {type(e).__name__}: {e}"
            out.finish()
            return
        out.prompt_tokens, out.prompt_tokens_exact = len(ids), True
        thread = threading.Thread(
            target=self._generate,
            args=(ids, sampling, out, stop, loop, queue),
            name=f"generate-{out.side}",
            daemon=True,
        )
        thread.start()
        try:
            while (item := await queue.get()) is not _END:
                if isinstance(item, BaseException):
                    out.error = f"{out.side} generation failed: {type(item).__name__}: {item}"
                    continue
                out.text += str(item)
        except asyncio.CancelledError:
            out.stopped = True
            raise
        finally:
            stop.set()  # the stopping criterion sees it before the next token
            await asyncio.shield(asyncio.to_thread(thread.join))
            out.finish()

    def warm_up(self) -> None:
        """Generate two tokens once, so the first real answer's time to first token measures
        the model, not one-off start-up costs (allocator, kernel selection: ~0.5 s on CPU)."""
        import torch

        ids = self.render([{"role": "user", "content": "Hi"}])
        with torch.inference_mode():
            input_ids_1T = torch.tensor([ids], dtype=torch.long, device=self.model.device)
            self.model.generate(
                input_ids=input_ids_1T,
                attention_mask=torch.ones_like(input_ids_1T),
                generation_config=self._generation_config(
                    SamplingParams.model_validate({"max_tokens": 2})
                ),
            )

    def _generate(
        self,
        ids: list[int],
        sampling: SamplingParams,
        out: Answer,
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
    ) -> None:
        import torch
        from transformers import LogitsProcessorList, StoppingCriteriaList

        def send(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        try:
            with torch.inference_mode():
                input_ids_1T = torch.tensor([ids], dtype=torch.long, device=self.model.device)
                self.model.generate(
                    input_ids=input_ids_1T,
                    attention_mask=torch.ones_like(input_ids_1T),
                    generation_config=self._generation_config(sampling),
                    logits_processor=LogitsProcessorList([_seeded_sampler(sampling)]),
                    stopping_criteria=StoppingCriteriaList([_watch(stop, len(ids), out)]),
                    streamer=_streamer(self.tokenizer, send),
                )
                if not stop.is_set():
                    out.finish_reason = "length" if out.tokens >= sampling.max_tokens else "stop"
        except BaseException as e:  # noqa: BLE001 - reported in this side's panel, not raised
            send(e)
        finally:
            send(_END)

    def _generation_config(self, sampling: SamplingParams) -> Any:
        from transformers import GenerationConfig

        # Greedy decoding over the seeded sampler's one-hot scores (see `_seeded_sampler`):
        # sampling happens in our processor with a private RNG, so `/seed` reproduces an answer
        # even while another model samples in the next thread.
        base = self.model.generation_config
        eos: list[int] = []
        for ids in (base.eos_token_id, self.tokenizer.eos_token_id, self.stop_ids):
            for i in ids if isinstance(ids, list | tuple) else [ids]:
                if i is not None and int(i) not in eos:
                    eos.append(int(i))
        pad = base.pad_token_id if base.pad_token_id is not None else self.tokenizer.pad_token_id
        return GenerationConfig(
            max_new_tokens=sampling.max_tokens,
            do_sample=False,
            eos_token_id=eos or None,
            pad_token_id=pad if pad is not None else (eos[0] if eos else None),
            bos_token_id=base.bos_token_id,
        )


_END = object()


def _streamer(tokenizer: Any, send: Callable[[object], None]) -> Any:
    from transformers import TextStreamer

    class QueueStreamer(TextStreamer):
        """TextStreamer that hands each finished piece of text to the event loop."""

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                send(text)

    return QueueStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _watch(stop: threading.Event, prompt_len: int, out: Answer) -> Any:
    import torch
    from transformers import StoppingCriteria

    class Watch(StoppingCriteria):
        """Called once per new token: counts tokens, stamps the first, and stops on the flag."""

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            out.first_token()
            out.tokens = int(input_ids.shape[1]) - prompt_len
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

    return Watch()


def _seeded_sampler(sampling: SamplingParams) -> Any:
    import torch
    from transformers import LogitsProcessor

    generator = torch.Generator()
    if sampling.seed is None:
        generator.seed()
    else:
        generator.manual_seed(sampling.seed)

    class SeededSampler(LogitsProcessor):
        """Temperature + top-p sampling with a private generator, returned as one-hot scores.

        `generate(do_sample=True)` draws from torch's global RNG, which the student and base
        threads would share; then a seed would not reproduce an answer.
        """

        def __call__(self, input_ids: Any, scores_BV: Any) -> Any:
            if sampling.temperature <= 0:
                return scores_BV  # greedy
            probs_BV = torch.softmax(scores_BV.float() / sampling.temperature, dim=-1)
            if sampling.top_p < 1.0:
                sorted_BV, order_BV = probs_BV.sort(dim=-1, descending=True)
                outside_BV = sorted_BV.cumsum(dim=-1) - sorted_BV > sampling.top_p
                sorted_BV = sorted_BV.masked_fill(outside_BV, 0.0)
                probs_BV = torch.zeros_like(probs_BV).scatter(-1, order_BV, sorted_BV)
            choice_B1 = torch.multinomial(probs_BV, 1, generator=generator)
            onehot_BV = torch.full_like(scores_BV, float("-inf"))
            return onehot_BV.scatter(-1, choice_B1, 0.0)

    return SeededSampler()
