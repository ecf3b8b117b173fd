"""The sampling engine: a bounded pool of workers asking the teacher, with retries and limits.

Shape: `concurrency` worker tasks pull jobs one at a time from a shared iterator. There is never
one task per prompt, so 100k prompts cost the same memory as 1k (distilabel and tinker-cookbook
create every coroutine up front). Each worker, per job:

    wait for an in-flight slot, a request slot and a token slot (limits.py)
    POST once (transport.py)
    on a retryable error: give the slot back, wait (full jitter, at least retry-after), retry

The first attempt runs without tenacity; only a failed job enters tenacity's retry loop, so the
happy path pays nothing for it. Waits are `wait_random_exponential` ("full jitter", AWS
architecture blog 2015) raised to the server's retry-after when it sent one.

Outcomes per job: a sample (`on_sample`), a failure for good (`on_failure`: 400, retries
exhausted, content filter/empty after `content_retries`), or a `FatalError` that stops every
worker at once (401/403/404, or an endpoint that cannot be reached).

A job may go on: when `on_sample` returns another Job (the next request of a multi-turn
conversation, sampling/turns.py), the same worker asks it at once, and the job counts as done
only when no request follows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from promptdistill.clients.answers import ChatClient
from promptdistill.clients.endpoint import (
    MAX_RETRY_AFTER_S,
    ChatResult,
    FatalError,
    PromptError,
    RetryableError,
    TransportError,
)
from promptdistill.sampling.limits import Limits, estimate_tokens
from promptdistill.sampling.pool import Endpoint, Pool


@dataclass(slots=True)
class Job:
    """One prompt to ask. `meta` is copied into its sample or failure record."""

    id: str
    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)
    max_tokens: int | None = None  # this request's answer cap, if not the run's


@dataclass
class EngineStats:
    """Live counters, read by the progress display."""

    total: int = 0
    done: int = 0
    failed: int = 0
    truncated: int = 0
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0  # requests sent and not yet answered (not those waiting for a slot)
    output_tokens: int = 0
    input_tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    last_error: str = ""
    # a server's retry-after being waited out: until when (monotonic), and why (issue #16)
    waiting_until: float = 0.0
    waiting_why: str = ""


@dataclass
class RetryPolicy:
    max_retries: int = 8  # retries after the first attempt
    content_retries: int = 2  # retries of an empty or content-filtered answer
    backoff_s: float = 0.5  # full jitter: uniform(0, min(cap, backoff_s * 2**attempt))
    backoff_cap_s: float = 30.0
    # per endpoint (sampling/pool.py); the run gives up when every endpoint has
    unreachable_tries: int = 3  # connect failures in a row before any success: give up
    unreachable_s: float = 60.0  # ... after the endpoint answered once: give up after this long
    refused_before_any_answer: int = 5  # 400s in a row before any answer: the request is wrong
    html_in_a_row: int = 3  # web pages instead of API answers in a row: the URL is wrong


class Engine:
    """`transport`: one endpoint, or a Pool of several (each request goes to the one with the
    fewest in flight; issue #15). One endpoint uses `limits.concurrency` as its limit."""

    def __init__(
        self,
        transport: ChatClient | Pool,
        limits: Limits,
        body: Callable[[Job], dict[str, Any]],
        on_sample: Callable[[Job, ChatResult, int], Job | None],
        on_failure: Callable[[Job, str, str, int | None, int], None],
        policy: RetryPolicy | None = None,
        stats: EngineStats | None = None,
        max_tokens: int = 256,
    ) -> None:
        if isinstance(transport, Pool):
            self.pool = transport
        else:
            self.pool = Pool.single(transport, limits.concurrency)
        self.transport = self.pool.endpoints[0].transport
        self.limits = limits
        self.body = body
        self.on_sample = on_sample
        self.on_failure = on_failure
        self.policy = policy or RetryPolicy()
        self.stats = stats or EngineStats()
        self.max_tokens = max_tokens
        self._jitter = wait_random_exponential(
            multiplier=self.policy.backoff_s, max=self.policy.backoff_cap_s
        )
        self.pool.unreachable_tries = self.policy.unreachable_tries
        self.pool.unreachable_s = self.policy.unreachable_s
        self._ever_succeeded = False
        self._refused_streak = 0
        self._html_streak = 0

    # ----------------------------------------------------------------------- the pool

    async def run(self, jobs: Iterator[Job], stop: asyncio.Event | None = None) -> bool:
        """Ask every job. Returns False when `stop` was set (in-flight requests are cancelled
        and their jobs left for the next run). Raises FatalError, after cancelling the rest."""
        n_workers = self.pool.maximum
        if self.stats.total:
            n_workers = max(1, min(n_workers, self.stats.total))
        workers = [asyncio.create_task(self._worker(jobs)) for _ in range(n_workers)]
        stopper = asyncio.create_task(stop.wait()) if stop is not None else None
        pending: set[asyncio.Task[Any]] = set(workers)
        interrupted = False
        fatal: BaseException | None = None
        try:
            while pending:
                waiting = pending | ({stopper} if stopper else set())
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if stopper is not None and stopper in done:
                    interrupted = True
                    break
                for t in done:
                    pending.discard(t)
                    if not t.cancelled() and t.exception() is not None:
                        fatal = t.exception()
                if fatal is not None:
                    break
        finally:
            for t in workers:
                t.cancel()
            if stopper is not None:
                stopper.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if fatal is not None:
            raise fatal
        return not interrupted

    async def _worker(self, jobs: Iterator[Job]) -> None:
        # jobs is a plain iterator shared by all workers; next() never awaits, so it is safe
        for job in jobs:
            follow: Job | None = job
            while follow is not None:  # a multi-turn conversation's next request, if any
                follow = await self._ask(follow)

    # ----------------------------------------------------------------------- one job

    async def _ask(self, job: Job) -> Job | None:
        body = self.body(job)
        chars = sum(len(m.get("content") or "") for m in job.messages)
        estimate = estimate_tokens(chars, int(body.get("max_tokens") or self.max_tokens))
        state = _JobState()
        try:
            try:
                result = await self._attempt(body, estimate, state)
            except RetryableError as first:
                result = await self._retry(first, body, estimate, state)
        except PromptError as e:
            self.stats.failed += 1
            self.stats.last_error = str(e)
            self.on_failure(job, str(e), e.kind, e.status, state.attempts)
            self._check_systematic(e)
            return None
        except RetryableError as e:  # retries exhausted
            self.stats.failed += 1
            self.stats.last_error = str(e)
            self.on_failure(
                job, f"{e} (gave up after {state.attempts} tries)", e.kind, e.status, state.attempts
            )
            return None
        if result.finish_reason == "length":
            self.stats.truncated += 1
        follow = self.on_sample(job, result, state.attempts)
        if follow is None:
            self.stats.done += 1
        return follow

    def _check_systematic(self, e: PromptError) -> None:
        """A 400 is about one prompt, unless every request gets one: then the request itself
        does not suit this endpoint (e.g. a model that wants max_completion_tokens), and
        going on would only record every prompt as failed."""
        if e.kind != "refused" or self._ever_succeeded:
            return
        self._refused_streak += 1
        if self._refused_streak >= self.policy.refused_before_any_answer:
            raise FatalError(
                f"{self.transport.public_url} refused the first {self._refused_streak} requests "
                f"and answered none ({e}); check --model and the sampling options "
                "(--max-tokens, --temperature, --top-p, --seed) against what this endpoint accepts"
            )

    async def _retry(
        self, first: RetryableError, body: dict[str, Any], estimate: int, state: _JobState
    ) -> ChatResult:
        if self.policy.max_retries <= 0:
            raise first
        await asyncio.sleep(self._wait_for(first, 1))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.max_retries),
            wait=self._wait,
            retry=retry_if_exception_type(RetryableError),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._attempt(body, estimate, state)
        raise AssertionError("unreachable: tenacity reraises the last error")

    def _wait(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        # tenacity counts from our second attempt
        return self._wait_for(exc, retry_state.attempt_number + 1)

    def _wait_for(self, exc: BaseException | None, attempt_number: int) -> float:
        """Full jitter, but never less than what the server asked for in retry-after."""
        if self.pool.elsewhere(exc):
            return 0.0  # its endpoint failed, not the request: another one takes it now
        rs = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        rs.attempt_number = attempt_number
        wait = self._jitter(rs)
        if isinstance(exc, RetryableError) and exc.retry_after is not None:
            wait = max(wait, exc.retry_after)
        return wait

    async def _attempt(self, body: dict[str, Any], estimate: int, state: _JobState) -> ChatResult:
        if state.attempts:
            self.stats.retries += 1
        state.attempts += 1
        limits = self.limits
        ep = await self.pool.acquire()
        try:
            await limits.reserve(estimate)
        except BaseException:
            self.pool.release(ep)
            raise
        sent_at = time.monotonic()
        self.stats.in_flight += 1
        ep.stats.requests += 1
        try:
            result = await ep.transport.chat(body)
        except RetryableError as e:
            self._on_retryable(e, estimate, state, sent_at, ep)
            raise
        except BaseException as e:
            if isinstance(e, TransportError):
                ep.stats.errors += 1
            limits.tokens.adjust(-estimate)  # never sent, or cancelled: give the budget back
            raise
        finally:
            self.stats.in_flight -= 1
            self.pool.release(ep)
        self._ever_succeeded = True
        self._html_streak = 0
        self.pool.on_success(ep)
        usage = result.usage
        out = usage.get("completion_tokens")
        if isinstance(out, int):
            self.stats.output_tokens += out
        inp = usage.get("prompt_tokens")
        if isinstance(inp, int):
            self.stats.input_tokens += inp
        total = usage.get("total_tokens")
        if not isinstance(total, int) and isinstance(out, int) and isinstance(inp, int):
            total = out + inp
        if isinstance(total, int):
            limits.tokens.adjust(total - estimate)  # refund (or charge) the estimate
        return result

    def _on_retryable(
        self, e: RetryableError, estimate: int, state: _JobState, sent_at: float, ep: Endpoint
    ) -> None:
        """Bookkeeping for one failed attempt; may turn it into a failure or a fatal error."""
        state.last_kind = e.kind
        self.stats.last_error = str(e)
        if e.kind in ("rate_limit", "server", "unreachable"):
            self.limits.tokens.adjust(-estimate)  # the endpoint did no work for it
        if e.kind == "rate_limit":
            self.stats.rate_limited += 1
            self.pool.on_rate_limited(ep, sent_at)
            if e.retry_after and len(self.pool.endpoints) > 1:
                self.pool.pause(ep, e.retry_after)  # that endpoint waits; the others go on
            elif e.retry_after:
                self.limits.pause(e.retry_after)
        if e.retry_after and len(self.pool.endpoints) == 1:  # everything waits: say why
            self._note_wait(e, e.retry_after)
        self._html_streak = self._html_streak + 1 if e.kind == "html" else 0
        if self._html_streak >= self.policy.html_in_a_row:
            raise FatalError(f"{e} ({self._html_streak} web pages in a row, no API answer)")
        unreachable = self.pool.on_error(ep, e)
        if unreachable is not None:
            raise FatalError(
                f"{unreachable}; check that the server is running and that --base-url is "
                "right, e.g. http://localhost:8000/v1"
            )
        if e.kind == "content":
            state.content_failures += 1
            if state.content_failures > self.policy.content_retries:
                raise PromptError(f"{e} ({state.content_failures} times)", kind="content")

    def _note_wait(self, e: RetryableError, seconds: float) -> None:
        """Say in the progress display that a wait is the server's doing, how long, and why."""
        until = time.monotonic() + seconds
        if until <= self.stats.waiting_until:
            return
        why = f"the endpoint answered {e.status or e.kind}"
        if e.asked_wait:
            why += f" with retry-after {e.asked_wait}"
        if seconds >= MAX_RETRY_AFTER_S:
            why += f"; retrying after {MAX_RETRY_AFTER_S:.0f} s at most"
        self.stats.waiting_until, self.stats.waiting_why = until, why


@dataclass(slots=True)
class _JobState:
    attempts: int = 0
    content_failures: int = 0
    last_kind: str = ""
