"""`promptdistill eval` end to end on a tiny model, plus the batched NLL and generation it uses.

The run directory is built here: samples.jsonl (tests/tiny.py), config.yaml, a LoRA adapter
created with peft (random, non-zero, so the student differs from the base) and metrics.jsonl.
The fake OpenAI server plays the teacher endpoint (streamed latency) and the judge.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
import yaml
from fake_openai import start_fake_server
from tiny import SYSTEM_PROMPT, make_tiny_model, write_samples

KEY = "sk-test-eval-0123456789"
SUMMARY_KEYS = {
    "prompt_effect_recovered", "nll_student", "nll_base", "rouge_l_student", "rouge_l_base",
    "chrf_student", "chrf_base", "judge_student", "judge_teacher", "judge_base",
    "persona_classifier_student", "prompt_tokens_saved_per_request", "student_tokens_per_s",
}  # fmt: skip


def make_run(root: Path, model_dir: Path, n: int = 24, heldout: int = 4) -> Path:
    from peft import LoraConfig, get_peft_model

    from promptdistill.models.load import load_causal_lm

    run = root / "run"
    write_samples(run / "samples.jsonl", n, heldout=heldout, words=(1, 3))
    config = {
        "sample": {
            "persona": "beethoven",
            "n": n,
            "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": 12},
            "teacher": {"base_url": None, "model": str(model_dir)},  # the embedded default
        },
        "train": {
            "student": {"model": str(model_dir), "dtype": "fp32"},
            "datums": {"val_fraction": 0.25},
        },
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    get_peft_model(load_causal_lm(model_dir, "fp32"), lora).save_pretrained(run / "adapter")
    rows = [{"type": "train", "step": s, "loss": 4.0 - 0.2 * s} for s in range(1, 9)]
    rows += [
        {"type": "eval", "step": 4, "val_loss": 3.5},
        {"type": "eval", "step": 8, "val_loss": 3.1},
    ]
    (run / "metrics.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return run


def judge_reply(messages: list[dict[str, Any]]) -> str:
    """A judge that only looks at the content: answers with 'Beethoven' in them score high."""
    text = messages[-1]["content"]
    reply = text.split("Reply to rate:", 1)[1] if "Reply to rate:" in text else text
    if "Vienna" in reply or "symphony" in reply.lower():
        return "Score: 9"
    return "The reply is plain. Score: 2"


def run_eval(
    run: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:  # noqa: E501
    cmd = [sys.executable, "-m", "promptdistill", "eval", str(run), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    with start_fake_server(responder=judge_reply, api_key=KEY) as fake:
        yield fake


def eval_args(server: Any) -> list[str]:
    return [
        "--base-url", server.base_url, "--model", "fake-teacher", "--max-new-tokens", "8",
        "--price-in", "3", "--price-out", "15", "--latency-requests", "2",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def evaluated(
    tmp_path_factory: pytest.TempPathFactory, server: Any
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("eval")
    model_dir = make_tiny_model(root / "tiny")
    run = make_run(root, model_dir)
    out = run_eval(run, *eval_args(server), env={**os.environ, "OPENAI_API_KEY": KEY})
    assert out.returncode == 0, out.stderr[-3000:]
    assert server.requests > 0, "neither the judge nor the teacher was asked"
    return run, out


@pytest.mark.slow
def test_eval_writes_a_complete_report(evaluated: tuple[Path, Any]) -> None:
    run, out = evaluated
    report = orjson.loads((run / "report.json").read_bytes())
    s = report["summary"]
    assert set(s) >= SUMMARY_KEYS
    # every null headline number says why
    for key, value in s.items():
        if value is None:
            assert report["notes"].get(key), key
    # likelihood: three NLLs of the same answer tokens, and the ratio computed from them
    lik = report["likelihood"]
    assert lik["student"]["tokens"] == lik["base"]["tokens"] == lik["base_withprompt"]["tokens"]
    nb, ns, nw = s["nll_base"], s["nll_student"], s["nll_base_withprompt"]
    assert all(v is not None and v > 0 for v in (nb, ns, nw))
    if abs(nb - nw) >= 1e-3:
        assert s["prompt_effect_recovered"] == pytest.approx((nb - ns) / (nb - nw))
    # text agreement for both decodings; classifier shares; judge from the fake server
    for key in ("student_greedy", "student_sampled", "base_greedy", "base_sampled"):
        assert 0.0 <= report["text_agreement"][key]["rouge_l"]["mean"] <= 1.0
        assert 0.0 <= report["text_agreement"][key]["chrf"]["mean"] <= 100.0
    assert 0.0 <= s["persona_classifier_student"] <= 1.0
    judge = report["persona_fidelity"]["judge"]
    assert set(judge) >= {"teacher", "student", "base"}
    assert s["judge_teacher"] is not None and 2.0 <= s["judge_teacher"] <= 9.0
    # efficiency: the tiny ChatML template has no default system prompt, so every system-prompt
    # token is saved; costs priced; latency of both sides measured
    e = report["efficiency"]
    assert s["prompt_tokens_saved_per_request"] > len(SYSTEM_PROMPT.split())
    assert e["system_prompt_cost_saved_run_usd"] == pytest.approx(
        s["prompt_tokens_saved_per_request"] * e["run_requests"] * 3 / 1e6
    )
    assert s["student_tokens_per_s"] > 0 and e["student_latency"]["requests"] == 2
    assert e["teacher_latency"]["requests"] == 2
    assert e["adapter_parameters"] > 0 and e["adapter_bytes"] > 0
    # held-out set = validation split (by the trainer's rule) + the fixed held-out prompts
    from promptdistill.datums.build import split_of

    samples = [orjson.loads(x) for x in (run / "samples.jsonl").read_bytes().splitlines()]
    expected = {
        r["id"] for r in samples if r["split"] == "heldout" or split_of(r["id"], 0.25) == "val"
    }
    rows = [orjson.loads(x) for x in (run / "report-answers.jsonl").read_bytes().splitlines()]
    assert {r["id"] for r in rows} == expected
    assert all(isinstance(r["student_sampled"], str) and r["teacher"] for r in rows)
    # the markdown, the plots, the terminal table; the API key nowhere
    md = (run / "report.md").read_text()
    assert "## Teacher, student and base" in md and "![training loss](report-loss.png)" in md
    for png in ("report-loss.png", "report-metrics.png", "report-judge.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    # the training dashboard (drawn here: this run was not trained by `train`) is linked
    assert "![training dashboard](train-dashboard.png)" in md
    assert (run / "train-dashboard.png").read_bytes()[:4] == b"\x89PNG"
    # every bar of report-metrics.png carries its interval (issue #17)
    from promptdistill.evaluation.plots import metric_panels

    panels = dict(metric_panels(report))
    assert {"ROUGE-L vs teacher", "judge, in character (1-10)"} <= set(panels)
    for title, stats in panels.items():
        for model, stat in stats.items():
            assert stat["lo"] is not None and stat["lo"] <= stat["mean"] <= stat["hi"], (
                title,
                model,
            )
    assert "prompt effect recovered" in out.stdout
    for f in run.glob("report*"):
        assert KEY not in f.read_text(errors="replace")
    assert KEY not in out.stdout + out.stderr


@pytest.mark.slow
def test_report_measures_the_distillation_directly(evaluated: tuple[Path, Any]) -> None:
    """KL(teacher || student) and KL(teacher || base) on the whole next-token distributions
    (the run's teacher is the student's base model with the prompt), and loop rates."""
    run, out = evaluated
    report = orjson.loads((run / "report.json").read_bytes())
    s = report["summary"]
    assert s["kl_student"] is not None and s["kl_base"] is not None
    assert s["kl_student"] >= 0 and s["kl_base"] > 0
    kl = report["likelihood"]["kl"]
    assert kl["tokens"] == report["likelihood"]["student"]["tokens"]
    for m in ("student", "teacher", "base"):
        assert 0.0 <= s[f"loop_rate_{m}"] <= 1.0
    assert report["student"]["objective"] == "sft"
    md = (run / "report.md").read_text()
    assert "KL(teacher || student)" in md and "answers that loop" in md
    assert "--objective sft" in md
    assert "KL(teacher || student)" in out.stdout


@pytest.mark.slow
def test_against_reuses_an_up_to_date_report(
    evaluated: tuple[Path, Any], tmp_path: Path, server: Any
) -> None:
    run, _ = evaluated
    other = tmp_path / "other"
    shutil.copytree(run, other)
    data = orjson.loads((other / "report.json").read_bytes())
    data["summary"]["rouge_l_student"] = -1.0
    data["run"] = str(other)
    (other / "report.json").write_bytes(orjson.dumps(data))
    # same flags as the fixture: the report is up to date, so nothing is recomputed
    asked = server.requests
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    out = run_eval(run, *eval_args(server), "--against", str(other), env=env)
    assert server.requests == asked
    assert out.returncode == 0, out.stderr[-3000:]
    assert "up to date" in out.stderr
    diff = orjson.loads((run / "report-vs-other.json").read_bytes())
    assert diff["summary"]["rouge_l_student"]["better"] == "run"
    assert "against other" in out.stdout
    assert (run / "report-vs-other.md").is_file()


def test_eval_without_adapter_is_a_one_line_error(tmp_path: Path) -> None:
    run = tmp_path / "run"
    write_samples(run / "samples.jsonl", 4, heldout=2)
    (run / "config.yaml").write_text(yaml.safe_dump({"sample": {"persona": "beethoven", "n": 4}}))
    out = run_eval(run, "--no-judge")
    assert out.returncode == 2
    assert "has no adapter_config.json" in out.stderr and "promptdistill train" in out.stderr
    assert "Traceback" not in out.stderr
    out = run_eval(tmp_path / "missing")
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_against_a_run_without_report_fails_early(
    evaluated: tuple[Path, Any], tmp_path: Path
) -> None:  # noqa: E501
    run, _ = evaluated
    out = run_eval(run, "--against", str(tmp_path))
    assert out.returncode == 2 and "run `promptdistill eval" in out.stderr


# --------------------------------------------------------------------------- the model side


def test_score_nll_matches_the_model_loss(tiny: tuple[Any, Any]) -> None:
    from promptdistill.evaluation.scoring import score_nll

    model, tok = tiny
    examples = []
    for k in (2, 5, 9):
        toks = list(range(3, 3 + 4 + k))
        weights = [0.0] * 4 + [1.0] * k
        examples.append((toks, weights))
    scored = score_nll(model, examples, batch_tokens=20)  # several batches
    for (toks, w), s in zip(examples, scored, strict=True):
        ids = torch.tensor([toks])
        labels = ids.clone()
        labels[0, : w.index(1.0)] = -100
        with torch.no_grad():
            loss = model(input_ids=ids, labels=labels).loss
        assert s.tokens == sum(w) - (1 if w[0] else 0)
        assert s.nll_sum == pytest.approx(float(loss) * s.tokens, rel=1e-4)


def test_a_shared_system_prompt_is_run_once_with_the_same_numbers(tiny: tuple[Any, Any]) -> None:
    """eval scores the teacher's answers *with* the system prompt: the prompt's cache, run
    once, gives the NLL and hidden states that the full sequences give."""
    from promptdistill.evaluation.scoring import kl_sums, score_nll
    from promptdistill.training.objectives import head_weight

    model, _ = tiny
    system = list(range(40, 70))  # 30 shared tokens, none scored
    examples = []
    for k in (2, 5, 9):
        user = list(range(3 + k, 7 + k))
        examples.append((system + user + list(range(80, 80 + k)), [0.0] * 34 + [1.0] * k))
    full = score_nll(model, examples, batch_tokens=40, keep_hidden=True)
    shared = score_nll(model, examples, batch_tokens=40, keep_hidden=True, share_prefix=True)
    for f, s in zip(full, shared, strict=True):
        assert s.tokens == f.tokens
        assert s.nll_sum == pytest.approx(f.nll_sum, rel=1e-4)
        torch.testing.assert_close(s.hidden, f.hidden, rtol=1e-4, atol=1e-4)
    assert kl_sums(full, shared, head_weight(model)) == pytest.approx([0.0] * 3, abs=1e-5)


# --------------------------------------------------------------------------- multi-turn (#14)


def make_multi_turn(run: Path) -> None:
    """Turn the run's samples into 3-turn conversations, as `sample --turns 3` writes them."""
    import random

    from tiny import ANSWER_SENTENCES, USER_PROMPTS

    rng = random.Random(1)
    records = [orjson.loads(x) for x in (run / "samples.jsonl").read_bytes().splitlines()]
    for r in records:
        for _ in range(2):
            r["messages"] += [
                {"role": "user", "content": rng.choice(USER_PROMPTS)},
                {"role": "assistant", "content": rng.choice(ANSWER_SENTENCES)},
            ]
        r["turns"], r["finish_reasons"] = 3, ["stop"] * 3
    (run / "samples.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["sample"]["turns"] = 3
    (run / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.slow
def test_multi_turn_eval_reports_fidelity_at_the_first_and_last_turn(
    tmp_path: Path, server: Any, evaluated: tuple[Path, Any]
) -> None:
    model_dir = make_tiny_model(tmp_path / "tiny")
    run = make_run(tmp_path, model_dir)
    make_multi_turn(run)
    out = run_eval(run, *eval_args(server), "--no-judge", env={**os.environ, "OPENAI_API_KEY": KEY})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "later turns of" in out.stderr + out.stdout
    report = orjson.loads((run / "report.json").read_bytes())
    by_turn = report["persona_fidelity"]["by_turn"]
    assert by_turn["conversations"] == report["heldout"]["prompts"]
    assert by_turn["turns"]["max"] == 3
    s = report["summary"]
    for side in ("first", "last"):
        for m in ("teacher", "student", "base"):
            value = by_turn[f"{side}_turn"][m]
            assert 0.0 <= value <= 1.0 and s[f"persona_classifier_{m}_{side}_turn"] == value
    # every turn of every held-out conversation, answered by each model in its own context
    rows = [orjson.loads(x) for x in (run / "report-answers.jsonl").read_bytes().splitlines()]
    assert all(len(r["turns"]) == 3 for r in rows)
    assert all(set(t) == {"user", "teacher", "student", "base"} for r in rows for t in r["turns"])
    assert rows[0]["turns"][0]["student"] == rows[0]["student_sampled"]
    md = (run / "report.md").read_text()
    assert "classifier, turn 1 of" in md and "classifier, last turn (up to 3)" in md
    # a one-turn run's report has none of it
    single = orjson.loads((evaluated[0] / "report.json").read_bytes())
    assert "by_turn" not in single["persona_fidelity"]
    assert not any(k.endswith("_turn") for k in single["summary"])


# --------------------------------------------------------------------------- gold answers (#17)


@pytest.mark.slow
def test_gold_answers_get_accuracy_with_intervals_and_a_correctness_grid(tmp_path: Path) -> None:
    """A prompt set with gold answers: final-answer accuracy and answer length for teacher,
    student and base, with intervals; the accuracy plot and the per-prompt grid."""
    model_dir = make_tiny_model(tmp_path / "tiny")
    run = make_run(tmp_path, model_dir, n=16, heldout=6)
    lines = (run / "samples.jsonl").read_bytes().splitlines()
    records = [orjson.loads(x) for x in lines]
    for k, r in enumerate(records):  # the teacher is right on every other prompt
        r["gold"] = "4"
        r["messages"][-1]["content"] += f"\nFinal Answer: {4 if k % 2 == 0 else 5}"
    (run / "samples.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    out = run_eval(run, "--no-judge", "--latency-requests", "0", "--max-new-tokens", "8")
    assert out.returncode == 0, out.stderr[-3000:]
    report = orjson.loads((run / "report.json").read_bytes())
    task = report["task"]
    for source in ("teacher", "student_sampled", "base_sampled", "student_greedy"):
        acc = task[source]["final_answer_accuracy"]
        assert acc["n"] == task["answers_with_gold"] and acc["lo"] is not None, source
        assert acc["lo"] <= acc["mean"] <= acc["hi"]
        assert task[source]["answer_tokens"]["mean"] > 0
    assert 0.0 < task["teacher"]["final_answer_accuracy"]["mean"] < 1.0
    s = report["summary"]
    assert s["answer_tokens_teacher"] > s["answer_tokens_student"] > 0  # 8 new tokens at most
    rows = [orjson.loads(x) for x in (run / "report-answers.jsonl").read_bytes().splitlines()]
    assert all(set(r["correct"]) >= {"teacher", "student_sampled", "base_greedy"} for r in rows)
    assert sum(r["correct"]["teacher"] for r in rows) == round(
        task["teacher"]["final_answer_accuracy"]["mean"] * len(rows)
    )
    plots = report["files"]["plots"]
    assert plots["accuracy"] == "report-accuracy.png"
    assert plots["correctness"] == "report-correctness.png"
    for png in plots.values():
        assert (run / png).read_bytes()[:4] == b"\x89PNG"
    md = (run / "report.md").read_text()
    assert "![per-prompt correctness](report-correctness.png)" in md
    assert "task: answer length (tokens)" in md and "task: final answer accuracy" in md


@pytest.mark.slow
def test_the_embedded_teachers_latency_is_timed_in_process(tmp_path: Path) -> None:
    """The run's teacher is the student's base with the system prompt: eval times it in
    process, as it answered `sample`, and starts no server for it."""
    model_dir = make_tiny_model(tmp_path / "tiny")
    run = make_run(tmp_path, model_dir, n=12)
    out = run_eval(run, "--no-judge", "--latency-requests", "2", "--max-new-tokens", "6")
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "teacher latency, in process (2 single requests)" in log
    assert "starting the local teacher" not in log
    report = orjson.loads((run / "report.json").read_bytes())
    latency = report["efficiency"]["teacher_latency"]
    assert latency["requests"] == 2 and latency["endpoint"] == "embedded local teacher, in process"
    assert report["summary"]["teacher_tokens_per_s"] > 0
    assert "teacher_latency" not in report["notes"]
