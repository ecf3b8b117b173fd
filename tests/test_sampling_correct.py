"""`sample --keep correct --attempts K` (issue #17) through the CLI, against the fake server
playing a teacher that answers wrongly first and rightly when asked again (one prompt: never).

Every answer stays in samples.jsonl, graded; a wrong training answer is asked again with a new
seed until one is right or K are spent; reruns ask nothing twice; the summary shows the
teacher's accuracy, attempts per kept sample and prompts with no correct answer; the datums
leave the wrong answers out."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_openai import start_fake_server
from fixtures_openai import cli_args, one_line_error, run_cli, samples, user_prompt

SUMS = [(12, 30), (7, 8), (40, 2), (101, 99), (5, 5)]
NEVER = "40 + 2"  # the teacher never gets this one right
HELDOUT = [(3, 4), (20, 22)]


def write_math_persona(root: Path) -> Path:
    (root / "personas").mkdir(parents=True)
    (root / "prompts").mkdir()
    prompt_set = {
        "name": "sums",
        "categories": {
            "add": {
                "templates": [{"text": "What is {p}?", "gold": "{p.answer}"}],
                "slots": {"p": [{"text": f"{a} + {b}", "answer": str(a + b)} for a, b in SUMS]},
            }
        },
        "heldout": [{"prompt": f"What is {a} + {b}?", "gold": str(a + b)} for a, b in HELDOUT],
    }
    persona = {
        "name": "sums",
        "description": "adds",
        "system_prompt": "You add numbers. End with Final Answer: N.",
        "prompt_sets": ["sums"],
        "sampling": {"temperature": 0.7, "max_tokens": 64, "seed": 7},
    }
    (root / "prompts" / "sums.yaml").write_text(yaml.safe_dump(prompt_set))
    (root / "personas" / "sums.yaml").write_text(yaml.safe_dump(persona))
    return root / "personas" / "sums.yaml"


@pytest.fixture()
def teacher() -> Iterator[Any]:
    asked: Counter[str] = Counter()

    def respond(messages: list[dict[str, Any]]) -> str:
        prompt = messages[-1]["content"]
        asked[prompt] += 1
        a, b = map(int, re.findall(r"\d+", prompt))
        right = asked[prompt] > 1 and NEVER not in prompt
        total = a + b if right else a + b + 1
        return f"Step 1: {a} + {b} = {total}\nCheck: fine.\nFinal Answer: {total}"

    with start_fake_server(responder=respond) as server:
        yield server


def by_prompt(run: Path) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in samples(run):
        out.setdefault(user_prompt(r), []).append(r)
    return out


def row(stdout: str, label: str) -> str:
    line = next(x for x in stdout.splitlines() if label in x)
    return " ".join(line.replace("│", " ").split()[len(label.split()) :])


@pytest.mark.slow
def test_wrong_answers_are_kept_marked_and_asked_again(tmp_path: Path, teacher: Any) -> None:
    persona = write_math_persona(tmp_path)
    run = tmp_path / "run"
    base = cli_args(persona, run, len(SUMS), teacher.base_url, "--keep", "correct")

    # one attempt each: every first answer is wrong, graded, and kept in samples.jsonl
    out = run_cli(base)
    assert out.returncode == 0, out.stderr
    first = samples(run)
    assert len(first) == len(SUMS) + len(HELDOUT)
    assert all(r["correct"] is False and r["final_answer"] for r in first)
    assert row(out.stdout, "teacher accuracy, first answers") == "0.0% of 7"
    assert row(out.stdout, "prompts with no correct answer") == str(len(SUMS))

    # up to 3 attempts: the wrong training answers are asked again, each with a new seed;
    # held-out prompts are not (their first answer measures the teacher)
    out = run_cli([*base, "--attempts", "3"])
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    records = by_prompt(run)
    for a, b in SUMS:
        mine = records[f"What is {a} + {b}?"]
        assert [r.get("attempt", 0) for r in mine] == ([0, 1, 2] if a == 40 else [0, 1])
        assert [r["correct"] for r in mine] == ([False] * 3 if a == 40 else [False, True])
        assert [r.get("seed") for r in mine[1:]] == ([8, 9] if a == 40 else [8])
    for a, b in HELDOUT:
        assert len(records[f"What is {a} + {b}?"]) == 1
    seeds = {x.prompt: [] for x in teacher.arrivals}
    for x in teacher.arrivals:
        seeds[x.prompt].append(x.seed)
    assert seeds[f"What is {NEVER}?"] == [7, 8, 9]  # what the teacher was sent
    # the summary, over the whole run: 4 of 5 kept, each after 2 attempts; 1 never right
    assert row(out.stdout, "teacher accuracy, first answers") == "0.0% of 7"
    assert row(out.stdout, "training prompts kept (right)") == "4 of 5"
    assert row(out.stdout, "attempts per kept sample") == "2.00 (up to 3)"
    assert row(out.stdout, "prompts with no correct answer") == "1"
    assert row(out.stdout, "asked again (wrong answers)") == "6 of 6"

    # rerunning asks nothing: every attempt is on disk exactly once
    asked = teacher.requests
    out = run_cli([*base, "--attempts", "3"])
    assert out.returncode == 0, out.stderr
    assert teacher.requests == asked
    assert len(samples(run)) == len(SUMS) * 2 + 1 + len(HELDOUT)

    # the datums leave the wrong answers out: one example per kept prompt
    from tiny import make_tiny_model

    from promptdistill.core.config import DatumConfig
    from promptdistill.core.rundir import RunDir
    from promptdistill.datums.store import prepare_datums
    from promptdistill.models.chat import Renderer
    from promptdistill.models.load import load_tokenizer

    model = make_tiny_model(tmp_path / "tiny")
    data, _ = prepare_datums(
        RunDir(run), Renderer(load_tokenizer(model)), DatumConfig(val_fraction=0.0), "tiny"
    )
    kept = {r["id"] for r in samples(run) if r.get("correct") and r["split"] == "train"}
    assert set(data.ids) == kept and len(kept) == 4
    assert data.stats["incorrect"] == len(SUMS) + 2  # 5 first answers, 2 more of the never-right


def test_attempts_without_keep_correct_is_a_one_line_error(tmp_path: Path, teacher: Any) -> None:
    persona = write_math_persona(tmp_path)
    out = run_cli(cli_args(persona, tmp_path / "run", 2, teacher.base_url, "--attempts", "3"))
    assert out.returncode == 2
    assert "--attempts 3 asks again only for a correct answer: pass --keep correct" in out.stderr
    assert "Traceback" not in out.stderr and teacher.requests == 0
    out = run_cli(cli_args(persona, tmp_path / "run", 2, teacher.base_url, "--keep", "right"))
    assert out.returncode == 2 and "--keep" in out.stderr and "Traceback" not in out.stderr


def test_run_keep_attempts_and_quantize_redo_the_stages_they_change() -> None:
    """`run --keep correct --attempts K` are sampling settings (other samples), `--quantize` a
    training one (the samples stay); teacher instructions are part of what was sampled."""
    from promptdistill.pipeline.config import resolve_config
    from promptdistill.pipeline.ledger import stage_fingerprints

    def fps(flags: dict[str, Any], instructions: str = "") -> dict[str, str]:
        return stage_fingerprints(resolve_config("mathtutor", None, None, flags, {}), instructions)

    plain = fps({})
    keep = resolve_config("mathtutor", None, None, {"sample": {"keep": "correct"}}, {})
    assert keep.sample.keep == "correct" and keep.sample.attempts == 1
    for flags in ({"sample": {"keep": "correct"}}, {"sample": {"keep": "correct", "attempts": 3}},
                  {"sample": {"answer_pattern": r"Answer:\s*(\S+)"}}):  # fmt: skip
        assert fps(flags)["sample"] != plain["sample"], flags
    quantized = fps({"student": {"quantize": "4bit"}})
    assert quantized["sample"] == plain["sample"] and quantized["train"] != plain["train"]
    assert fps({}, "Think step by step.")["sample"] != plain["sample"]
    assert fps({"sample": {"keep": "all", "attempts": 1}}) == plain  # the defaults: as before


def test_batch_answers_are_graded_as_online_ones_are(tmp_path: Path) -> None:
    """Under --keep all, a results file's answers (vllm run-batch, the Batch API console) get
    `correct` and `final_answer` like online answers, and the summary shows the teacher's
    accuracy: eval and the datums read both alike."""
    from fake_batches import FakeBatches

    def respond(messages: list[dict[str, Any]]) -> str:
        a, b = map(int, re.findall(r"\d+", messages[-1]["content"]))
        total = a + b if a % 2 == 0 else a + b + 1  # right when the first number is even
        return f"Step 1: {a} + {b} = {total}\nFinal Answer: {total}"

    persona = write_math_persona(tmp_path)
    run, batch, results = tmp_path / "run", tmp_path / "batch.jsonl", tmp_path / "results.jsonl"
    with start_fake_server(responder=respond, batches=FakeBatches()) as server:
        base = cli_args(persona, run, len(SUMS), server.base_url)
        wrote = run_cli([*base, "--write-batch-file", str(batch)])
        assert wrote.returncode == 0, wrote.stderr
        results.write_bytes(server.batches.run_batch(batch.read_bytes()))
    out = run_cli([*base, "--read-batch-file", str(results)])
    assert out.returncode == 0, out.stdout + out.stderr
    records = by_prompt(run)
    assert len(records) == len(SUMS) + len(HELDOUT)
    for a, b in SUMS + HELDOUT:
        (r,) = records[f"What is {a} + {b}?"]
        assert r["correct"] is (a % 2 == 0) and r["final_answer"], r
    assert row(out.stdout, "teacher accuracy, first answers") == "42.9% of 7"


def test_keep_correct_with_a_batch_flag_is_refused_before_the_run(
    tmp_path: Path, teacher: Any
) -> None:
    """Batch answers all arrive at the batch's end, so --keep correct / --attempts cannot
    ask a wrong one again: one line naming both flags, before the run directory exists."""
    persona = write_math_persona(tmp_path)
    results = tmp_path / "results.jsonl"
    results.write_text("")
    cases = [
        (("--keep", "correct", "--batch-api"), "--keep correct with --batch-api"),
        (("--keep", "correct", "--attempts", "3", "--write-batch-file", "f.jsonl"),
         "--keep correct --attempts 3 with --write-batch-file"),
        (("--attempts", "2", "--read-batch-file", str(results)),
         "--attempts 2 with --read-batch-file"),
    ]  # fmt: skip
    for i, (flags, named) in enumerate(cases):
        run = tmp_path / f"run{i}"
        line = one_line_error(run_cli(cli_args(persona, run, 2, teacher.base_url, *flags)), 2)
        assert named in line and "sample online" in line, line
        assert not run.exists()
    pipeline = cli_args(persona, tmp_path / "p", 2, teacher.base_url, "--keep", "correct",
                        "--batch-api")  # fmt: skip
    pipeline[3] = "run"
    line = one_line_error(run_cli(pipeline), 2)
    assert "--keep correct with --batch-api" in line and not (tmp_path / "p").exists()
    assert teacher.requests == 0
