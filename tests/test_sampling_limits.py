"""Client-side limits: even request spacing from the first request, token refunds, AIMD."""

from __future__ import annotations

import asyncio
import time

from promptdistill.sampling.limits import AdaptiveConcurrency, Limits, RateSchedule


def _max_in_window(times: list[float], window: float = 1.0) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while j < len(times) and times[j] < t + window:
            j += 1
        best = max(best, j - i)
    return best


def test_rate_schedule_spreads_requests_with_no_burst_at_start() -> None:
    async def go() -> list[float]:
        schedule = RateSchedule(20.0)  # 1200 rpm
        t0 = time.monotonic()
        stamps: list[float] = []

        async def one() -> None:
            await schedule.reserve()
            stamps.append(time.monotonic() - t0)

        await asyncio.gather(*(one() for _ in range(30)))
        return stamps

    stamps = asyncio.run(go())
    assert sum(1 for t in stamps if t < 1.0) <= 21  # the first second too
    assert _max_in_window(stamps) <= 21
    assert max(stamps) >= 29 / 20 - 0.05  # 30 slots, 1/20 s apart


def test_token_refund_lets_the_next_request_go_sooner() -> None:
    async def go(refund: bool) -> float:
        tokens = RateSchedule(100.0)  # 6000 tokens per minute
        await tokens.reserve(100)  # books one second of the token clock
        if refund:
            tokens.adjust(-90)  # the answer used only 10 tokens
        t0 = time.monotonic()
        await tokens.reserve(10)
        return time.monotonic() - t0

    assert asyncio.run(go(refund=False)) > 0.8
    assert asyncio.run(go(refund=True)) < 0.3


def test_pause_holds_everyone_then_resumes_evenly() -> None:
    async def go() -> list[float]:
        schedule = RateSchedule(10.0)
        t0 = time.monotonic()
        stamps: list[float] = []

        async def one() -> None:
            await schedule.reserve()
            stamps.append(time.monotonic() - t0)

        tasks = [asyncio.create_task(one()) for _ in range(5)]
        await asyncio.sleep(0.05)  # the first went at once; 4 are booked 0.1 s apart
        schedule.pause(0.5)  # a 429 with retry-after: 0.5
        await asyncio.gather(*tasks)
        return sorted(stamps)

    stamps = asyncio.run(go())
    assert stamps[0] < 0.05
    assert all(t >= 0.5 for t in stamps[1:])  # nobody left during the pause
    gaps = [b - a for a, b in zip(stamps[1:], stamps[2:], strict=False)]
    assert min(gaps) >= 0.09  # no burst when the pause ends
    assert stamps[-1] < 1.0  # and no time was wasted after it


def test_adaptive_concurrency_halves_once_per_round_trip_then_climbs_back() -> None:
    c = AdaptiveConcurrency(32, cooldown_s=0.2, increase=1.0)
    sent = time.monotonic()  # a wave of requests sent under the old limit
    assert c.on_rate_limited(sent) is True
    assert c.limit == 16
    assert c.on_rate_limited(sent) is False  # the rest of that wave does not cut again
    c.on_success()
    assert c.limit == 16  # held during the cooldown
    time.sleep(0.25)
    for _ in range(5):
        c.on_success()
    assert c.limit == 21
    assert c.on_rate_limited(time.monotonic()) is True and c.limit == 10  # sent after the cut
    assert c.min_seen == 10
    for _ in range(10):
        c.on_rate_limited(time.monotonic())
    assert c.limit == 1  # floor


def test_in_flight_never_exceeds_the_current_limit() -> None:
    async def go() -> int:
        limits = Limits(concurrency=8, rpm=None, tpm=None)
        c = limits.concurrency
        c.on_rate_limited(time.monotonic())  # limit 4
        peak = 0

        async def one() -> None:
            nonlocal peak
            await limits.acquire(10)
            peak = max(peak, c.in_flight)
            await asyncio.sleep(0.01)
            c.release()

        await asyncio.gather(*(one() for _ in range(40)))
        assert c.in_flight == 0
        return peak

    assert asyncio.run(go()) == 4
