"""Multi-turn conversations, `sample --turns K` (issue #14): the teacher as a user simulator
writes each next user turn; the records, failures and resume through the real CLI and the
fake server; datums weight every turn; on-policy training keeps to what it supports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from fake_openai import Fault, start_fake_server
from fixtures_openai import cli_args, failures, run_cli, samples, write_persona
from tiny import make_tiny_model, make_tiny_tokenizer

from promptdistill.core.config import TeacherConfig
from promptdistill.datums.build import conversation_to_datum
from promptdistill.models.chat import Renderer
from promptdistill.sampling.turns import SIMULATOR_PROMPT, clean_user_turn
from promptdistill.training.scorer import EndpointScorer

MARK = "next message of the USER"
assert MARK in SIMULATOR_PROMPT


class Teacher:
    """Answers as the persona, or, asked as the user simulator, writes a labelled, quoted
    follow-up that names the turn it follows. Keeps every request's messages."""

    def __init__(self, empty_after: int | None = None) -> None:
        self.seen: list[list[dict[str, Any]]] = []
        self.empty_after = empty_after

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        self.seen.append(messages)
        if MARK not in messages[0]["content"]:
            return f"answer to: {messages[-1]['content']}"
        answered = messages[-1]["content"].count("Assistant: ")
        if self.empty_after is not None and answered >= self.empty_after:
            return 'User: ""'
        return f'User: "Follow-up {answered}, tell me more?"\nAssistant: sure'


def roles(record: dict[str, Any]) -> list[str]:
    return [m["role"] for m in record["messages"]]


def test_three_turn_conversations_are_written_whole(tmp_path: Path) -> None:
    persona = write_persona(tmp_path, heldout=2)
    teacher = Teacher()
    with start_fake_server(responder=teacher) as server:
        r = run_cli(cli_args(persona, tmp_path / "run", 4, server.base_url, "--turns", "3"))
        assert r.returncode == 0, r.stderr[-2000:]
        assert server.requests == 6 * 5  # per conversation: 3 answers, 2 simulated user turns
        again = run_cli(cli_args(persona, tmp_path / "run", 4, server.base_url, "--turns", "3"))
        assert again.returncode == 0 and server.requests == 30, "a rerun asks nothing again"
    records = samples(tmp_path / "run")
    assert len(records) == 6
    for rec in records:
        assert roles(rec) == ["system", "user", "assistant"] + ["user", "assistant"] * 2
        assert rec["turns"] == 3 and len(rec["finish_reasons"]) == 3
        users = [m["content"] for m in rec["messages"] if m["role"] == "user"]
        # the simulator's label, quotes and the answer it wrote itself are stripped
        assert users[1:] == ["Follow-up 1, tell me more?", "Follow-up 2, tell me more?"]
        answers = [m["content"] for m in rec["messages"] if m["role"] == "assistant"]
        assert answers == [f"answer to: {u}" for u in users]
        assert rec["simulator_usage"]["completion_tokens"] > 0
        assert all(MARK not in m["content"] for m in rec["messages"])  # never its prompt
    # the teacher saw the whole conversation, with the persona's system prompt, at every turn
    third = [m for m in teacher.seen if m[-1]["content"] == "Follow-up 2, tell me more?"][0]
    assert [m["role"] for m in third] == ["system", "user", "assistant", "user", "assistant",
                                          "user"]  # fmt: skip
    # the simulator saw a transcript, without the persona's system prompt
    simulator = [m for m in teacher.seen if MARK in m[0]["content"]]
    assert all("Tiny" not in m[-1]["content"] for m in simulator)


def test_a_failed_turn_fails_the_conversation_and_is_asked_again(tmp_path: Path) -> None:
    persona = write_persona(tmp_path, heldout=0)
    fault = Fault("status", status=400, match="Follow-up 2", message="too long")
    with start_fake_server(responder=Teacher(), faults=[fault]) as server:
        r = run_cli(cli_args(persona, tmp_path / "run", 3, server.base_url, "--turns", "3"))
    assert r.returncode == 1, r.stderr[-2000:]
    assert samples(tmp_path / "run") == []
    failed = failures(tmp_path / "run")
    assert len(failed) == 3
    assert all(
        "(at turn 3 of 3)" in f["error"] and f["prompt"].startswith("Question") for f in failed
    )
    with start_fake_server(responder=Teacher()) as server:
        r = run_cli(cli_args(persona, tmp_path / "run", 3, server.base_url, "--turns", "3"))
        assert r.returncode == 0, r.stderr[-2000:]
        assert server.requests == 3 * 5  # from the first turn again
    assert len(samples(tmp_path / "run")) == 3 and failures(tmp_path / "run") == []
    # another number of turns is other samples: refused in this run directory
    with start_fake_server(responder=Teacher()) as server:
        r = run_cli(cli_args(persona, tmp_path / "run", 3, server.base_url, "--turns", "2"))
    assert r.returncode != 0 and "turns=3" in r.stderr and "--turns" in r.stderr


