"""The embedded teacher, answering in this process: the sampling engine's client, batched.

`sample` with no `--base-url` asks the embedded model (SmolLM2 with the persona's system
prompt). It used to start `transformers serve` and send it HTTP requests; on 2 CPU cores that
served ~37 generated tokens/s at its best concurrency (4), and ~22 in the demo. Here the same
model answers through the one generation engine (models/generate.py) instead:

- requests that the engine's workers send at once are gathered into one batch (they share a
  system prompt, a temperature and an answer cap), up to `batch_size` rows;
- the system prompt is run once per persona and kept (models/prefix.py), so a batch computes
  only the user turns and the answers: with Beethoven's 946-token prompt that doubles the
  tokens/s, and 3.1x those of the server (docs/benchmarks.md, "In process instead of
  `transformers serve`");
- the engine sees an ordinary client (`chat(body) -> ChatResult`), so ids, exactly-once,
  resume, Ctrl-C and the summary are what they are for any endpoint.

The model runs in a worker thread (torch releases the GIL), one batch at a time; the event loop
stays free to write samples and draw the progress. `transformers serve` is still what `teacher
serve` starts, for other programs and for the REPL's streamed teacher (clients/local_server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from promptdistill.clients.answers import ChatResult, FatalError, PromptError, RetryableError
from promptdistill.models.chat import Message, Renderer
from promptdistill.models.generate import generate

if TYPE_CHECKING:  # torch is imported only once a teacher is loaded: `sample` from an endpoint
    from promptdistill.models.prefix import Prefix  # must not import it

# Rows per batch. A decode step costs about the same from 8 to 24 rows on 2 cores, so more rows
# buy tokens/s; past ~24 the per-row KV cache of a long system prompt (~22 MB each) makes it
# slower again (docs/benchmarks.md: 79 tok/s at 24 rows, 71 at 48).
BATCH_SIZE = 24
# After the first waiting request, how long to wait for more. The engine's workers send their
# next requests as soon as a batch's answers are written, which takes a few milliseconds.
GATHER_S = 0.05
PREFIXES_KEPT = 4  # distinct system prompts whose cache is kept (a persona has 1-3)


@dataclass(eq=False)
class _Request:
    messages: list[Message]
    temperature: float
    top_p: float
    max_tokens: int
    seed: int | None
    future: asyncio.Future[ChatResult]
    sent_at: float = field(default_factory=time.monotonic)

    @property
    def group(self) -> tuple[str, float, float, int]:
        """Requests that can share one batch: one system prompt and one sampling setting."""
        system = self.messages[0]["content"] if self.messages[0]["role"] == "system" else ""
        return system, self.temperature, self.top_p, self.max_tokens


class InProcessTeacher:
    """A loaded causal LM behind the engine's client interface (`chat`, `public_url`)."""

    public_url = "in process"

    def __init__(
        self, model: Any, renderer: Renderer, name: str, batch_size: int = BATCH_SIZE
    ) -> None:
        self.model = model
        self.renderer = renderer
        self.name = name
        self.batch_size = batch_size
        self.context = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self._waiting: list[_Request] = []
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = threading.Event()
        self._idle = threading.Event()  # no batch is being generated
        self._idle.set()
        self._prefixes: dict[str, Prefix] = {}  # by system prompt
        self.batches = 0  # generated so far
        self._current: list[_Request] = []  # the batch being generated

    async def __aenter__(self) -> InProcessTeacher:
        if self._task is None:
            self._arrived = asyncio.Event()
            self._stopping.clear()
            self._task = asyncio.create_task(self._serve())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop: a batch in progress ends at its next token; waiting requests are cancelled."""
        if self._task is None:
            return
        self._stopping.set()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await asyncio.to_thread(self._idle.wait)  # the batch's thread ends at its next token
        for r in self._waiting + self._current:
            r.future.cancel()
        self._waiting, self._current = [], []

    async def chat(self, body: dict[str, Any]) -> ChatResult:
        """Answer one chat completions request body (OpenAI's fields)."""
        if self._task is None or self._arrived is None:
            raise RuntimeError("InProcessTeacher is used outside `async with`")
        messages = [{"role": m["role"], "content": m["content"]} for m in body["messages"]]
        request = _Request(
            messages=messages,
            temperature=float(body.get("temperature", 1.0)),
            top_p=float(body.get("top_p", 1.0)),
            max_tokens=int(body.get("max_tokens") or 256),
            seed=body.get("seed"),
            future=asyncio.get_running_loop().create_future(),
        )
        self._waiting.append(request)
        self._arrived.set()
        return await request.future

    # ------------------------------------------------------------------ the batching loop

    async def _serve(self) -> None:
        assert self._arrived is not None
        while True:
            await self._arrived.wait()
            while len(self._waiting) < self.batch_size:  # gather what is about to arrive
                n = len(self._waiting)
                await asyncio.sleep(GATHER_S)
                if len(self._waiting) == n:
                    break
            self._arrived.clear()
            batch = self._take()
            if not batch:
                continue
            self._idle.clear()
            self._current = batch
            try:
                results = await asyncio.to_thread(self._answer, batch)
            except Exception as e:  # a model error is no prompt's fault: stop the run, say why
                error = FatalError(f"the in-process teacher ({self.name}) failed: {e}")
                for r in batch:
                    if not r.future.done():
                        r.future.set_exception(error)
                self._current = []
                continue
            self._current = []
            for r, result in zip(batch, results, strict=True):
                if not r.future.done():
                    if isinstance(result, BaseException):
                        r.future.set_exception(result)
                    else:
                        r.future.set_result(result)
            if self._waiting:
                self._arrived.set()

    def _take(self) -> list[_Request]:
        """The largest group of live waiting requests (the oldest first), up to a batch."""
        self._waiting = [r for r in self._waiting if not r.future.done()]
        if not self._waiting:
            return []
        groups: dict[tuple[str, float, float, int], list[_Request]] = {}
        for r in self._waiting:
            groups.setdefault(r.group, []).append(r)
        batch = max(groups.values(), key=len)[: self.batch_size]
        taken = set(map(id, batch))
        self._waiting = [r for r in self._waiting if id(r) not in taken]
        return batch

    # ------------------------------------------------------------------ in the worker thread

    def _answer(self, batch: list[_Request]) -> list[ChatResult | BaseException]:
        """Generate the batch's answers (runs in a worker thread)."""
        try:
            return self._generate(batch)
        finally:
            self._idle.set()

    def _generate(self, batch: list[_Request]) -> list[ChatResult | BaseException]:
        out: list[ChatResult | BaseException] = [
            PromptError("not answered", kind="refused") for _ in batch
        ]
        prompts: list[list[int]] = []
        rows: list[int] = []
        first = batch[0]
        for i, r in enumerate(batch):
            tokens = self.renderer.prompt(r.messages)
            if self.context and len(tokens) + r.max_tokens > self.context:
                out[i] = PromptError(
                    f"the prompt is {len(tokens)} tokens and max_tokens {r.max_tokens}; "
                    f"{self.name} reads at most {self.context}",
                    status=400,
                )
                continue
            prompts.append(tokens)
            rows.append(i)
        if not prompts:
            return out
        prefix = self._prefix(first.group[0], prompts)
        started = time.monotonic()
        self.batches += 1
        answers = generate(
            self.model,
            prompts,
            max_new_tokens=first.max_tokens,
            stop_ids=self.renderer.stop_ids,
            pad_id=self.renderer.pad_id,
            temperature=first.temperature,
            top_p=first.top_p,
            seed=_batch_seed([batch[i].seed for i in rows], self.batches),
            batch_size=len(prompts),
            suppress_ids=self.renderer.inner_special_ids,
            should_stop=lambda: self._stopping.is_set() or all(r.future.done() for r in batch),
            prefix=prefix,
        )
        latency = time.monotonic() - started
        for i, tokens, g in zip(rows, prompts, answers, strict=True):
            if g.finish_reason not in ("stop", "length"):  # stopped: the run is ending
                out[i] = RetryableError("the in-process teacher stopped", "dropped")
                continue
            usage = {"prompt_tokens": len(tokens), "completion_tokens": len(g.tokens)}
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
            out[i] = ChatResult(
                content=self.renderer.decode(g.answer_tokens),
                finish_reason=g.finish_reason,
                usage=usage,
                latency_s=latency + (started - batch[i].sent_at),
                model=self.name,
            )
        return out

    def _prefix(self, system: str, prompts: Sequence[Sequence[int]]) -> Prefix | None:
        """The cached run of the system prompt's tokens, which every prompt of the batch starts
        with; computed on first use. None without a system prompt."""
        import torch

        from promptdistill.models.prefix import starts_all, system_prefix

        if not system:
            return None
        prefix = self._prefixes.get(system)
        if prefix is None:
            if len(self._prefixes) >= PREFIXES_KEPT:
                self._prefixes.pop(next(iter(self._prefixes)))
            with torch.inference_mode():
                prefix = system_prefix(self.model, self.renderer, system)
            assert prefix is not None
            self._prefixes[system] = prefix
        return prefix if starts_all(prefix, prompts) else None


def _batch_seed(seeds: list[int | None], batch: int) -> int | None:
    """One seed for a batch: from its requests' seeds and its number; None if none has one."""
    if all(s is None for s in seeds):
        return None
    return zlib.crc32(repr((seeds, batch)).encode())


def load_in_process_teacher(
    model: str, batch_size: int = BATCH_SIZE, log: Callable[[str], None] | None = None
) -> InProcessTeacher:
    """Load `model` (an embedded name, a hub id or a directory; safetensors only) to answer
    in this process, in bf16 where the CPU has it (as `transformers serve` ran it)."""
    from promptdistill.models.load import load_causal_lm, load_tokenizer
    from promptdistill.models.resolve import resolve_model

    path = resolve_model(model, log=log)
    return InProcessTeacher(
        load_causal_lm(path, "auto"), Renderer(load_tokenizer(path)), model, batch_size
    )
