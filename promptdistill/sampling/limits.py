"""Client-side limits: requests per minute, tokens per minute, and adaptive concurrency.

Why not aiolimiter: `AsyncLimiter(R, 60)` is a leaky bucket that starts empty, so the first R
requests pass at once (aiolimiter issues #200, #298). Endpoints that enforce their limit over
windows shorter than a minute answer that burst with 429s. Here every limit is a *schedule*:
a virtual clock (as in GCRA, with zero burst tolerance) that each request advances by
`cost / rate` when it leaves, so requests leave at least one interval apart from the very first
one, and an endpoint that counts per second never sees more than R/60 + 1 requests in a second.

Tokens work the same way, in token-seconds: a request advances the token clock by
`estimate / (T/60)` before it goes (estimate = prompt tokens + max_tokens, as curator does), and
once the usage comes back the difference is refunded or charged by moving the clock.

On a 429 the engine also (1) pauses all dispatch until the server's retry-after has passed and
(2) halves how many requests may be in flight, then adds slots back as requests succeed
(AIMD, as in TCP congestion control).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque


class RateSchedule:
    """Lets requests go at most `1/rate_per_s` apart (per unit of cost), with no initial burst.

    Callers queue in order; only the head of the queue watches the clock, and it books its slot
    at the moment it leaves. Booking late (not when a caller arrives) matters for tokens: a
    refund (`adjust`) made while others wait lets the very next one go sooner, instead of
    everyone keeping slots booked from the pessimistic estimate. A pause (retry-after) holds
    the head until it is over; the spacing after it is kept, so it ends without a burst.
    """

    def __init__(self, rate_per_s: float | None) -> None:
        self.rate_per_s = rate_per_s
        self._next = 0.0  # monotonic time at which the next caller may leave
        self.paused_until = 0.0
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()  # the clock moved earlier or later: re-check

    def pause(self, seconds: float) -> None:
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)
        self._changed.set()

    async def reserve(self, cost: float = 1.0) -> None:
        if self.rate_per_s is None:  # only the pause applies
            while (wait := self.paused_until - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            return
        async with self._lock:
            while True:
                now = time.monotonic()
                start = max(self._next, self.paused_until)
                if start <= now:
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(start - now):
                        await self._changed.wait()
            # max(now, ...): idle time is not saved up into a burst later
            self._next = max(now, self._next) + cost / self.rate_per_s

    def adjust(self, delta_cost: float) -> None:
        """Charge (delta > 0) or refund (delta < 0) a reservation once the true cost is known."""
        if self.rate_per_s is None:
            return
        # a refund cannot create credit in the past (that would be a burst)
        self._next = max(self._next + delta_cost / self.rate_per_s, time.monotonic())
        self._changed.set()


class AdaptiveConcurrency:
    """How many requests may be in flight: `limit` between 1 and `maximum`.

    429 -> halve, but only for a request sent *after* the last cut: the requests already in
    flight then were sent under the old limit and will bounce too (TCP cuts once per round
    trip for the same reason). After a cut, hold for `cooldown_s`; then each success adds
    `increase` slots, so the limit climbs back linearly.
    """

    def __init__(self, maximum: int, cooldown_s: float = 2.0, increase: float = 0.25) -> None:
        self.maximum = maximum
        self._limit = float(maximum)
        self.in_flight = 0
        self.cooldown_s = cooldown_s
        self.increase = increase
        self._last_cut = -1e9
        self.min_seen = maximum
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # release() hands its slot over: in_flight was already counted for us
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot but are leaving: pass it on
            else:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.limit:
            fut = self._waiters.popleft()
            if not fut.done():
                self.in_flight += 1
                fut.set_result(None)

    def on_success(self) -> None:
        if self._limit < self.maximum and time.monotonic() - self._last_cut > self.cooldown_s:
            self._limit = min(float(self.maximum), self._limit + self.increase)
            self._wake()

    def on_rate_limited(self, sent_at: float) -> bool:
        """Halve the limit unless the request was sent before the last cut (time.monotonic()).
        Returns True when it was cut."""
        if sent_at < self._last_cut:
            return False
        self._last_cut = time.monotonic()
        self._limit = max(1.0, self._limit / 2)
        self.min_seen = min(self.min_seen, self.limit)
        return True


class Limits:
    """Everything a request waits for before it leaves, in one place for the engine."""

    def __init__(self, concurrency: int, rpm: float | None, tpm: float | None) -> None:
        self.concurrency = AdaptiveConcurrency(concurrency)
        self.requests = RateSchedule(rpm / 60.0 if rpm else None)
        self.tokens = RateSchedule(tpm / 60.0 if tpm else None)
        self.tpm = tpm

    async def acquire(self, token_estimate: int) -> None:
        """Take an in-flight slot, then a request slot and a token slot on the clocks."""
        await self.concurrency.acquire()
        try:
            await self.reserve(token_estimate)
        except BaseException:
            self.concurrency.release()
            raise

    async def reserve(self, token_estimate: int) -> None:
        """A request slot and a token slot on the clocks (the in-flight slot is the caller's:
        an endpoint's, sampling/pool.py)."""
        if self.tokens.rate_per_s is not None:
            await self.tokens.reserve(token_estimate)
        await self.requests.reserve(1.0)

    def pause(self, seconds: float) -> None:
        """Stop all dispatch for `seconds` (the server's retry-after)."""
        self.requests.pause(seconds)
        self.tokens.pause(seconds)


def estimate_tokens(text_chars: int, max_tokens: int) -> int:
    """Tokens a request may use, without a tokenizer (no transformers import on this path):
    ~4 characters per token for the prompt, plus every token the answer may use."""
    return text_chars // 4 + 8 + max_tokens
