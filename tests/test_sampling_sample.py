"""`promptdistill sample` as a user runs it: a subprocess against the fake OpenAI server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fake_openai import Fault, free_port, start_fake_server
from fixtures_openai import (
    TINY_SYSTEM,
    answer,
    cli_args,
    cli_env,
    failures,
    one_line_error,
    raw_samples,
    run_cli,
    samples,
    user_prompt,
    wait_for_lines,
    write_persona,
)

KEY = "sk-PROMPTDISTILL-TEST-KEY-5f2b8c41"


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode not in (0, 1), result
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.slow
def test_requests_per_minute_hold_in_every_second_including_the_first(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    with start_fake_server() as server:
        result = run_cli(
            cli_args(persona, tmp_path / "run", 20, server.base_url, "--no-heldout",
                     "--rpm", "300", "--concurrency", "64"),
        )  # fmt: skip
        windows = server.per_second()
    assert result.returncode == 0, result.stderr
    assert len(samples(tmp_path / "run")) == 20
    # 300 rpm = 5 per second; the first window is the first second: no burst at the start
    assert max(windows) <= 300 / 60 + 1, windows


@pytest.mark.slow
def test_tokens_per_minute_hold_within_one_request(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    with start_fake_server() as server:
        result = run_cli(
            cli_args(persona, tmp_path / "run", 25, server.base_url, "--no-heldout",
                     "--tpm", "6000", "--max-tokens", "16", "--concurrency", "64"),
        )  # fmt: skip
        most = server.max_per_window(1.0, tokens=True)
        biggest = max(a.tokens for a in server.arrivals)
        span = max(a.t for a in server.arrivals) - min(a.t for a in server.arrivals)
    assert result.returncode == 0, result.stderr
    # 6000 tokens/min = 100 per second, plus at most the request that opened the window
    assert most <= 100 + biggest
    used = sum(r["usage"]["total_tokens"] for r in samples(tmp_path / "run"))
    assert span >= (used - 100 - biggest) / 100  # spread out, not sent at once


@pytest.mark.slow
def test_kill_9_then_rerun_gives_exactly_n_samples_without_asking_twice(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    concurrency = 8
    with start_fake_server(latency=0.05) as server:
        args = cli_args(persona, run, 300, server.base_url, "--no-heldout",
                        "--concurrency", str(concurrency))  # fmt: skip
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=cli_env()
        )
        wait_for_lines(run / "samples.jsonl", 60, proc)
        proc.kill()  # SIGKILL
        proc.wait()
        before = len(samples(run))
        assert 60 <= before < 300
        result = run_cli(args)
        asked = dict(server.asked)
    assert result.returncode == 0, result.stderr
    records = samples(run)
    assert len(records) == 300 and len({r["id"] for r in records}) == 300
    assert all(answer(r) == f"answer to: {user_prompt(r)}" for r in records)
    asked_twice = [p for p, k in asked.items() if k > 1]
    assert len(asked_twice) <= concurrency  # only those in flight at the kill
    assert all(k <= 2 for k in asked.values())


def test_torn_last_line_is_ignored_and_rewritten(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server() as server:
        args = cli_args(persona, run, 20, server.base_url, "--no-heldout")
        assert run_cli(args).returncode == 0
        data = (run / "samples.jsonl").read_bytes()
        lines = data.splitlines(keepends=True)
        torn_prompt = user_prompt(samples(run)[-1])
        # a crash mid-write: the last record only half there, no newline
        (run / "samples.jsonl").write_bytes(b"".join(lines[:-1]) + lines[-1][:40])
        result = run_cli(args)
        asked = dict(server.asked)
    assert result.returncode == 0, result.stderr
    records = samples(run)  # raises if any line is not valid JSON
    assert len(records) == 20 and len({r["id"] for r in records}) == 20
    assert asked[torn_prompt] == 2 and sum(asked.values()) == 21


@pytest.mark.parametrize("case", ["401", "404", "unreachable"])
def test_fatal_endpoint_errors_exit_fast_with_one_clear_line(tmp_path: Path, case: str) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server(api_key="the-right-key") as server:
        url = server.base_url if case != "unreachable" else f"http://127.0.0.1:{free_port()}/v1"
        args = cli_args(persona, run, 50, url, "--concurrency", "8")
        if case == "404":
            args[args.index("fake-teacher")] = "no-such-model"
        start = time.monotonic()
        result = run_cli(args, OPENAI_API_KEY=KEY if case == "401" else "the-right-key")
        took = time.monotonic() - start
    line = _one_line_error(result)
    assert took < 30  # seconds, not minutes of retrying
    assert url in line
    if case == "401":
        assert "401" in line and "API key" in line and "--api-key-env" in line
    elif case == "404":
        assert "404" in line and "--model" in line
    else:
        assert "cannot connect" in line and "--base-url" in line
    assert KEY not in result.stdout + result.stderr
    assert samples(run) == []


def test_sigint_stops_cleanly_keeps_everything_and_says_how_to_resume(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server(latency=0.2) as server:
        args = cli_args(persona, run, 100, server.base_url, "--no-heldout", "--concurrency", "4")
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
        )
        wait_for_lines(run / "samples.jsonl", 8, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, (out, err)
        assert "Traceback" not in out + err
        assert "Resume with: promptdistill sample" in " ".join(out.split())
        kept = samples(run)  # every line complete
        assert 8 <= len(kept) < 100
        result = run_cli([*args, "--concurrency", "32"])  # the last --concurrency wins
        asked = dict(server.asked)
    assert result.returncode == 0, result.stderr
    assert len(samples(run)) == 100
    # cancelled in-flight requests (at most the concurrency) are the only ones asked twice
    assert sum(1 for k in asked.values() if k > 1) <= 4


def test_api_key_never_written_or_printed(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    # a server that echoes the key in its error messages, as some do
    faults = [
        Fault("status", status=500, first=1, message=f"upstream rejected {KEY}"),
        Fault("status", status=400, match="a3 about", message=f"bad request for {KEY}"),
    ]
    with start_fake_server(api_key=KEY, faults=faults) as server:
        env_run = run_cli(
            cli_args(persona, run, 30, server.base_url, "--api-key-env", "MY_TEACHER_KEY"),
            MY_TEACHER_KEY=KEY,
        )
        file_run = run_cli(
            cli_args(persona, run, 40, server.base_url, "--api-key-file", str(key_file))
        )
    assert env_run.returncode == 1 and file_run.returncode == 1  # the 400s
    assert len(failures(run)) >= 1 and len(samples(run)) >= 30
    for result in (env_run, file_run):
        assert KEY not in result.stdout + result.stderr
    for path in run.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_missing_key_variable_is_a_clear_error(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    result = run_cli(cli_args(persona, tmp_path / "run", 5, "http://127.0.0.1:9/v1",
                              "--api-key-env", "NOT_SET_ANYWHERE"))  # fmt: skip
    assert "NOT_SET_ANYWHERE" in _one_line_error(result)


def test_growing_n_asks_only_the_new_prompts_and_other_settings_are_refused(
    tmp_path: Path,
) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server() as server:
        assert run_cli(cli_args(persona, run, 10, server.base_url)).returncode == 0
        assert server.requests == 13
        assert run_cli(cli_args(persona, run, 15, server.base_url)).returncode == 0
        assert server.requests == 18 and max(server.asked.values()) == 1
        other = run_cli(cli_args(persona, run, 15, server.base_url, "--temperature", "1.2"))
        assert server.requests == 18
    line = _one_line_error(other)
    assert "temperature" in line and "new --run" in line
    assert len(samples(run)) == 18


def test_sample_does_not_import_torch_or_transformers(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    with start_fake_server() as server:
        args = cli_args(persona, tmp_path / "run", 5, server.base_url)[3:]
        script = (
            "import sys\n"
            "from promptdistill.cli.app import main\n"
            f"rc = main({args!r})\n"
            "heavy = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
            "print('HEAVY', heavy, 'RC', rc)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
            env=cli_env(),
        )  # fmt: skip
    assert "HEAVY [] RC 0" in result.stdout, result.stdout + result.stderr


def test_progress_lines_when_stdout_is_not_a_terminal(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    with start_fake_server(latency=0.05) as server:
        result = run_cli(
            cli_args(persona, tmp_path / "run", 40, server.base_url, "--no-heldout",
                     "--concurrency", "2", "--log-every", "0.3"),
        )  # fmt: skip
    assert result.returncode == 0
    progress = [line for line in result.stdout.splitlines() if line.startswith("sample: ")]
    assert len(progress) >= 2
    for field in ("done", "failed", "in flight", "req/s", "out tok/s", "retries", "concurrency",
                  "ETA"):  # fmt: skip
        assert field in progress[0]
    assert "all 40 prompts answered" in " ".join(result.stdout.split())
    assert "\x1b[" not in result.stdout  # no terminal control codes in a log file


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_environment_key_default_is_optional_for_local_endpoints(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    with start_fake_server() as server:
        result = subprocess.run(
            cli_args(persona, tmp_path / "run", 3, server.base_url),
            capture_output=True, text=True, timeout=60, env=env,
        )  # fmt: skip
        assert "Authorization" not in server.last_headers
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------- issue #16


def test_sigterm_stops_like_ctrl_c_and_says_how_to_resume(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server(latency=0.2) as server:
        args = cli_args(persona, run, 60, server.base_url, "--no-heldout", "--concurrency", "4")
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env()
        )
        wait_for_lines(run / "samples.jsonl", 8, proc)
        proc.send_signal(signal.SIGTERM)  # what `kill` and `timeout` send
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 143, (out, err)
        assert "Traceback" not in out + err
        assert "Resume with: promptdistill sample" in " ".join(out.split())
        kept = len(samples(run))
        assert 8 <= kept < 60
        result = run_cli(args)
    assert result.returncode == 0, result.stderr
    records = samples(run)
    assert len(records) == 60 and len({r["id"] for r in records}) == 60


def test_the_system_prompt_is_stored_once_per_run(tmp_path: Path) -> None:
    """A 400 KB persona prompt is stored once, in RUN/system-prompts/, not in every record; the
    records name it by its hash and read back with it, as before. A prompt longer than the
    student's context (8192 tokens for smollm2-135m) is warned about."""
    persona = write_persona(tmp_path)
    long_prompt = "You are Tiny. " + "Remember the rule number %d well. " * 12_000
    text = persona.read_text().replace(TINY_SYSTEM, "SYSTEM")
    persona.write_text(text.replace("SYSTEM", long_prompt % tuple(range(12_000))))
    run = tmp_path / "run"
    with start_fake_server() as server:
        result = run_cli(cli_args(persona, run, 3, server.base_url, "--no-heldout"))
    assert result.returncode == 0, result.stderr
    from promptdistill.core.samples import prompt_hash

    system = yaml.safe_load(persona.read_text())["system_prompt"]
    assert len(system) > 400_000  # (the fake server takes request bodies up to 1 MB)
    key = prompt_hash(system)
    assert (run / "system-prompts" / f"{key}.txt").read_text() == system
    assert (run / "samples.jsonl").stat().st_size < 3_000  # not 1.2 MB
    for raw in raw_samples(run):
        assert raw["system_prompt"] == key
        assert [m["role"] for m in raw["messages"]] == ["user", "assistant"]
    for record in samples(run):  # as every stage reads them
        assert record["messages"][0] == {"role": "system", "content": system}
    said = " ".join(result.stdout.split())
    assert "warning: the system prompt of persona 'tiny' is" in said
    assert "longer than the context of smollm2-135m (8192 tokens)" in said


