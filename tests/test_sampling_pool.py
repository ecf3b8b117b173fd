"""`sample` with several endpoints (issue #15), as a user runs it: `--base-url` repeated or a
file of URLs, requests spread over them, one endpoint killed mid-run, exactly-once kept."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from fake_openai import free_port, start_fake_server
from fixtures_openai import (
    answer,
    cli_args,
    cli_env,
    one_line_error,
    run_cli,
    samples,
    user_prompt,
    wait_for_lines,
    write_persona,
)

TESTS = Path(__file__).resolve().parent


def _start_process_server(latency: float) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "fake_openai.py"), "--latency", str(latency)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}/v1"


def test_requests_spread_and_one_endpoint_killed_mid_run(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    doomed, doomed_url = _start_process_server(latency=0.05)
    try:
        with start_fake_server(latency=0.05) as a, start_fake_server(latency=0.05) as b:
            urls = tmp_path / "replicas.txt"
            urls.write_text(f"# three replicas\n{a.base_url} 8\n{doomed_url}\n\n")
            args = cli_args(persona, run, 300, b.base_url, "--no-heldout", "--concurrency", "8",
                            "--base-url", str(urls), "--log-every", "0.5")  # fmt: skip
            proc = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=cli_env(COLUMNS="200"),
            )  # fmt: skip
            wait_for_lines(run / "samples.jsonl", 60, proc, timeout=120)
            doomed.kill()  # SIGKILL: its requests in flight are dropped, new ones refused
            doomed.wait()
            out, err = proc.communicate(timeout=300)
            asked = a.asked + b.asked
            served = a.requests, b.requests
            again = run_cli(args)
            assert a.requests + b.requests == sum(served)  # the rerun asked nothing
    finally:
        doomed.kill()
    assert proc.returncode == 0, out + err
    records = samples(run)
    assert len(records) == 300 and len({r["id"] for r in records}) == 300
    assert all(answer(r) == f"answer to: {user_prompt(r)}" for r in records)
    assert max(asked.values()) <= 2  # only those in flight at the kill went twice
    assert min(served) >= 50  # both survivors took a share
    text = " ".join(out.split())
    for url in (a.base_url, b.base_url, doomed_url):
        assert url in text  # the summary's row per endpoint
    assert "taken out" in text and "endpoints 2/3 up" in text  # the summary, the progress
    assert again.returncode == 0 and "all 300 prompts answered" in " ".join(again.stdout.split())


def test_no_endpoint_reachable_is_one_line(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    dead = [f"http://127.0.0.1:{free_port()}/v1" for _ in range(2)]
    result = run_cli(cli_args(persona, tmp_path / "run", 5, dead[0], "--base-url", dead[1]))
    line = one_line_error(result, 3)
    assert "none of the 2 endpoints can be reached" in line and "--base-url" in line


def test_bad_url_files_name_the_line(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    bad = tmp_path / "urls.txt"
    bad.write_text("http://127.0.0.1:9/v1\nhttp://127.0.0.1:10/v1 many\n")
    line = one_line_error(run_cli(cli_args(persona, tmp_path / "r", 5, str(bad))), 2)
    assert f"{bad}:2" in line and "URL N" in line
    twice = run_cli(
        cli_args(persona, tmp_path / "r", 5, "http://h:1/v1", "--base-url", "http://h:1")
    )
    assert "listed twice" in one_line_error(twice, 2)
    batch = run_cli(cli_args(persona, tmp_path / "r", 5, "http://h:1/v1", "--base-url",
                             "http://h:2/v1", "--batch-api"))  # fmt: skip
    assert "--batch-api takes one --base-url" in one_line_error(batch, 2)
    missing = run_cli(cli_args(persona, tmp_path / "r", 5, str(tmp_path / "replicas.txt")))
    assert "there is no file" in one_line_error(missing, 2)
    assert not (tmp_path / "r").exists()  # nothing created for a bad flag


def test_pool_least_busy_first_out_on_refusal_back_after_a_probe() -> None:
    """The pool itself, on real transports (no request is sent): who gets the next slot."""
    import asyncio

    from promptdistill.clients.endpoint import RetryableError, Transport
    from promptdistill.sampling.limits import AdaptiveConcurrency
    from promptdistill.sampling.pool import OUT_FIRST_S, Endpoint, Pool

    async def main() -> None:
        eps = [Endpoint(Transport(f"http://127.0.0.1:{p}/v1", None, 2, 5.0), AdaptiveConcurrency(2))
               for p in (1, 2)]  # fmt: skip
        pool = Pool(eps)
        first, second = await pool.acquire(), await pool.acquire()
        assert {first.url, second.url} == {eps[0].url, eps[1].url}  # the least busy each time
        refused = RetryableError("cannot connect", "unreachable")
        assert pool.on_error(eps[0], refused) is None  # the other one is still there
        pool.release(eps[0])
        assert eps[0].stats.taken_out == 1 and pool.up() == 1
        assert await pool.acquire() is eps[1]  # eps[0] is out: eps[1] takes its 2nd slot
        started = time.monotonic()
        waiting = asyncio.create_task(pool.acquire())  # both busy or out: waits for one
        await asyncio.sleep(0.05)
        assert not waiting.done()
        back = await asyncio.wait_for(waiting, 10)
        assert back is eps[0] and time.monotonic() - started >= OUT_FIRST_S * 0.9
        assert eps[0].probing  # one request alone until it answers
        pool.on_success(eps[0])
        assert not eps[0].probing and eps[0].out_s == OUT_FIRST_S

    asyncio.run(main())
