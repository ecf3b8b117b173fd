"""The sampling engine end to end in-process: `sample_run` against the fault-injecting server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_openai import Fault, start_fake_server
from fixtures_openai import answer, failures, samples, user_prompt, write_persona
from rich.console import Console

from promptdistill.clients.endpoint import Transport, chat_body
from promptdistill.core.config import SampleConfig, SamplingParams, TeacherConfig
from promptdistill.core.errors import UserError
from promptdistill.core.rundir import RunDir
from promptdistill.sampling.engine import Engine, EngineStats, Job
from promptdistill.sampling.limits import Limits
from promptdistill.sampling.sample import sample_run
from promptdistill.sampling.summary import SampleSummary


def _config(persona: Path, n: int, base_url: str, **teacher: object) -> SampleConfig:
    return SampleConfig(
        persona=str(persona),
        n=n,
        include_heldout=bool(teacher.pop("heldout", True)),
        sampling=SamplingParams(temperature=0.5, top_p=0.9, max_tokens=64),
        teacher=TeacherConfig(base_url=base_url, model="fake-teacher", **teacher),  # type: ignore[arg-type]
    )


def _run(config: SampleConfig, run: Path) -> SampleSummary:
    quiet = Console(file=open("/dev/null", "w"))  # noqa: SIM115
    return sample_run(config, RunDir(run), console=quiet, live=False, handle_sigint=False)


@pytest.mark.slow
def test_every_prompt_answered_exactly_once_with_its_own_answer_under_faults(
    tmp_path: Path,
) -> None:
    persona = write_persona(tmp_path)
    # each fault hits only a prompt's first or second request, so no prompt waits long
    faults = [
        Fault("status", status=429, retry_after_ms=50, prob=0.04, first=2),
        Fault("status", status=500, prob=0.05, first=1),
        Fault("status", status=502, prob=0.05, first=1),
        Fault("status", status=503, prob=0.03, first=2),
        Fault("status", status=408, prob=0.03, first=1),
        Fault("status", status=409, prob=0.03, first=1),
        Fault("drop", prob=0.05, first=2),
        Fault("truncate", prob=0.05, first=1),
        Fault("malformed", prob=0.05, first=2),
        Fault("empty", prob=0.05, first=1),
        Fault("slow", delay=1.5, prob=0.02, first=1),
    ]
    with start_fake_server(latency=0.01, faults=faults, seed=1) as server:
        config = _config(persona, 300, server.base_url, concurrency=32, timeout_s=0.5)
        config.teacher.max_retries = 20
        summary = _run(config, tmp_path / "run")
    records = samples(tmp_path / "run")
    ids = [r["id"] for r in records]
    assert summary.complete and summary.failed == 0
    assert len(ids) == len(set(ids)) == 303  # 300 + 3 held-out
    for r in records:
        assert answer(r) == f"answer to: {user_prompt(r)}"
        assert r["messages"][0] == {"role": "system", "content": r["messages"][0]["content"]}
        assert r["usage"]["completion_tokens"] > 0 and r["latency_s"] >= 0
        assert r["teacher"]["model"] == "fake-teacher"
        assert r["teacher"]["sampling"]["temperature"] == 0.5
    assert sum(r["split"] == "heldout" for r in records) == 3
    assert summary.retries > 0  # the faults really fired
    assert failures(tmp_path / "run") == []


def test_bad_request_goes_to_failures_length_is_flagged_content_filter_retried_then_recorded(
    tmp_path: Path,
) -> None:
    persona = write_persona(tmp_path, values=5, heldout=0)
    faults = [
        Fault("status", status=400, match="a0 about b1", message="prompt too long"),
        Fault("length", match="a1 about"),
        Fault("content_filter", match="a2 about b2"),
        Fault("empty", match="a3 about b3", first=2),  # twice empty, then an answer
    ]
    with start_fake_server(faults=faults) as server:
        summary = _run(_config(persona, 25, server.base_url), tmp_path / "run")
        asked = dict(server.asked)
    records = {user_prompt(r): r for r in samples(tmp_path / "run")}
    failed = {f["prompt"]: f for f in failures(tmp_path / "run")}
    assert set(failed) == {"Question a0 about b1?", "Question a2 about b2?"}
    assert failed["Question a0 about b1?"]["status"] == 400
    assert "prompt too long" in failed["Question a0 about b1?"]["error"]
    assert asked["Question a0 about b1?"] == 1  # a 400 is not retried
    assert failed["Question a2 about b2?"]["kind"] == "content"
    assert asked["Question a2 about b2?"] == 3  # retried a bounded number of times
    assert asked["Question a3 about b3?"] == 3 and "Question a3 about b3?" in records
    flagged = [p for p, r in records.items() if r["truncated"]]
    assert len(flagged) == 5 and all(p.startswith("Question a1 about") for p in flagged)
    assert all(records[p]["finish_reason"] == "length" for p in flagged)
    assert len(records) == 23 and summary.failed == 2 and summary.truncated == 5
    assert not summary.complete


def test_429_lowers_concurrency_and_retry_after_is_honoured(tmp_path: Path) -> None:
    persona = write_persona(tmp_path, heldout=0)
    # the endpoint allows 4 requests in flight and answers the rest 429, retry after 300 ms
    with start_fake_server(latency=0.1, max_in_flight=4, limit_retry_after_ms=300) as server:
        summary = _run(_config(persona, 40, server.base_url, concurrency=32), tmp_path / "run")
        arrivals = list(server.arrivals)
    assert summary.complete and summary.rate_limited > 0
    assert summary.min_concurrency <= 8  # halved at least twice from 32
    by_prompt: dict[str, list[tuple[float, str]]] = {}
    for a in arrivals:
        by_prompt.setdefault(a.prompt, []).append((a.t, a.outcome))
    gaps = [
        later[0] - earlier[0]
        for seq in by_prompt.values()
        for earlier, later in zip(seq, seq[1:], strict=False)
        if earlier[1] == "status 429"
    ]
    assert gaps and min(gaps) >= 0.29  # nobody came back before retry-after-ms


def test_retry_after_seconds_pauses_everyone(tmp_path: Path) -> None:
    persona = write_persona(tmp_path, heldout=0)
    faults = [Fault("status", status=429, retry_after=1, times=1)]
    with start_fake_server(latency=0.02, faults=faults) as server:
        summary = _run(_config(persona, 40, server.base_url, concurrency=4), tmp_path / "run")
        arrivals = sorted(server.arrivals, key=lambda a: a.t)
    assert summary.complete and summary.rate_limited == 1
    t429 = next(a.t for a in arrivals if a.outcome == "status 429")
    # requests already in flight at the 429 may still land within ~latency; then a 1 s silence
    after = [a.t - t429 for a in arrivals if a.t > t429 + 0.1]
    assert after and min(after) >= 0.95


def test_pool_is_bounded_and_pulls_prompts_lazily() -> None:
    """20k prompts: the engine never holds more than `concurrency` tasks or pending prompts."""
    concurrency = 16
    pulled = 0

    def jobs() -> Iterator[Job]:
        nonlocal pulled
        for i in range(20_000):
            pulled += 1
            yield Job(f"p{i}", [{"role": "user", "content": f"prompt {i}"}])

    async def go(base_url: str) -> tuple[int, int, int]:
        stats = EngineStats(total=20_000)
        stop = asyncio.Event()
        peak_tasks = 0
        answered: Counter[str] = Counter()

        def on_sample(job: Job, result: object, attempts: int) -> None:
            answered[job.id] += 1
            if stats.done >= 1500:
                stop.set()

        async with Transport(base_url, None, concurrency, 5.0) as transport:
            engine = Engine(
                transport,
                Limits(concurrency, None, None),
                lambda job: chat_body("fake-teacher", job.messages, 0.5, 0.9, 16, None),
                on_sample,
                lambda *a: None,
                stats=stats,
            )

            async def watch() -> None:
                nonlocal peak_tasks
                while True:
                    peak_tasks = max(peak_tasks, len(asyncio.all_tasks()))
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            finished = await engine.run(jobs(), stop)
            watcher.cancel()
        assert not finished  # stopped early, as asked
        assert max(answered.values()) == 1
        return peak_tasks, pulled, stats.done

    with start_fake_server(record=False) as server:
        peak_tasks, pulled_n, done = asyncio.run(go(server.base_url))
    # workers, plus aiohttp's body-writer task per request in flight, plus the stop waiter and
    # this test's own two tasks: it grows with the concurrency, never with the 20k prompts
    assert peak_tasks <= 2 * concurrency + 4
    assert done >= 1500 and pulled_n <= done + concurrency + 1


def test_failures_of_an_earlier_run_are_asked_again_on_rerun(tmp_path: Path) -> None:
    persona = write_persona(tmp_path, values=4, heldout=0)
    run = tmp_path / "run"
    with start_fake_server(faults=[Fault("status", status=400, match="a1 about")]) as server:
        first = _run(_config(persona, 16, server.base_url), run)
        assert first.failed == 4 and len(failures(run)) == 4
        server.faults = []  # whatever made them fail is fixed
        second = _run(_config(persona, 16, server.base_url), run)
        asked = dict(server.asked)
    assert second.answered_before == 12 and second.answered_now == 4 and second.complete
    assert failures(run) == []  # the file lists the latest run's failures only
    assert len(samples(run)) == 16
    assert all(k == (2 if "a1 about" in p else 1) for p, k in asked.items())


def test_a_400_for_every_request_stops_the_run_instead_of_failing_every_prompt(
    tmp_path: Path,
) -> None:
    persona = write_persona(tmp_path, heldout=0)
    fault = Fault("status", status=400, message="Unsupported parameter: 'max_tokens'")
    with start_fake_server(faults=[fault]) as server:
        try:
            _run(_config(persona, 200, server.base_url, concurrency=2), tmp_path / "run")
        except UserError as e:
            message = str(e)
        else:
            raise AssertionError("the run should have stopped")
        asked = server.requests
    assert "refused the first" in message and "max_tokens" in message and "--max-tokens" in message
    assert asked < 10  # stopped at once, not after 200 requests


def test_sampling_gives_back_the_signal_handlers_it_borrowed(tmp_path: Path) -> None:
    """SIGINT and SIGTERM stop sampling (issue #16); afterwards the handlers that were there
    (the CLI's SIGTERM exit, which `run` needs while it trains) are back, not SIG_DFL."""
    import io
    import signal

    def mine(_signum: int, _frame: object) -> None:
        raise AssertionError("not called")

    persona = write_persona(tmp_path)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, mine)
    try:
        with start_fake_server() as server:
            config = _config(persona, 3, server.base_url)
            quiet = Console(file=io.StringIO())
            summary = sample_run(config, RunDir(tmp_path / "run"), console=quiet, live=False)
        assert summary.complete
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is before[signal.SIGINT]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