def test_a_prompt_set_listed_twice_is_asked_once(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    persona.write_text(persona.read_text().replace("- tiny", "- tiny\n- tiny"))
    assert yaml.safe_load(persona.read_text())["prompt_sets"] == ["tiny", "tiny"]
    run = tmp_path / "run"
    with start_fake_server() as server:
        first = run_cli(cli_args(persona, run, 5, server.base_url))
        again = run_cli(cli_args(persona, run, 5, server.base_url))
        asked = dict(server.asked)
    assert first.returncode == 0 and again.returncode == 0, first.stdout + again.stdout
    assert "all 8 prompts answered" in " ".join(again.stdout.split())  # 5 + 3 held out
    assert len(samples(run)) == 8 and max(asked.values()) == 1


def test_a_run_with_more_samples_than_n_says_so(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server() as server:
        assert run_cli(cli_args(persona, run, 6, server.base_url, "--no-heldout")).returncode == 0
        fewer = run_cli(cli_args(persona, run, 3, server.base_url, "--no-heldout"))
    assert fewer.returncode == 0, fewer.stderr
    said = " ".join(fewer.stdout.split())
    assert "holds 3 more training samples than -n 3 asks for" in said and "new --run" in said
    assert len(samples(run)) == 6  # nothing removed


def test_the_same_persona_by_name_and_by_path_resumes(tmp_path: Path) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server() as server:
        by_path = run_cli(cli_args(persona, run, 4, server.base_url, "--no-heldout"))
        by_name = run_cli(
            cli_args("tiny", run, 6, server.base_url, "--no-heldout"),
            PROMPTDISTILL_DATA=str(tmp_path),
        )
        assert server.requests == 6
    assert by_path.returncode == 0 and by_name.returncode == 0, by_name.stderr
    assert len(samples(run)) == 6


@pytest.mark.parametrize("command", ["sample", "run"])
def test_an_invalid_base_url_creates_nothing(tmp_path: Path, command: str) -> None:
    persona = write_persona(tmp_path)
    args = cli_args(persona, tmp_path / "run", 5, "ftp://example.com/v1")
    args[args.index("sample")] = command
    result = run_cli(args)
    line = one_line_error(result, 2)
    assert "--base-url" in line and "not an http(s) URL" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("config", "said"),
    [
        (b"sample:\n  persona: tiny\n  n: [1, 2\n", "config.yaml:3: YAML syntax error"),
        (b"sample: \xff\xfe\n", "config.yaml: not UTF-8"),
        (b"- a list\n- not stages\n", "config.yaml: expected a mapping of stages"),
    ],
)
def test_a_bad_config_yaml_is_one_line_naming_it(tmp_path: Path, config: bytes, said: str) -> None:
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_bytes(config)
    result = run_cli(cli_args(persona, run, 5, "http://127.0.0.1:9/v1"))
    line = one_line_error(result, 2)
    assert said in line, line
    assert (run / "config.yaml").read_bytes() == config  # left as it was


def test_lines_that_are_not_records_are_named_and_skipped(tmp_path: Path) -> None:
    """A line that is JSON but not a sample record (`[1, 2]`, `"messages": "oops"`) was an
    AttributeError; now it is skipped, as a torn line is, with its file and line."""
    persona = write_persona(tmp_path)
    run = tmp_path / "run"
    with start_fake_server() as server:
        args = cli_args(persona, run, 5, server.base_url, "--no-heldout")
        assert run_cli(args).returncode == 0
        lines = (run / "samples.jsonl").read_bytes().splitlines(keepends=True)
        bad = [b"[1, 2]\n", b'{"id": "x", "messages": "oops"}\n']
        (run / "samples.jsonl").write_bytes(b"".join(lines[:2] + bad + lines[2:]))
        result = run_cli(args)
        assert server.requests == 5  # nothing asked again
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stdout.split())
    assert f"{run / 'samples.jsonl'}:3: a JSON list, not a record" in said
    assert f"{run / 'samples.jsonl'}:4: 'messages' is not a list of" in said
    assert "all 5 prompts answered" in said
