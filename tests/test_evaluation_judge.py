"""The LLM judge against the real fake OpenAI server over HTTP: blindness, shuffling, parsing,
and malformed replies (retried, then recorded as missing, never invented)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fake_openai import Fault, start_fake_server

from promptdistill.core.config import JudgeConfig
from promptdistill.evaluation.judge import JudgeItem, parse_score, run_judge, summarize

DESCRIPTION = "Ludwig van Beethoven, composer, speaking in Vienna around 1825"


def items(n: int = 6) -> list[JudgeItem]:
    out = []
    for model in ("teacher", "student", "base"):
        for i in range(n):
            out.append(JudgeItem(model, f"p{i}", f"Question {i}?", f"reply-{model}-{i}"))
    return out


def answer_in(messages: list[dict[str, Any]]) -> str:
    m = re.search(r"reply-(\w+)-(\d+)", messages[-1]["content"])
    assert m is not None
    return m.group(0)


@pytest.mark.parametrize(
    "reply, score",
    [
        ("Score: 7", 7.0),
        ("score:10", 10.0),
        ("**Score:** 8/10", 8.0),
        ("The reply is in character. Rating: 6", 6.0),
        ("I thought Score: 3 at first, but on reflection Score: 5", 5.0),
        ("9/10", 9.0),
        ("I'd give it 4 out of 10.", 4.0),
        ("  8 ", 8.0),
        ("Score: 7.5", 7.5),
        ("Score: 0", None),  # out of range: rejected, not clipped
        ("Score: 11", None),
        ("7/10 or maybe 8/10", None),  # ambiguous
        ("It is very much in character.", None),
        ("", None),
    ],
)
def test_parse_score(reply: str, score: float | None) -> None:
    assert parse_score(reply) == score


def test_judge_is_blind_and_shuffled() -> None:
    seen: list[list[dict[str, Any]]] = []

    def responder(messages: list[dict[str, Any]]) -> str:
        seen.append(messages)
        # teacher answers get 9, student 7, base 2: the judge's answer depends only on content
        kind = answer_in(messages).split("-")[1]
        return {"teacher": "Score: 9", "student": "Score: 7", "base": "Score: 2"}[kind]

    cfg = JudgeConfig(concurrency=1, seed=3)  # one at a time: arrival order == sending order
    with start_fake_server(responder=responder) as server:
        scores = run_judge(items(), DESCRIPTION, cfg, server.base_url, "fake-teacher", None)
    # results come back in the input order, each with its own score
    assert [s.item.answer for s in scores] == [it.answer for it in items()]
    assert {s.item.model: s.score for s in scores} == {"teacher": 9.0, "student": 7.0, "base": 2.0}
    # blind: no request names a model or carries an id; each holds exactly one answer
    for messages in seen:
        text = " ".join(m["content"] for m in messages)
        text_wo_answer = re.sub(r"reply-\w+-\d+", "", text)
        for label in ("teacher", "student", "base", "p0", "fake-teacher"):
            assert label not in text_wo_answer.lower()
        assert DESCRIPTION in text
        assert len(re.findall(r"reply-\w+-\d+", text)) == 1
    # shuffled: the models are interleaved, not sent as three blocks; and the order is seeded
    order = [answer_in(m).split("-")[1] for m in seen]
    assert order != sorted(order, key=["teacher", "student", "base"].index)
    changes = sum(a != b for a, b in zip(order, order[1:], strict=False))
    assert changes >= 6
    seen.clear()
    with start_fake_server(responder=responder) as server:
        run_judge(items(), DESCRIPTION, cfg, server.base_url, "fake-teacher", None)
    assert [answer_in(m).split("-")[1] for m in seen] == order


def test_malformed_replies_are_retried_then_missing() -> None:
    calls: dict[str, int] = {}

    def responder(messages: list[dict[str, Any]]) -> str:
        key = answer_in(messages)
        calls[key] = calls.get(key, 0) + 1
        if key.startswith("reply-base"):
            return "What a lovely answer, very Beethoven."  # never a score
        if calls[key] == 1:
            return "Hmm, let me think."  # malformed once, then fine
        return "Score: 6"

    cfg = JudgeConfig(max_retries=2, concurrency=4)
    with start_fake_server(responder=responder) as server:
        scores = run_judge(items(3), DESCRIPTION, cfg, server.base_url, "fake-teacher", None)
    by_model: dict[str, list[Any]] = {}
    for s in scores:
        by_model.setdefault(s.item.model, []).append(s)
    for s in by_model["teacher"] + by_model["student"]:
        assert s.score == 6.0 and s.attempts == 2
    for s in by_model["base"]:
        assert s.score is None  # never invented
        assert s.attempts == 3  # the first try and max_retries=2 retries
        assert s.reason == "no score in 3 replies"
        assert calls[s.item.answer] == 3
    summary = summarize(scores)
    assert summary["base"].stats.mean is None and summary["base"].missing == 3
    assert summary["teacher"].stats.mean == 6.0 and summary["teacher"].missing == 0
    assert summary["teacher"].histogram == {6: 3}


def test_transient_http_errors_are_retried_and_bad_answers_missing() -> None:
    faults = [
        Fault("status", status=503, first=1, match="reply-teacher-0"),  # once, then fine
        Fault("malformed", match="reply-student-0"),  # a broken body every time
    ]
    cfg = JudgeConfig(http_retries=2, concurrency=4)
    with start_fake_server(faults=faults, responder=lambda m: "Score: 8") as server:
        scores = run_judge(items(2), DESCRIPTION, cfg, server.base_url, "fake-teacher", None)
    by_answer = {s.item.answer: s for s in scores}
    assert by_answer["reply-teacher-0"].score == 8.0
    assert by_answer["reply-student-0"].score is None
    assert "endpoint error" in (by_answer["reply-student-0"].reason or "")
    assert by_answer["reply-base-1"].score == 8.0


def test_summary_interval() -> None:
    scored = [JudgeItem("m", str(i), "q", "a") for i in range(5)]
    from promptdistill.evaluation.judge import JudgeScore

    scores = [JudgeScore(it, float(v), 1) for it, v in zip(scored, [1, 2, 3, 4, 5], strict=True)]
    s = summarize(scores)["m"].as_dict()
    assert s["mean"] == pytest.approx(3.0)
    assert s["lo"] == pytest.approx(1.0368, abs=1e-3) and s["method"] == "student-t"


def test_unreachable_judge_fails_fast_with_a_user_error() -> None:
    from fake_openai import free_port

    from promptdistill.core.errors import UserError

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    cfg = JudgeConfig(concurrency=2, http_retries=2)
    with pytest.raises(UserError, match="unreachable.*--no-judge"):
        run_judge(items(20), DESCRIPTION, cfg, url, "fake-teacher", None)
