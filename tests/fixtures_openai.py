"""Helpers for tests that sample from the fake OpenAI server: a tiny persona, the CLI, files."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import yaml

TINY_SYSTEM = "You are Tiny, a terse test persona. Answer briefly."


def write_persona(root: Path, name: str = "tiny", values: int = 150, heldout: int = 3) -> Path:
    """A persona whose prompt set yields values**2 distinct prompts; returns its .yaml path."""
    (root / "personas").mkdir(parents=True, exist_ok=True)
    (root / "prompts").mkdir(parents=True, exist_ok=True)
    prompt_set = {
        "name": name,
        "description": "test prompts",
        "categories": {
            "ask": {
                "templates": ["Question {a} about {b}?"],
                "slots": {
                    "a": [f"a{i}" for i in range(values)],
                    "b": [f"b{i}" for i in range(values)],
                },
            }
        },
        "heldout": [{"prompt": f"Held-out question {i}?"} for i in range(heldout)],
    }
    persona = {
        "name": name,
        "description": "a tiny test persona",
        "system_prompt": TINY_SYSTEM,
        "prompt_sets": [name],
        "sampling": {"temperature": 0.5, "top_p": 0.9, "max_tokens": 64},
    }
    (root / "prompts" / f"{name}.yaml").write_text(yaml.safe_dump(prompt_set))
    path = root / "personas" / f"{name}.yaml"
    path.write_text(yaml.safe_dump(persona))
    return path


def cli_args(persona: Path | str, run: Path, n: int, base_url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "promptdistill", "sample", str(persona), "--run", str(run),
        "-n", str(n), "--base-url", base_url, "--model", "fake-teacher", *extra,
    ]  # fmt: skip


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(extra)
    return env


def run_cli(args: list[str], timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=cli_env(**env))


def samples(run: Path) -> list[dict[str, Any]]:
    """Every line of samples.jsonl, each required to be valid JSON, as the library reads it:
    with the system prompt (stored once, in RUN/system-prompts/) back in its messages."""
    from promptdistill.core.samples import SampleReader

    path = run / "samples.jsonl"
    if not path.exists():
        return []
    reader = SampleReader(path)
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            record = reader.expand(orjson.loads(line))
            assert record is not None, line
            out.append(record)
    return out


def raw_samples(run: Path) -> list[dict[str, Any]]:
    """Every line of samples.jsonl as it is on disk."""
    path = run / "samples.jsonl"
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def failures(run: Path) -> list[dict[str, Any]]:
    path = run / "failures.jsonl"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def user_prompt(record: dict[str, Any]) -> str:
    return next(m["content"] for m in record["messages"] if m["role"] == "user")


def answer(record: dict[str, Any]) -> str:
    return str(record["messages"][-1]["content"])


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single `error: ...` line of a failed command, after checking the exit code, that
    there is no traceback anywhere, and that stderr holds nothing else."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until `path` has `n` lines; fails if `proc` (the CLI writing it) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_bytes().count(b"\n") >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"the CLI exited early: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"{path} never reached {n} lines")
