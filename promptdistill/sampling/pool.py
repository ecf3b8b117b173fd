"""Several endpoints serving one teacher model (issue #15): vLLM replicas, regions.

The engine asks the pool for an endpoint before every request. The pool hands out the endpoint
with the fewest requests in flight among those with a free slot; each endpoint has its own
concurrency limit and AIMD (limits.AdaptiveConcurrency), so a replica that answers 429 slows
down alone. With one endpoint this is exactly the single-endpoint behaviour, at the cost of one
comparison.

An endpoint that stops answering is taken out (nothing is sent to it) for a while that doubles
each time, up to `OUT_MAX_S`; the retries of its requests go to the others at once. It then
gets one request alone (a probe) and returns when that succeeds. It is taken out on a refused
connection, or after `BAD_IN_A_ROW` 5xx, timeouts or dropped connections with no success in
between. The run stops (`FatalError`) only when no endpoint can be reached, by the rules one
endpoint always had: `unreachable_tries` refused connections before it ever answered, or
`unreachable_s` of them after it did.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from promptdistill.clients.answers import ChatClient
from promptdistill.clients.endpoint import RetryableError, Transport
from promptdistill.core.config import TeacherConfig
from promptdistill.sampling.limits import AdaptiveConcurrency, Limits

BAD_IN_A_ROW = 5  # 5xx / timeouts / dropped connections in a row: taken out
OUT_FIRST_S = 1.0  # first time out; doubled each time after, reset by a success
OUT_MAX_S = 30.0
ENDPOINT_FAULTS = ("unreachable", "server", "timeout", "dropped")


@dataclass
class EndpointStats:
    requests: int = 0
    answers: int = 0
    errors: int = 0
    taken_out: int = 0


@dataclass(eq=False)
class Endpoint:
    """One endpoint: its transport, its own limit, and how it is doing."""

    transport: ChatClient
    concurrency: AdaptiveConcurrency
    stats: EndpointStats = field(default_factory=EndpointStats)
    out_until: float = 0.0  # monotonic; nothing is sent before
    probing: bool = False  # back from out: one request at a time until one succeeds
    out_s: float = OUT_FIRST_S
    bad_streak: int = 0
    # the single-endpoint rule for "cannot be reached", per endpoint
    ever_answered: bool = False
    unreachable_streak: int = 0
    unreachable_since: float = 0.0
    given_up: bool = False

    @property
    def url(self) -> str:
        return self.transport.public_url

    @property
    def in_flight(self) -> int:
        return self.concurrency.in_flight

    def free(self, now: float) -> bool:
        if self.out_until > now:
            return False
        return self.in_flight < (1 if self.probing else self.concurrency.limit)


class Pool:
    """The endpoints, and who waits for a slot on any of them (first come, first served)."""

    def __init__(
        self, endpoints: Sequence[Endpoint], unreachable_tries: int = 3, unreachable_s: float = 60.0
    ) -> None:
        if not endpoints:
            raise ValueError("a pool needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.unreachable_tries = unreachable_tries
        self.unreachable_s = unreachable_s
        self._waiters: deque[asyncio.Future[Endpoint]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # monotonic time it fires

    @classmethod
    def single(cls, transport: ChatClient, concurrency: AdaptiveConcurrency) -> Pool:
        return cls([Endpoint(transport, concurrency)])

    async def __aenter__(self) -> Pool:
        for ep in self.endpoints:
            await ep.transport.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ep in self.endpoints:
            await ep.transport.close()

    # ----------------------------------------------------------------------- for Progress

    @property
    def maximum(self) -> int:
        return sum(ep.concurrency.maximum for ep in self.endpoints)

    @property
    def limit(self) -> int:
        now = time.monotonic()
        return sum(ep.concurrency.limit for ep in self.endpoints if ep.out_until <= now)

    @property
    def min_seen(self) -> int:
        return sum(ep.concurrency.min_seen for ep in self.endpoints)

    def report(self) -> list[tuple[str, int, int, int, int]]:
        """Per endpoint when there are several (for the summary): URL, requests, answers,
        errors, times taken out."""
        if len(self.endpoints) < 2:
            return []
        return [(ep.url, ep.stats.requests, ep.stats.answers, ep.stats.errors, ep.stats.taken_out)
                for ep in self.endpoints]  # fmt: skip

    def up(self) -> int:
        now = time.monotonic()
        return sum(1 for ep in self.endpoints if ep.out_until <= now)

    # ----------------------------------------------------------------------- slots

    def _pick(self) -> Endpoint | None:
        now = time.monotonic()
        best: Endpoint | None = None
        for ep in self.endpoints:
            if ep.free(now) and (best is None or ep.in_flight < best.in_flight):
                best = ep
        return best

    async def acquire(self) -> Endpoint:
        """An endpoint with a free slot, counted as in flight there."""
        if not self._waiters:
            ep = self._pick()
            if ep is not None:
                ep.concurrency.in_flight += 1
                return ep
        fut: asyncio.Future[Endpoint] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self._arm()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # handed a slot while leaving: pass it on
            else:
                self._waiters.remove(fut)
            raise

    def release(self, ep: Endpoint) -> None:
        ep.concurrency.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters:
            ep = self._pick()
            if ep is None:
                self._arm()
                return
            fut = self._waiters.popleft()
            if not fut.done():
                ep.concurrency.in_flight += 1
                fut.set_result(ep)

    def _arm(self) -> None:
        """Wake the waiters when the next endpoint that is out comes back."""
        now = time.monotonic()
        back = [ep.out_until for ep in self.endpoints if ep.out_until > now]
        if not back:
            return
        at = min(back)
        if self._timer is not None:
            if self._timer_at <= at:
                return  # one is due sooner already
            self._timer.cancel()
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timer = None
            self._wake()

        self._timer_at = at
        self._timer = loop.call_at(loop.time() + (at - now) + 0.001, fire)

    # ----------------------------------------------------------------------- outcomes

    def on_success(self, ep: Endpoint) -> None:
        ep.stats.answers += 1
        ep.ever_answered = True
        ep.unreachable_streak = ep.bad_streak = 0
        ep.probing, ep.given_up, ep.out_s = False, False, OUT_FIRST_S
        ep.concurrency.on_success()
        self._wake()

    def on_rate_limited(self, ep: Endpoint, sent_at: float) -> None:
        ep.concurrency.on_rate_limited(sent_at)

    def pause(self, ep: Endpoint, seconds: float) -> None:
        """The endpoint asked to wait (retry-after): the others go on."""
        ep.out_until = max(ep.out_until, time.monotonic() + seconds)
        self._arm()

    def on_error(self, ep: Endpoint, e: RetryableError) -> str | None:
        """Book a failed attempt; returns a message when no endpoint can be reached any more."""
        ep.stats.errors += 1
        now = time.monotonic()
        if e.kind == "unreachable":
            if ep.unreachable_streak == 0:
                ep.unreachable_since = now
            ep.unreachable_streak += 1
            ep.given_up = (
                ep.unreachable_streak >= self.unreachable_tries
                if not ep.ever_answered
                else now - ep.unreachable_since >= self.unreachable_s
            )
        elif e.kind != "timeout":
            ep.unreachable_streak = 0
        if e.kind in ENDPOINT_FAULTS:
            ep.bad_streak += 1
            several = len(self.endpoints) > 1
            if several and (e.kind == "unreachable" or ep.bad_streak >= BAD_IN_A_ROW):
                self._take_out(ep, now)
        if e.kind == "unreachable" and all(x.given_up for x in self.endpoints):
            if len(self.endpoints) == 1:
                return f"{e} (after {ep.unreachable_streak} tries)"
            return f"none of the {len(self.endpoints)} endpoints can be reached (the last: {e})"
        return None

    def _take_out(self, ep: Endpoint, now: float) -> None:
        if ep.out_until > now:
            return  # already out: the requests that were in flight are failing too
        ep.out_until = now + ep.out_s
        ep.out_s = min(ep.out_s * 2, OUT_MAX_S)
        ep.probing = True
        ep.bad_streak = 0
        ep.stats.taken_out += 1
        self._arm()

    def elsewhere(self, e: BaseException | None) -> bool:
        """A retry of a request that failed for this reason may go to another endpoint now
        (no backoff): the fault was its endpoint's, and another one is up."""
        return (
            isinstance(e, RetryableError)
            and e.kind in ("unreachable", "dropped")
            and len(self.endpoints) > 1
            and self.up() > 0
        )


def endpoint_pool(
    teacher: TeacherConfig,
    base_url: str,
    api_key: str | None,
    limits: Limits,
    key_source: str | None = None,
) -> Pool:
    """The teacher's endpoints: `base_url` alone (limited by `limits.concurrency`), or every
    one of `teacher.endpoints`, each with its own concurrency (or the teacher's)."""
    t = teacher
    if not t.endpoints:
        transport = Transport(base_url, api_key, t.concurrency, t.timeout_s, key_source=key_source)
        return Pool.single(transport, limits.concurrency)
    endpoints = []
    for e in t.endpoints:
        n = e.concurrency or t.concurrency
        transport = Transport(e.base_url, api_key, n, t.timeout_s, key_source=key_source)
        endpoints.append(Endpoint(transport, AdaptiveConcurrency(n)))
    return Pool(endpoints)
