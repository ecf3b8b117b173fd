"""Stream one chat answer, token by token, from either kind of model `compare` puts side by side.

- `EndpointChat`: an OpenAI-compatible endpoint, streamed through the project's one client
  (clients/endpoint.py): the teacher, *with* the persona's system prompt.
- `LocalChat`: a local causal LM (the student with its adapter, the bare base model, or the
  embedded teacher: a base model *with* the system prompt, its cache run once) through the one
  generation engine (models/generate.py) in a thread; its `should_stop` watches a flag, so
  Ctrl-C stops it within one token.

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

from promptdistill.clients.endpoint import Transport, TransportError, chat_body
from promptdistill.core.config import SamplingParams
from promptdistill.core.redact import redact_url
from promptdistill.models.chat import Message, Renderer
from promptdistill.models.generate import generate

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

HINTS = {
    401: "; check the API key (--api-key-env / --api-key-file)",
    403: "; check the API key (--api-key-env / --api-key-file)",
    404: "; check --base-url (it should end in /v1) and --model",
}


@dataclass
class EndpointChat:
    """Streams from the teacher's endpoint. The API key only ever goes into a header."""

    transport: Transport
    model: str
    count_prompt: Callable[[Sequence[Message]], int] | None = None  # estimate if no usage comes

    async def close(self) -> None:
        await self.transport.close()

    def body(self, messages: Sequence[Message], sampling: SamplingParams) -> dict[str, Any]:
        # No `stream_options`: `transformers serve` rejects unknown fields with an error, and it
        # sends `usage` on the last chunk anyway; servers that do not are counted by chunk.
        return chat_body(
            self.model,
            list(messages),
            sampling.temperature,
            sampling.top_p,
            sampling.max_tokens,
            sampling.seed,
        )

    async def answer(
        self, messages: Sequence[Message], sampling: SamplingParams, out: Answer
    ) -> None:
        out.started = time.perf_counter()
        if self.count_prompt is not None and out.prompt_tokens is None:
            out.prompt_tokens, out.prompt_tokens_exact = self.count_prompt(messages), False
        chunks, usage_seen = 0, False
        try:
            async for delta in self.transport.stream(self.body(messages, sampling)):
                if delta.text:
                    out.first_token()
                    out.text += delta.text
                    chunks += 1
                out.finish_reason = delta.finish_reason or out.finish_reason
                if usage := delta.usage:
                    usage_seen = True
                    out.tokens, out.tokens_exact = int(usage.get("completion_tokens") or 0), True
                    if usage.get("prompt_tokens"):
                        out.prompt_tokens = int(usage["prompt_tokens"])
                        out.prompt_tokens_exact = True
                elif not usage_seen:
                    # most servers send one token per chunk; exact usage replaces this if it comes
                    out.tokens, out.tokens_exact = chunks, False
        except asyncio.CancelledError:
            out.stopped = True
            raise
        except TransportError as e:
            out.error = self._describe(e)
        finally:
            out.finish()

    def _describe(self, e: TransportError) -> str:
        """The error for the teacher's panel: an HTTP status as the server said it."""
        where = f"teacher at {redact_url(self.transport.url)}"
        if e.status is not None:
            hint = HINTS.get(e.status, "")
            return f"{where} answered HTTP {e.status}: {e.detail or 'no detail'}{hint}"
        return f"{where}: {e}"


# --------------------------------------------------------------------------- local model


class LocalChat:
    """A local causal LM answering a conversation, streamed from a generation thread.

    `renderer` turns messages into prompt token ids exactly as training rendered them (the
    student must see the same template it was trained on, including the default system prompt
    SmolLM2's template injects when none is given).
    """

    def __init__(self, model: Any, renderer: Renderer, system_prompt: str | None = None) -> None:
        """`system_prompt`: conversations that start with it reuse its keys and values, run
        once on first use (models/prefix.py), as the in-process teacher does in `sample`."""
        self.model = model
        self.renderer = renderer
        self.system_prompt = system_prompt
        self._prefix: Any = None

    async def answer(
        self, messages: Sequence[Message], sampling: SamplingParams, out: Answer
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        out.started = time.perf_counter()
        try:
            ids = self.renderer.prompt(messages)
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
            stop.set()  # the engine's should_stop sees it before the next token
            await asyncio.shield(asyncio.to_thread(thread.join))
            out.finish()

    def warm_up(self) -> None:
        """Generate two tokens once, so the first real answer's time to first token measures
        the model, not one-off start-up costs (allocator, kernel selection: ~0.5 s on CPU), and
        run the system prompt once, as a server with prefix caching would have it ready."""
        r = self.renderer
        if self.system_prompt:
            self._cached(r.prompt([{"role": "system", "content": self.system_prompt}]))
        generate(
            self.model, [r.prompt([{"role": "user", "content": "Hi"}])], max_new_tokens=2,
            stop_ids=r.stop_ids, pad_id=r.pad_id, batch_size=1,
        )  # fmt: skip

    def _generate(
        self,
        ids: list[int],
        sampling: SamplingParams,
        out: Answer,
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[object],
    ) -> None:
        def send(item: object) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        text = _TextStream(self.renderer, set(self.renderer.stop_ids))

        def on_step(_row: int, token: int) -> None:
            out.first_token()
            out.tokens += 1
            if piece := text.add(token):
                send(piece)

        try:
            result = generate(
                self.model, [ids], max_new_tokens=sampling.max_tokens,
                stop_ids=self.renderer.stop_ids, pad_id=self.renderer.pad_id,
                temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed,
                batch_size=1, on_step=on_step, should_stop=stop.is_set, prefix=self._cached(ids),
            )[0]  # fmt: skip
            if piece := text.flush():
                send(piece)
            if not stop.is_set():
                out.finish_reason = "length" if result.finish_reason == "length" else "stop"
        except BaseException as e:  # noqa: BLE001 - reported in this side's panel, not raised
            send(e)
        finally:
            send(_END)

    def _cached(self, ids: list[int]) -> Any:
        """The system prompt's cached run when `ids` starts with it, else None."""
        if not self.system_prompt:
            return None
        import torch

        from promptdistill.models.prefix import starts_all, system_prefix

        if self._prefix is None:
            with torch.inference_mode():
                self._prefix = system_prefix(self.model, self.renderer, self.system_prompt)
        return self._prefix if starts_all(self._prefix, [ids]) else None


_END = object()


class _TextStream:
    """Token ids in, text pieces out: the new text since the last piece, held back while the
    last token ends in an incomplete character (as transformers' TextStreamer does)."""

    def __init__(self, renderer: Renderer, stop_ids: set[int]) -> None:
        self.renderer, self.stop_ids = renderer, stop_ids
        self.tokens: list[int] = []
        self.sent = 0

    def add(self, token: int) -> str:
        if token in self.stop_ids:
            return ""
        self.tokens.append(token)
        text = self.renderer.decode(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        piece, self.sent = text[self.sent :], len(text)
        return piece

    def flush(self) -> str:
        text = self.renderer.decode(self.tokens)
        piece, self.sent = text[self.sent :], len(text)
        return piece
