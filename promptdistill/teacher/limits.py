"""Client-side limits: requests per minute, tokens per minute, and adaptive concurrency.

Why not aiolimiter: `AsyncLimiter(R, 60)` is a leaky bucket that starts empty, so the first R
requests pass at once (aiolimiter issues #200, #298). Endpoints that enforce their limit over
windows shorter than a minute answer that burst with 429s. Here every limit is a *schedule*:
each caller reserves the next free slot on a virtual clock (as in GCRA, zero burst tolerance),
so requests leave at most one interval apart from the very first one, and an endpoint that
counts per second never sees more than R/60 + 1 requests in a second.

Tokens work the same way, in token-seconds: a request reserves `estimate / (T/60)` seconds of
the token clock before it goes (estimate = prompt tokens + max_tokens, as curator does), and
once the usage comes back the difference is refunded or charged by moving the clock.

On a 429 the engine also (1) pauses all dispatch until the server's retry-after has passed and
(2) halves how many requests may be in flight, then adds slots back as requests succeed
(AIMD, as in TCP congestion control).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque


class RateSchedule:
    """Hands out departure times at most `1/rate_per_s` apart, with no initial burst.

    `reserve(cost)` books `cost / rate_per_s` seconds of the clock; `adjust(delta)` moves the
    clock when the real cost is known. A global pause (retry-after) shifts the whole schedule,
    the slots already booked included, so their spacing is kept and none is wasted.
    """

    def __init__(self, rate_per_s: float | None) -> None:
        self.rate_per_s = rate_per_s
        self._next = 0.0  # monotonic time of the next free slot
        self.paused_until = 0.0
        self._shift = 0.0  # total seconds all booked slots were pushed back by pauses

    def pause(self, seconds: float) -> None:
        now = time.monotonic()
        until = now + seconds
        if until <= self.paused_until:
            return
        shift = until - max(now, self.paused_until)
        self.paused_until = until
        self._shift += shift
        self._next = self._next + shift if self._next > now else until

    async def reserve(self, cost: float = 1.0) -> None:
        now = time.monotonic()
        if self.rate_per_s is None:
            slot = max(now, self.paused_until)
        else:
            # max(now, ...): a slot never lies in the past, so idle time is not saved up into a
            # burst later
            slot = max(now, self._next, self.paused_until)
            self._next = slot + cost / self.rate_per_s
        shift0 = self._shift
        while True:
            target = slot + (self._shift - shift0)  # pauses set while we slept push us back
            if target <= now:
                return
            await asyncio.sleep(target - now)
            now = time.monotonic()

    def adjust(self, delta_cost: float) -> None:
        """Charge (delta > 0) or refund (delta < 0) a reservation once the true cost is known."""
        if self.rate_per_s is None:
            return
        # a refund cannot create credit in the past (that would be a burst)
        self._next = max(self._next + delta_cost / self.rate_per_s, time.monotonic())


class AdaptiveConcurrency:
    """How many requests may be in flight: `limit` between 1 and `maximum`.

    429 -> halve (at most once per `cooldown_s`, since the requests already in flight will
    bounce too and must not halve it again); hold for the cooldown; then each success adds
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

    def on_rate_limited(self, retry_after: float | None = None) -> bool:
        """Halve the limit unless it was just cut. Returns True when it was cut."""
        now = time.monotonic()
        hold = max(self.cooldown_s, retry_after or 0.0)
        if now - self._last_cut < hold:
            return False
        self._last_cut = now
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
            if self.tokens.rate_per_s is not None:
                await self.tokens.reserve(token_estimate)
            await self.requests.reserve(1.0)
        except BaseException:
            self.concurrency.release()
            raise

    def pause(self, seconds: float) -> None:
        """Stop all dispatch for `seconds` (the server's retry-after)."""
        self.requests.pause(seconds)
        self.tokens.pause(seconds)


def estimate_tokens(text_chars: int, max_tokens: int) -> int:
    """Tokens a request may use, without a tokenizer (no transformers import on this path):
    ~4 characters per token for the prompt, plus every token the answer may use."""
    return text_chars // 4 + 8 + max_tokens