def test_a_simulator_with_nothing_to_say_ends_the_conversation(tmp_path: Path) -> None:
    persona = write_persona(tmp_path, heldout=0)
    with start_fake_server(responder=Teacher(empty_after=2)) as server:
        r = run_cli(cli_args(persona, tmp_path / "run", 2, server.base_url, "--turns", "4"))
    assert r.returncode == 0, r.stderr[-2000:]
    for rec in samples(tmp_path / "run"):
        assert rec["turns"] == 2 and roles(rec)[-1] == "assistant" and len(roles(rec)) == 5


@pytest.mark.parametrize(
    ("reply", "turn"),
    [
        ('User: "Why so?"', "Why so?"),
        ("**User:** Why so?\nAssistant: Because.", "Why so?"),
        ("“Why so?”", "Why so?"),
        ("Why so?", "Why so?"),
        ("User:", ""),
    ],
)
def test_simulator_replies_are_cleaned(reply: str, turn: str) -> None:
    assert clean_user_turn(reply) == turn


# --------------------------------------------------------------------------- training


MULTI = [
    {"role": "system", "content": "You are Ludwig van Beethoven"},
    {"role": "user", "content": "What do you think of Mozart?"},
    {"role": "assistant", "content": "Mozart was a miracle"},
    {"role": "user", "content": "How do you compose when you cannot hear?"},
    {"role": "assistant", "content": "The music lives in my head."},
]


def test_datums_weight_every_turn_and_cut_turns_do_not_stop(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(make_tiny_tokenizer(tmp_path / "tok"))
    renderer = Renderer(tok)
    d = conversation_to_datum(MULTI, renderer)
    weighted = tok.decode([t for t, w in zip(d.tokens, d.weights, strict=True) if w > 0])
    assert "mozart was a miracle" in weighted and "the music lives in my" in weighted
    assert "beethoven" not in tok.decode(d.tokens)  # the system prompt is stripped
    assert weighted.count("<|im_end|>") == 2
    cut = conversation_to_datum(MULTI, renderer, truncated_turns=frozenset({0}))
    weighted = tok.decode([t for t, w in zip(cut.tokens, cut.weights, strict=True) if w > 0])
    assert weighted.count("<|im_end|>") == 1  # the first answer was cut: it did not stop


def test_scorer_scores_the_first_turn_of_a_conversation(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    samples_file = tmp_path / "samples.jsonl"
    samples_file.write_bytes(orjson.dumps({"id": "a", "messages": MULTI}) + b"\n")
    tok = AutoTokenizer.from_pretrained(make_tiny_tokenizer(tmp_path / "tok"))
    teacher = TeacherConfig(base_url="http://127.0.0.1:9/v1", model="m")
    scorer = EndpointScorer(teacher, Renderer(tok), samples_file)
    try:
        assert scorer.prompts["a"] == MULTI[:2]  # the student answers turn 1 (onpolicy.py)
    finally:
        scorer.close()


def test_onpolicy_on_multi_turn_samples_needs_a_kd_share(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "tiny")
    persona = write_persona(tmp_path, heldout=0)
    run = tmp_path / "run"
    with start_fake_server(responder=Teacher()) as server:
        r = run_cli(cli_args(persona, run, 12, server.base_url, "--turns", "2"))
        assert r.returncode == 0, r.stderr[-2000:]
    cmd = [sys.executable, "-m", "promptdistill", "train", str(run), "--student", str(model),
           "--objective", "onpolicy", "--teacher-model", str(model), "--steps", "1"]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "--onpolicy-fraction below 1" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_run_sampled_before_turns_existed_still_resumes(tmp_path: Path) -> None:
    import yaml

    persona = write_persona(tmp_path, heldout=0)
    run = tmp_path / "run"
    with start_fake_server() as server:
        assert run_cli(cli_args(persona, run, 3, server.base_url)).returncode == 0
        config = yaml.safe_load((run / "config.yaml").read_text())
        del config["sample"]["turns"]  # as written before issue #14
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        r = run_cli(cli_args(persona, run, 4, server.base_url))
        assert r.returncode == 0, r.stderr[-2000:]
        assert server.requests == 4
