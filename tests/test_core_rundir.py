"""One run directory, one writer (issue #16): RUN/.lock, held by every command that writes a run.

A second command exits at once with one line naming the PID that holds the run; a killed
holder never leaves a stale lock (the kernel drops a flock with its process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai import start_fake_server
from fixtures_openai import (
    cli_args,
    cli_env,
    one_line_error,
    run_cli,
    samples,
    write_persona,
)

from promptdistill.core.rundir import BUSY_EXIT, RunDir


def _busy(result: subprocess.CompletedProcess[str], run: Path, pid: int) -> None:
    line = one_line_error(result, BUSY_EXIT)
    assert str(run) in line and f"PID {pid}" in line, line


def _wait_for_holder(run: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until `proc` holds the run's lock (it has written its PID into RUN/.lock)."""
    lock = run / ".lock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lock.exists() and lock.read_text().strip() == str(proc.pid):
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("the first command never took the lock")


def test_a_second_sample_exits_at_once_and_a_killed_holder_frees_the_run(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server(latency=0.25) as server:
        args = cli_args(persona, run, 24, server.base_url, "--no-heldout", "--concurrency", "2")
        first = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
        )
        _wait_for_holder(run, first)
        started = time.monotonic()
        second = run_cli(args)
        assert time.monotonic() - started < 20  # at once, not after the first is done
        _busy(second, run, first.pid)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 0, err
        assert "all 24 prompts answered" in out
        records = samples(run)
        # the teacher was asked once per prompt: the second command sent nothing
        assert len(records) == 24 and len({r["id"] for r in records}) == 24
        assert server.requests == 24

        # kill -9 in the middle of a run: the next command takes the run at once
        more = cli_args(persona, run, 60, server.base_url, "--no-heldout", "--concurrency", "2")
        victim = subprocess.Popen(
            more, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env()
        )
        _wait_for_holder(run, victim)
        while len(samples(run)) < 28:
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        again = run_cli(more)
    assert again.returncode == 0, again.stderr
    records = samples(run)
    assert len(records) == 60 and len({r["id"] for r in records}) == 60


def _every_command(persona: Path, run: Path, merged: Path) -> list[list[str]]:
    """sample, train, eval, compare, export and run on `run`, each as the CLI is called."""
    cli = [sys.executable, "-m", "promptdistill"]
    url = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    return [
        cli_args(persona, run, 2, "http://127.0.0.1:9/v1"),
        [*cli, "train", str(run), "--steps", "1"],
        [*cli, "eval", str(run), "--no-judge"],
        [*cli, "compare", str(run), "--prompt", "hi"],
        [*cli, "export", str(run), "--merged", str(merged)],
        [*cli, "run", str(persona), "--run", str(run), *url],
    ]


@pytest.mark.slow
def test_every_command_that_writes_a_run_refuses_a_held_run(tmp_path: Path) -> None:
    """sample, train, eval, compare, export and run each name the PID that holds the run,
    exit at once, and change nothing in it."""
    persona = write_persona(tmp_path)
    run = RunDir(tmp_path / "run").create()
    run.samples.write_bytes(b'{"id": "a", "split": "train", "messages": []}\n')
    commands = _every_command(persona, run.path, tmp_path / "merged")
    with run.locked():
        before = sorted(p.name for p in run.path.iterdir())
        for args in commands:
            _busy(run_cli(args), run.path, os.getpid())
    assert sorted(p.name for p in run.path.iterdir()) == before
    assert run.samples.read_bytes() == b'{"id": "a", "split": "train", "messages": []}\n'
    assert not (tmp_path / "merged").exists()


@pytest.mark.slow
def test_every_command_names_a_broken_config_yaml_before_it_works(tmp_path: Path) -> None:
    """A config.yaml that is not YAML was a traceback (issue #16), and `train` found out only
    after building the datums and loading the model; each command now stops first, with the
    file and line, and leaves the run as it was."""
    persona = write_persona(tmp_path)
    run = RunDir(tmp_path / "run").create()
    run.samples.write_bytes(b'{"id": "a", "split": "train", "messages": []}\n')
    run.adapter.mkdir()
    (run.adapter / "adapter_config.json").write_text('{"base_model_name_or_path": "/no/model"}')
    broken = b"sample:\n  persona: [tiny\n"
    run.config_path.write_bytes(broken)
    commands = _every_command(persona, run.path, tmp_path / "merged")
    before = sorted(p.name for p in run.path.iterdir())
    for args in commands:
        line = one_line_error(run_cli(args), 2)
        assert f"{run.config_path}:2: YAML syntax error" in line, (args[3], line)
        assert sorted(p.name for p in run.path.iterdir() if p.name != ".lock") == before
    assert run.config_path.read_bytes() == broken and not (tmp_path / "merged").exists()
