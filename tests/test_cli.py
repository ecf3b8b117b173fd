"""The CLI as a user runs it: a subprocess, real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "promptdistill", *args], capture_output=True, text=True, timeout=300
    )


def test_help_lists_the_commands() -> None:
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("personas", "prompts"):
        assert command in result.stdout


def test_prompts_preview_gives_5000_distinct_beethoven_prompts() -> None:
    result = _cli("prompts", "beethoven", "-n", "5000")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 5000 and len(set(lines)) == 5000


def test_prompts_preview_is_seeded() -> None:
    a = _cli("prompts", "beethoven", "-n", "20", "--seed", "3").stdout
    b = _cli("prompts", "beethoven", "-n", "20", "--seed", "3").stdout
    c = _cli("prompts", "beethoven", "-n", "20", "--seed", "4").stdout
    assert a == b != c


def test_bad_flag_is_one_line_without_traceback() -> None:
    result = _cli("prompts", "beethoven", "-n", "0")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "-n" in result.stderr


@pytest.mark.slow
def test_personas_lists_three_with_token_counts() -> None:
    result = _cli("personas")
    assert result.returncode == 0, result.stderr
    for name in ("beethoven", "nimbus-support", "mathtutor"):
        assert name in result.stdout
    # the Beethoven prompt is ~600 words, so several hundred SmolLM2 tokens
    row = next(line for line in result.stdout.splitlines() if "beethoven" in line)
    counts = [int(tok) for tok in row.replace("│", " ").split() if tok.isdigit()]
    assert any(500 < c < 1500 for c in counts), row


# --------------------------------------------------------------------------- issue #16: flag limits


@pytest.mark.parametrize(
    ("command", "flag", "value"),
    [
        ("sample", "--top-p", "0"),
        ("sample", "--max-tokens", "10000000"),
        ("sample", "--concurrency", "1000000"),
        ("sample", "--log-every", "-1"),
        ("sample", "--rpm", "0.001"),
        ("run", "--concurrency", "1000000"),
        ("run", "--rpm", "0.5"),
        ("run", "--lr", "inf"),
        ("train", "--lr", "inf"),
        ("train", "--lr", "nan"),
        ("compare", "--max-tokens", "10000000"),
        ("eval", "--max-new-tokens", "0"),
    ],
)
def test_a_flag_out_of_its_range_is_one_line_naming_it(
    tmp_path: Path, command: str, flag: str, value: str
) -> None:
    """Every such value was accepted and sent, ran forever, or printed a pydantic dump."""
    from fixtures_openai import one_line_error, write_persona

    persona = str(write_persona(tmp_path / "data"))
    run = tmp_path / "run"
    if command in ("train", "compare", "eval"):
        run.mkdir()
    args = {
        "sample": ["sample", persona, "--run", str(run), "-n", "2"],
        "run": ["run", persona, "--run", str(run)],
        "train": ["train", str(run)],
        "compare": ["compare", str(run), "--prompt", "hi"],
        "eval": ["eval", str(run)],
    }[command]
    url = ["--base-url", "http://127.0.0.1:9/v1", "--model", "m"]
    result = _cli(*args, *(url if command in ("sample", "run") else []), flag, value)
    line = one_line_error(result, 2)
    assert flag in line, line
    assert "pydantic" not in line and "errors.pydantic.dev" not in line
    assert sorted(p.name for p in run.iterdir()) == [] if run.exists() else True
