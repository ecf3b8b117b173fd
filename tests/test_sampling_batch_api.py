"""`sample --batch-api` as a user runs it (issue #15): the CLI as a subprocess against the fake
server's /v1/files and /v1/batches (fake_batches.py), driven by the official openai SDK."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from fake_batches import BatchPlan, FakeBatches
from fake_openai import Fault, start_fake_server
from fixtures_openai import (
    answer,
    cli_args,
    cli_env,
    failures,
    run_cli,
    samples,
    user_prompt,
    write_persona,
)

KEY = "sk-PROMPTDISTILL-BATCH-KEY-0d9e7a55"
FAST = ("--batch-api", "--batch-poll", "0.05")


def _all_answered(run: Path, n: int) -> None:
    records = samples(run)
    assert len(records) == n and len({r["id"] for r in records}) == n
    assert all(answer(r) == f"answer to: {user_prompt(r)}" for r in records)


def _input_ids(server: object, batch_id: str) -> list[str]:
    fake: FakeBatches = server.batches  # type: ignore[attr-defined]
    data = fake.files[fake.batches[batch_id].input_file_id][0]
    return [orjson.loads(x)["custom_id"] for x in data.splitlines()]


def _wait_for_batch(run: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    """Until RUN/batches.json records a created batch."""
    deadline = time.monotonic() + timeout
    path = run / "batches.json"
    while time.monotonic() < deadline:
        if path.exists() and any(b["batch_id"] for b in orjson.loads(path.read_bytes())["batches"]):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the CLI exited early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError("no batch was recorded")


def test_split_batches_error_lines_asked_again_shuffled_output(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server(api_key=KEY, batches=FakeBatches()) as server:
        server.faults = [Fault("status", status=500, match="Held-out question 1", first=1)]
        result = run_cli(
            cli_args(persona, run, 20, server.base_url, *FAST, "--batch-max-requests", "8",
                     "--price-in", "2", "--price-out", "8"),
            OPENAI_API_KEY=KEY,
        )  # fmt: skip
        created = list(server.batches.created)
        follow_up = _input_ids(server, created[-1])
        asked = dict(server.asked)
    assert result.returncode == 0, result.stdout + result.stderr
    # 23 prompts at 8 per batch: 3 batches, then one follow-up for the line that failed
    assert len(created) == 4 and [len(_input_ids(server, b)) for b in created[:3]] == [8, 8, 7]
    assert len(follow_up) == 1
    _all_answered(run, 23)  # the fake shuffles every output file
    assert asked["Held-out question 1?"] == 2 and sum(asked.values()) == 24
    out = " ".join(result.stdout.split())
    assert "cost (batch prices)" in out and "all online" in out
    state = orjson.loads((run / "batches.json").read_bytes())
    assert all(b["merged"] and b["batch_id"] for b in state["batches"])
    assert KEY not in result.stdout + result.stderr
    for path in run.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    with start_fake_server(api_key=KEY, batches=FakeBatches()) as server:
        nothing = run_cli([*cli_args(persona, run, 20, server.base_url), "--cancel-batches"],
                          OPENAI_API_KEY=KEY)  # fmt: skip
    assert nothing.returncode == 0 and "nothing to cancel" in nothing.stdout
    assert "cancelled batches keep" not in nothing.stdout


@pytest.mark.parametrize("fallback", ["batch", "online"])
def test_expired_batch_half_answered_rest_asked_once(tmp_path: Path, fallback: str) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    plans = [BatchPlan(outcome="expired", answer_fraction=0.5), BatchPlan()]
    with start_fake_server(batches=FakeBatches(plans)) as server:
        result = run_cli(
            cli_args(persona, run, 17, server.base_url, *FAST, "--batch-fallback", fallback)
        )
        created = list(server.batches.created)
        online = list(server.arrivals)  # requests to /v1/chat/completions
        asked = dict(server.asked)
    assert result.returncode == 0, result.stdout + result.stderr
    _all_answered(run, 20)
    assert max(asked.values()) == 1 and len(asked) == 20  # nothing answered is asked again
    if fallback == "batch":
        assert len(created) == 2 and len(_input_ids(server, created[1])) == 10
        assert not online
    else:
        assert len(created) == 1 and len(online) == 10


def test_refused_lines_and_a_failed_batch_are_failures_not_retried_forever(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server(batches=FakeBatches()) as server:
        server.faults = [Fault("status", status=400, match="Held-out question 2")]
        refused = run_cli(cli_args(persona, run, 5, server.base_url, *FAST))
        assert len(server.batches.created) == 1  # a 400 is not asked again in a follow-up
        args = cli_args(persona, tmp_path / "other", 5, server.base_url, *FAST)
        args[args.index("fake-teacher")] = "no-such-model"
        failed = run_cli(args)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert [f["prompt"] for f in failures(run)] == ["Held-out question 2?"]
    assert len(samples(run)) == 7
    assert failed.returncode == 1 and "no-such-model" in " ".join(failed.stdout.split())
    assert len(failures(tmp_path / "other")) == 8


def test_an_endpoint_without_batches_is_one_clear_line(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    with start_fake_server() as server:  # chat only
        result = run_cli(cli_args(persona, tmp_path / "run", 5, server.base_url, *FAST))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "/v1/batches" in result.stderr and "--write-batch-file" in result.stderr


@pytest.mark.slow
def test_kill_9_while_polling_then_rerun_submits_nothing_again(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server(batches=FakeBatches([BatchPlan(in_progress_s=4.0)])) as server:
        args = cli_args(persona, run, 30, server.base_url, *FAST, "--batch-max-requests", "20")
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env()
        )
        _wait_for_batch(run, proc)
        proc.kill()  # SIGKILL while it waits (or still submits the second batch)
        proc.wait()
        before = len(server.batches.created), server.batches.uploads
        result = run_cli(args)
        after = len(server.batches.created), server.batches.uploads
        asked = dict(server.asked)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming" in result.stdout
    _all_answered(run, 33)
    assert max(asked.values()) == 1 and len(asked) == 33
    # no batch twice; a file the killed command uploaded but had not recorded yet is uploaded
    # again (the orphan is never made a batch: the server drops it after 30 days)
    assert after[0] == 2 and 2 <= after[1] <= 3 and before[0] >= 1


@pytest.mark.slow
def test_ctrl_c_leaves_batches_running_cancel_then_collect(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    plans = [BatchPlan(in_progress_s=600.0), BatchPlan()]  # ends only by the cancel
    with start_fake_server(batches=FakeBatches(plans)) as server:
        args = cli_args(persona, run, 20, server.base_url, *FAST)
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
        )
        _wait_for_batch(run, proc)
        time.sleep(1.0)  # a few polls
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        text = " ".join(out.split())
        assert "keep running" in text and "--cancel-batches" in text and "Traceback" not in err
        first = server.batches.batches[server.batches.created[0]]
        assert first.status == "in_progress"  # Ctrl-C did not cancel it
        cancel = run_cli([*args, "--cancel-batches"])
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        assert server.batches.cancels == 1 and "--batch-api" in cancel.stdout
        collect = run_cli(args)
        asked = dict(server.asked)
        created = list(server.batches.created)
    assert collect.returncode == 0, collect.stdout + collect.stderr
    _all_answered(run, 23)
    assert len(created) == 2 and max(asked.values()) == 1  # what the cancelled one answered stays


def test_online_summary_prices_a_known_model_and_what_the_batch_api_would_cost(
    tmp_path: Path,
) -> None:
    """Without --price-in/--price-out, a dated snapshot of a listed model gets its list price;
    the online summary says what the same answers would cost through --batch-api (half)."""
    from promptdistill.sampling.cost import LIST_PRICES

    persona = write_persona(tmp_path)
    model = "gpt-4o-mini-2024-07-18"
    with start_fake_server(models=(model,)) as server:
        args = cli_args(persona, tmp_path / "run", 5, server.base_url)
        args[args.index("fake-teacher")] = model
        result = run_cli(args, COLUMNS="200")
    assert result.returncode == 0, result.stdout + result.stderr
    out = " ".join(result.stdout.replace("│", " ").split())
    records = samples(tmp_path / "run")
    n_in = sum(r["usage"]["prompt_tokens"] for r in records)
    n_out = sum(r["usage"]["completion_tokens"] for r in records)
    p_in, p_out = LIST_PRICES["gpt-4o-mini"]
    online = (n_in * p_in + n_out * p_out) / 1e6
    assert f"cost (online prices) ${online:.4f} (by --batch-api: ${online / 2:.4f})" in out, out
