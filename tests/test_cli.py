"""The CLI as a user runs it: a subprocess, real files."""

from __future__ import annotations

import subprocess
import sys

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
