"""`sample --write-batch-file` / `--read-batch-file` as a user runs them (issue #15): the CLI as
a subprocess, the results made by the fake server's `run_batch` (what `vllm run-batch` does)."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from fake_batches import FakeBatches
from fake_openai import Fault, start_fake_server
from fixtures_openai import (
    answer,
    cli_args,
    failures,
    one_line_error,
    run_cli,
    samples,
    user_prompt,
    write_persona,
)


def _offline_args(persona: Path, run: Path, n: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "promptdistill", "sample", str(persona), "--run", str(run),
        "-n", str(n), "--model", "fake-teacher", *extra,
    ]  # fmt: skip


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines() if x.strip()]


def test_write_then_read_gives_every_prompt_one_checked_answer(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server() as plain:  # the requests online sampling sends, for comparison
        assert run_cli(cli_args(persona, tmp_path / "online", 30, plain.base_url)).returncode == 0
        online_bodies = dict(plain.bodies)
    with start_fake_server(batches=FakeBatches()) as server:
        first = tmp_path / "batch.jsonl"
        wrote = run_cli(_offline_args(persona, run, 30, "--write-batch-file", str(first)))
        assert wrote.returncode == 0, wrote.stderr
        assert "vllm run-batch -i" in wrote.stdout and "--read-batch-file" in wrote.stdout
        requests = _lines(first)
        assert len(requests) == 33 and len({r["custom_id"] for r in requests}) == 33
        for r in requests:
            assert r["method"] == "POST" and r["url"] == "/v1/chat/completions"
            prompt = r["body"]["messages"][-1]["content"]
            assert r["body"] == online_bodies[prompt]  # exactly what online sampling sends
        assert samples(run) == []  # no calls made
        p1, p2, p3 = (r["body"]["messages"][-1]["content"] for r in requests[5:8])
        server.faults = [
            Fault("status", status=500, match=p1, first=1),  # an error line, asked again
            Fault("empty", match=p2, first=1),  # an empty answer: a failed line
            Fault("length", match=p3),  # truncated: kept and flagged
        ]

        results = tmp_path / "results.jsonl"
        out = server.batches.run_batch(first.read_bytes())
        kept = out.splitlines()
        # a torn copy: a duplicate answer, a line of another run, and garbage
        extra = [kept[-1], b'{"custom_id": "other:123", "response": null}', b"{not json"]
        results.write_bytes(b"\n".join(kept + extra) + b"\n")
        read = run_cli(_offline_args(persona, run, 30, "--read-batch-file", str(results)))
        assert read.returncode == 1, read.stdout + read.stderr
        text = " ".join(read.stdout.split())
        assert "empty answer" in text and "500" in text and "no prompt of this run" in text
        assert "--write-batch-file" in text  # what to do next
        got = samples(run)
        failed = failures(run)
        assert len(got) == 31 and {f["prompt"] for f in failed} == {p1, p2}
        assert len({r["id"] for r in got}) == len(got)
        assert all(answer(r) == f"answer to: {user_prompt(r)}" for r in got)
        assert [r["truncated"] for r in got if user_prompt(r) == p3] == [True]
        assert all(r["latency_s"] is None for r in got)  # not measured: not an online latency

        # reading the same file again adds nothing; only the failed prompts are written again
        again = run_cli(_offline_args(persona, run, 30, "--read-batch-file", str(results)))
        assert len(samples(run)) == len(got), again.stdout
        second = tmp_path / "batch-2.jsonl"
        rewrite = run_cli(_offline_args(persona, run, 30, "--write-batch-file", str(second)))
        assert rewrite.returncode == 0, rewrite.stderr
        assert {r["custom_id"] for r in _lines(second)} == {f["id"] for f in failed}
        results.write_bytes(server.batches.run_batch(second.read_bytes()))
        done = run_cli(_offline_args(persona, run, 30, "--read-batch-file", str(results)))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all 33 prompts answered" in " ".join(done.stdout.split())
    final = samples(run)
    assert len(final) == 33 and len({r["id"] for r in final}) == 33
    assert all(answer(r) == f"answer to: {user_prompt(r)}" for r in final)


def test_batch_file_errors_are_one_line(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    missing = run_cli(_offline_args(persona, run, 5, "--read-batch-file", str(tmp_path / "no")))
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "--read-batch-file" in missing.stderr and "cannot read" in missing.stderr
    other = tmp_path / "other.jsonl"
    other.write_text('{"custom_id": "x:1", "response": {"status_code": 200, "body": {}}}\n')
    wrong = run_cli(_offline_args(persona, run, 5, "--read-batch-file", str(other)))
    assert wrong.returncode == 2 and "no prompt of this run" in wrong.stderr
    no_model = run_cli([*_offline_args(persona, run, 5)[:-2], "--write-batch-file", "f.jsonl"])
    assert no_model.returncode == 2 and "--write-batch-file needs --model" in no_model.stderr
    fresh = tmp_path / "fresh"
    turns = run_cli(
        _offline_args(persona, fresh, 5, "--write-batch-file", "f.jsonl", "--turns", "2")
    )
    assert "cannot be asked in a batch" in one_line_error(turns, 2)
    assert not fresh.exists()  # refused before the run is created
