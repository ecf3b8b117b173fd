"""`promptdistill prompts generate` (issue #14): the teacher writes user prompts, through the
sampling engine, against the fault-injecting fake server; replies are parsed robustly, exact
and MiniLM near duplicates dropped, the run resumes, and diversity is measured."""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from fake_openai import Fault, start_fake_server
from fixtures_openai import cli_env

from promptdistill.models.embed import Embedder
from promptdistill.personas import load_persona
from promptdistill.sampling.diversity import distinct_n, keep_distinct, mean_pairwise_cosine
from promptdistill.sampling.userprompts import parse_reply, request_messages, seeds

SUBJECTS = [
    "volcanoes", "tax returns", "sourdough bread", "the Roman empire", "quantum computing",
    "knitting", "marathon training", "jazz chords", "houseplants", "car insurance",
    "black holes", "wedding speeches", "python decorators", "sleep hygiene", "chess openings",
    "mortgage rates", "bird migration", "stand-up comedy", "vegan baking", "solar panels",
    "job interviews", "ancient Egypt", "guitar strings", "climate policy", "cat behaviour",
    "tea ceremonies", "cryptography", "lawn care", "opera singers", "electric scooters",
    "public speaking", "coral reefs", "spreadsheet formulas", "medieval castles", "yoga poses",
    "coffee roasting", "poetry meters", "skin care", "train travel", "board games",
]  # fmt: skip
STYLES = ["Tell me something surprising about {}.", "I keep failing at {}, any tips?",
          "Why do people care so much about {}?", "Explain {} like I am five."]  # fmt: skip


def writer(messages: list[dict[str, Any]]) -> str:
    """A teacher that writes the asked-for number of messages, as a JSON list, with some
    exact and near duplicates and some chatter around it."""
    text = messages[-1]["content"]
    k = int(re.search(r"Write (\d+) different messages", text).group(1))  # type: ignore[union-attr]
    rng = random.Random(text)
    items = [rng.choice(STYLES).format(rng.choice(SUBJECTS)) for _ in range(k)]
    items[-1] = items[0].replace(".", "!") if len(items) > 1 else items[0]  # a near duplicate
    return "Sure! Here are the messages:\n```json\n" + orjson.dumps(items).decode() + "\n```"


def generate(root: Path, base_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "promptdistill", "prompts", "generate", "quill", "--data-dir",
           str(root), "--base-url", base_url, "--model", "fake-teacher", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=cli_env())


