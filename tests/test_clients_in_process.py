"""The embedded teacher in this process (clients/in_process.py): requests sent at once share a
batch and its cached system prompt; a prompt too long for the model fails alone; `sample` with
no --base-url goes through it, through the CLI."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny import SYSTEM_PROMPT, USER_PROMPTS

from promptdistill.clients.answers import ChatResult, PromptError
from promptdistill.clients.endpoint import chat_body
from promptdistill.clients.in_process import InProcessTeacher
from promptdistill.core.samples import SampleReader
from promptdistill.models.chat import Renderer

REPO = Path(__file__).resolve().parents[1]


def body(system: str | None, user: str, max_tokens: int = 6) -> dict[str, Any]:
    messages = [{"role": "system", "content": system}] if system else []
    return chat_body("tiny", [*messages, {"role": "user", "content": user}], 0.0, 1.0,
                     max_tokens, None)  # fmt: skip


async def ask_all(teacher: InProcessTeacher, bodies: list[dict[str, Any]]) -> list[Any]:
    async with teacher:
        return await asyncio.gather(*(teacher.chat(b) for b in bodies), return_exceptions=True)


def test_requests_sent_together_share_a_batch_per_system_prompt(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    teacher = InProcessTeacher(model, Renderer(tok), "tiny", batch_size=8)
    other = "you are a plain assistant"
    bodies = [body(SYSTEM_PROMPT, u) for u in USER_PROMPTS[:5]] + [
        body(other, "why"),
        body(other, "how"),
    ]
    results = asyncio.run(ask_all(teacher, bodies))
    assert all(isinstance(r, ChatResult) for r in results), results
    assert teacher.batches == 2  # one per system prompt, not one per request
    for r in results:
        assert r.finish_reason in ("stop", "length") and r.usage["completion_tokens"] <= 6
        assert r.usage["total_tokens"] == r.usage["prompt_tokens"] + r.usage["completion_tokens"]
    assert results[0].usage["prompt_tokens"] > results[5].usage["prompt_tokens"]


def test_a_prompt_too_long_for_the_model_fails_alone(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    teacher = InProcessTeacher(model, Renderer(tok), "tiny")
    long = " ".join(["vienna"] * (teacher.context + 10))
    results = asyncio.run(ask_all(teacher, [body(None, long), body(None, "hello")]))
    assert isinstance(results[0], PromptError) and results[0].status == 400
    assert f"reads at most {teacher.context}" in str(results[0])
    assert isinstance(results[1], ChatResult)


@pytest.mark.slow
def test_sample_without_base_url_answers_in_process(smollm2_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "promptdistill", "sample", "beethoven", "--run", str(run)]
    args = ["--max-tokens", "16", "--no-heldout"]
    first = subprocess.run(
        [*cmd, "-n", "3", *args], cwd=REPO, capture_output=True, text=True, timeout=540
    )
    out = first.stdout + first.stderr
    assert first.returncode == 0, out
    assert "in process" in out and not re.search(r"transformers serve|http://", out), out
    again = subprocess.run(  # a rerun with a larger -n asks only the new prompts
        [*cmd, "-n", "5", *args], cwd=REPO, capture_output=True, text=True, timeout=540
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert re.search(r"answered before this run\s*│\s*3\s", again.stdout), again.stdout

    records = list(SampleReader(run / "samples.jsonl").records())  # system prompt restored
    assert len(records) == 5 and len({r["id"] for r in records}) == 5
    for record in records:
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
        assert "Beethoven" in record["messages"][0]["content"]
        assert record["messages"][2]["content"].strip()
        assert record["teacher"]["base_url"] == "in process"
