"""report.py: the files (json, jsonl, md, png), the terminal tables, and two runs side by side."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console

from promptdistill.core.errors import UserError
from promptdistill.core.rundir import RunDir
from promptdistill.evaluation.report import (
    compare_reports,
    load_report,
    print_comparison,
    print_summary,
    write_comparison,
    write_report,
)


def ci(mean: float | None, half: float = 0.1) -> dict[str, Any]:
    if mean is None:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": 4}


def make_report(run: Path, student_rouge: float = 0.3, judge: bool = True) -> dict[str, Any]:
    summary = {
        "prompt_effect_recovered": 0.62,
        "nll_student": 1.9,
        "nll_base": 2.5,
        "nll_base_withprompt": 1.53,
        "rouge_l_student": student_rouge,
        "rouge_l_base": 0.12,
        "chrf_student": 31.0,
        "chrf_base": 18.0,
        "judge_student": 7.0 if judge else None,
        "judge_teacher": 8.5 if judge else None,
        "judge_base": 2.0 if judge else None,
        "persona_classifier_student": 0.75,
        "persona_classifier_base": 0.05,
        "persona_classifier_teacher": 0.95,
        "prompt_tokens_saved_per_request": 612.0,
        "prompt_tokens_saved_run": 612000.0,
        "student_tokens_per_s": 40.0,
        "adapter_mb": 7.4,
        "heldout_prompts": 4,
    }
    notes = {} if judge else {k: "--no-judge" for k in summary if k.startswith("judge_")}
    hist = {"teacher": {"8": 2, "9": 2}, "student": {"7": 4}, "base": {"1": 2, "3": 2}}
    return {
        "run": str(run),
        "created": "2026-01-01T00:00:00Z",
        "seconds": 12.0,
        "persona": {"name": "beethoven", "description": "Beethoven in Vienna"},
        "student": {"model": "smollm2-135m", "adapter": str(run / "adapter")},
        "teacher": {"base_url": None, "model": "smollm2-135m"},
        "heldout": {
            "prompts": 4,
            "fixed": 2,
            "validation": 2,
            "max_new_tokens": 64,
            "primary_decoding": "sampled",
        },  # fmt: skip
        "summary": summary,
        "notes": notes,
        "likelihood": {
            "student": {"nll": 1.9, "perplexity": 6.69},
            "base": {"nll": 2.5, "perplexity": 12.18},
            "base_withprompt": {"nll": 1.53, "perplexity": 4.62},
        },
        "text_agreement": {
            f"{m}_{d}": {"rouge_l": ci(0.2), "chrf": ci(20.0, 3.0)}
            for m in ("student", "base")
            for d in ("greedy", "sampled")
        },
        "persona_fidelity": {
            "judge": {m: {**ci(summary[f"judge_{m}"]), "histogram": hist[m]} for m in hist}
            if judge
            else None,
            "classifier": {"share_placed_with_teacher": {"student": 0.75}},
        },
        "task": None,
        "efficiency": {
            "student_latency": {
                "requests": 3,
                "ttft_s": ci(0.05),
                "total_s": ci(1.5),
                "tokens_per_s": 40.0,
            },  # fmt: skip
            "teacher_latency": {"requests": 0},
            "adapter_parameters": 4_884_480,
            "base_parameters": 134_515_008,
            "adapter_bytes": 7_400_000,
            "run_requests": 1000,
        },
    }


def answers() -> list[dict[str, Any]]:
    return [
        {
            "id": f"p{i}",
            "prompt": f"Question {i}?",
            "teacher": "Donnerwetter!",
            "student_sampled": "Ja, mein Freund.",
            "base_sampled": "As an AI...",
        }  # fmt: skip
        for i in range(4)
    ]


def write_metrics(run: Path) -> None:
    rows = [{"step": s, "loss": 3.0 - 0.1 * s} for s in range(1, 11)]
    rows += [{"step": 5, "val_loss": 2.7}, {"step": 10, "val_loss": 2.3}]
    (run / "metrics.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def test_write_report_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    write_metrics(run.path)
    md = write_report(run, make_report(run.path), answers())
    data = load_report(run.path)
    assert data["summary"]["prompt_effect_recovered"] == 0.62
    assert data["files"]["plots"] == {
        "loss": "report-loss.png",
        "metrics": "report-metrics.png",
        "judge": "report-judge.png",
    }
    for png in data["files"]["plots"].values():
        assert (run.path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (run.path / "report-answers.jsonl").read_bytes().splitlines()
    assert [orjson.loads(x)["id"] for x in lines] == ["p0", "p1", "p2", "p3"]
    text = md.read_text()
    assert "Prompt effect recovered: 0.620" in text
    assert "| judge, in character (1-10) | 8.50 [8.40, 8.60] | 7.00 [6.90, 7.10] |" in text
    assert "![training loss](report-loss.png)" in text
    assert "612.0" in text and "Donnerwetter!" in text
    assert not list(run.path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_report_without_judge_or_metrics_says_why(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run").create()
    md = write_report(run, make_report(run.path, judge=False), [])
    data = load_report(run.path)
    assert data["summary"]["judge_student"] is None
    assert data["notes"]["judge_student"] == "--no-judge"
    assert set(data["files"]["plots"]) == {"metrics"}  # no loss curve, no judge histogram
    assert "`judge_student`: --no-judge" in md.read_text()


def test_terminal_summary(tmp_path: Path) -> None:
    buf = io.StringIO()
    print_summary(Console(file=buf, width=160), make_report(tmp_path))
    out = buf.getvalue()
    assert "teacher" in out and "student" in out and "base" in out
    assert "prompt effect recovered: 0.620" in out
    assert "612.0" in out and "40.0 tok/s" in out


def test_against_puts_two_runs_side_by_side(tmp_path: Path) -> None:
    a = RunDir(tmp_path / "a").create()
    b = RunDir(tmp_path / "b").create()
    diff = compare_reports(make_report(a.path, 0.4), make_report(b.path, 0.3))
    row = diff["summary"]["rouge_l_student"]
    assert row["run"] == 0.4 and row["other"] == 0.3
    assert row["delta"] == pytest.approx(0.1) and row["better"] == "run"
    assert diff["summary"]["nll_student"]["better"] is None  # equal
    json_path, md_path = write_comparison(a, diff)
    assert orjson.loads(json_path.read_bytes())["summary"]["rouge_l_student"]["better"] == "run"
    assert json_path.name == "report-vs-b.json"
    assert "| ROUGE-L student | 0.4000 | 0.3000 | +0.1 | run |" in md_path.read_text()
    buf = io.StringIO()
    print_comparison(Console(file=buf, width=160), diff)
    assert "a against b" in buf.getvalue()


def test_load_report_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run `promptdistill eval"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(UserError, match="no 'summary'"):
        load_report(tmp_path)