@pytest.fixture
def quill(tmp_path: Path) -> Path:
    cmd = [sys.executable, "-m", "promptdistill", "init", "quill", "--data-dir", str(tmp_path)]
    r = subprocess.run(cmd, input="You are Quill, a copy editor.", capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stderr
    return tmp_path


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def test_generate_writes_distinct_prompts_resumes_and_grows(quill: Path) -> None:
    out = quill / "prompts" / "quill-generated.jsonl"
    with start_fake_server(responder=writer, faults=[Fault("status", status=429, first=1)]) as s:
        r = generate(quill, s.base_url, "-n", "30", "--per-request", "6")
        assert r.returncode == 0, r.stderr[-2000:]
        first_requests = s.requests
        # every request was rate limited once and asked again, through the engine's retries
        assert sum(a.outcome == "status 429" for a in s.arrivals) == first_requests // 2
        asked = [a.prompt for a in s.arrivals]
    prompts = [row["prompt"] for row in lines(out)]
    assert len(prompts) == 30 and len({p.lower() for p in prompts}) == 30
    assert not any(p.startswith(("Sure", "Here", "```", "[")) for p in prompts)
    # the requests were about the prompt set's categories, and asked for varied styles
    assert any("all about: questions" in a for a in asked)
    assert any("all about: requests" in a for a in asked)
    assert len({re.findall(r"^1\. (.*)$", a, re.M)[0] for a in asked}) > 2
    m = re.search(r"(\d+) exact and (\d+) near duplicates dropped", r.stdout)
    assert m and int(m.group(2)) > 0, r.stdout
    emb = Embedder().encode(prompts)
    sims = emb @ emb.T
    assert float((sims - 2 * torch.eye(30)).max()) < 0.9  # no near duplicates
    # diversity against template expansion of the same N, printed
    assert "teacher-written" in r.stdout and "template expansion" in r.stdout
    assert "distinct-2" in r.stdout and "mean pairwise cosine" in r.stdout
    # the file became a source of the prompt set, so the persona's prompts include it
    assert "listed quill-generated.jsonl as a source" in r.stdout
    preview = subprocess.run(
        [sys.executable, "-m", "promptdistill", "prompts", "quill", "-n", "400", "--data-dir",
         str(quill)], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert preview.returncode == 0, preview.stderr
    assert len(set(prompts) & set(preview.stdout.splitlines())) >= 20  # (a tenth is held out)

    with start_fake_server(responder=writer) as s:
        again = generate(quill, s.base_url, "-n", "30", "--per-request", "6")
        assert again.returncode == 0, again.stderr[-2000:]
        assert s.requests == 0, "a rerun asks nothing that was answered"
        assert "already lists" in again.stdout
        more = generate(quill, s.base_url, "-n", "45", "--per-request", "6")
        assert more.returncode == 0, more.stderr[-2000:]
        assert 0 < s.requests < first_requests  # only what the 15 more prompts need
    grown = [row["prompt"] for row in lines(out)]
    assert len(grown) == 45 and grown[:30] == prompts  # prefix-stable


def test_topics_and_a_shipped_persona(tmp_path: Path) -> None:
    with start_fake_server(responder=writer) as s:
        cmd = [sys.executable, "-m", "promptdistill", "prompts", "generate", "beethoven", "-n",
               "5", "--topics", "Vienna, deafness", "--base-url", s.base_url, "--model",
               "fake-teacher"]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path,
                           env=cli_env())  # fmt: skip
        asked = " ".join(a.prompt for a in s.arrivals)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "all about: Vienna." in asked and "all about: deafness." in asked
    assert len(lines(tmp_path / "prompts" / "beethoven-generated.jsonl")) == 5
    assert "is a shipped prompt set" in r.stdout  # it is not edited; the user is told what to do


def test_an_unknown_model_stops_at_once(quill: Path) -> None:
    with start_fake_server(responder=writer, models=("other",)) as s:
        r = generate(quill, s.base_url, "-n", "10")
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "check --model" in r.stderr


# --------------------------------------------------------------------------- parsing, diversity


@pytest.mark.parametrize(
    "reply",
    [
        '["How do I cut this?", "Is the second comma wrong?"]',
        'Sure, here you go:\n```json\n["How do I cut this?", "Is the second comma wrong?"]\n```',
        '[{"message": "How do I cut this?"}, {"text": "Is the second comma wrong?"}]',
        '1. "How do I cut this?"\n2. (casual, one sentence) Is the second comma wrong?',
        "Here are two messages:\n- Message 1: How do I cut this?\n- Message 2: Is the second "
        "comma wrong?",
        "How do I cut this?\nIs the second comma wrong?",
    ],
)
def test_replies_are_parsed_robustly(reply: str) -> None:
    assert parse_reply(reply) == ["How do I cut this?", "Is the second comma wrong?"]


def test_code_markup_and_headings_in_a_reply_are_not_messages() -> None:
    """What SmolLM2-135M wrote instead of a JSON list in a real run (prompt_diversity, seed 1):
    only the strings that read as messages survive; one assigned in code is taken out of it."""
    reply = "\n".join([
        "<<<<<<<", "#disabledahack", "```python", "res = createData",
        'res[1] = "Did the deafness change how you wrote the late quartets?"', "10",
        "Freelance:", "Content:", "```", "Which symphony do you like best?",
    ])  # fmt: skip
    assert parse_reply(reply) == [
        "Did the deafness change how you wrote the late quartets?",
        "Which symphony do you like best?",
    ]


def test_what_a_reply_copies_from_its_request_is_not_a_message() -> None:
    """A small teacher often repeats its request: the style list, an example prompt, or all of
    it. None of that is a message a user would send."""
    persona = load_persona("beethoven")
    (seed_, *_) = seeds(persona, [], 0)
    request = request_messages(persona, seed_, 0, 4, 0)[-1]["content"]
    style = re.findall(r"^1\. (.*)$", request, re.M)[0]
    reply = "\n".join([f"1. {style}", f"2. {seed_.examples[0]}", "3. How loud was the premiere?",
                       "4. Did you ever meet Mozart?"])  # fmt: skip
    assert parse_reply(reply, request) == [
        "How loud was the premiere?",
        "Did you ever meet Mozart?",
    ]
    assert parse_reply(f"answer to: {' '.join(request.split())}", request) == []
    assert len(parse_reply(reply)) == 4  # without the request, nothing to compare with


def test_diversity_measures_and_near_duplicates() -> None:
    same = ["How do I reset my password?"] * 4
    varied = ["How do I reset my password?", "What should I cook tonight?",
              "Explain black holes simply.", "Which chess opening suits a beginner?"]  # fmt: skip
    assert distinct_n(same) == pytest.approx(6 / 24) and distinct_n(varied) > 0.9
    e = Embedder()
    assert mean_pairwise_cosine(e.encode(same)) == pytest.approx(1.0, abs=1e-4)
    assert mean_pairwise_cosine(e.encode(varied)) < 0.3
    texts = ["How do I reset my password?", "How can I reset my password?", *varied[1:]]
    assert keep_distinct(e.encode(texts), 0.9) == [0, 2, 3, 4]  # in order: the first is kept
    assert keep_distinct(e.encode(texts), 0.9, block=2) == [0, 2, 3, 4]  # across blocks too
