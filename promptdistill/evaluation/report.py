"""The files and the terminal view of an evaluation (issue #6).

- RUN/report.json: a "summary" object of headline numbers (a number not measured is null and
  "notes" says why), then the detailed sections; a machine can diff two of them.
- RUN/report-answers.jsonl: every held-out prompt with the three models' answers and scores.
- RUN/report.md with PNG plots: training loss curves, metric bars for teacher / student / base,
  and the distributions of judge scores.
- A rich summary table in the terminal, and `--against OTHER_RUN`: two reports side by side.

Every file is written atomically (core/io.py), so an interrupted eval leaves the previous
report intact. The plots: plots.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from promptdistill.core.errors import UserError
from promptdistill.core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from promptdistill.core.rundir import RunDir
from promptdistill.evaluation.metrics import dig
from promptdistill.evaluation.plots import write_plots

MODELS = ("teacher", "student", "base")

# summary key -> (label, which direction is better, format)
SUMMARY_ROWS: dict[str, tuple[str, str, str]] = {
    "kl_student": ("KL(teacher || student), nats/token", "lower", "{:.4f}"),
    "kl_base": ("KL(teacher || base), nats/token", "lower", "{:.4f}"),
    "prompt_effect_recovered": ("prompt effect recovered", "higher", "{:.3f}"),
    "nll_student": ("NLL student (nats/token)", "lower", "{:.4f}"),
    "nll_base": ("NLL base, no prompt", "lower", "{:.4f}"),
    "nll_base_withprompt": ("NLL base, with prompt", "lower", "{:.4f}"),
    "rouge_l_student": ("ROUGE-L student", "higher", "{:.4f}"),
    "rouge_l_base": ("ROUGE-L base", "higher", "{:.4f}"),
    "chrf_student": ("chrF student", "higher", "{:.2f}"),
    "chrf_base": ("chrF base", "higher", "{:.2f}"),
    "judge_student": ("judge student (1-10)", "higher", "{:.2f}"),
    "judge_teacher": ("judge teacher (1-10)", "higher", "{:.2f}"),
    "judge_base": ("judge base (1-10)", "higher", "{:.2f}"),
    "persona_classifier_student": ("classifier: student with teacher", "higher", "{:.1%}"),
    "persona_classifier_base": ("classifier: base with teacher", "lower", "{:.1%}"),
    "persona_classifier_teacher": ("classifier: teacher with teacher", "higher", "{:.1%}"),
    "persona_classifier_cv_accuracy": ("classifier: teacher vs base, unseen", "higher", "{:.1%}"),
    # multi-turn runs only (`sample --turns K`): the same shares at the first and last turn
    **{
        f"persona_classifier_{m}_{side}_turn": (
            f"classifier, {side} turn: {m} with teacher",
            "lower" if m == "base" else "higher",
            "{:.1%}",
        )
        for side in ("first", "last")
        for m in ("student", "base", "teacher")
    },
    "task_accuracy_student": ("task accuracy student", "higher", "{:.1%}"),
    "task_accuracy_base": ("task accuracy base", "higher", "{:.1%}"),
    "task_accuracy_teacher": ("task accuracy teacher", "higher", "{:.1%}"),
    "answer_tokens_student": ("answer length, student (tokens)", "lower", "{:.1f}"),
    "answer_tokens_base": ("answer length, base (tokens)", "lower", "{:.1f}"),
    "answer_tokens_teacher": ("answer length, teacher (tokens)", "lower", "{:.1f}"),
    "prompt_tokens_saved_per_request": ("prompt tokens saved / request", "higher", "{:.1f}"),
    "prompt_tokens_saved_run": ("prompt tokens saved, whole run", "higher", "{:,.0f}"),
    "cost_saved_run_usd": ("system-prompt cost saved, run (USD)", "higher", "${:.4f}"),
    "student_tokens_per_s": ("student tokens/s", "higher", "{:.1f}"),
    "teacher_tokens_per_s": ("teacher tokens/s", "higher", "{:.1f}"),
    "student_ttft_s": ("student time to first token (s)", "lower", "{:.3f}"),
    "teacher_ttft_s": ("teacher time to first token (s)", "lower", "{:.3f}"),
    "student_peak_rss_mb": ("student peak RSS (MB)", "lower", "{:,.0f}"),
    "adapter_mb": ("adapter size (MB)", "lower", "{:.2f}"),
    "loop_rate_student": ("answers that loop: student", "lower", "{:.1%}"),
    "loop_rate_teacher": ("answers that loop: teacher", "lower", "{:.1%}"),
    "loop_rate_base": ("answers that loop: base", "lower", "{:.1%}"),
    "heldout_prompts": ("held-out prompts", "", "{:d}"),
}


def fmt(key: str, value: Any) -> str:
    if value is None:
        return "—"
    spec = SUMMARY_ROWS.get(key, ("", "", "{}"))[2]
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def _ci(stats: dict[str, Any] | None, spec: str = "{:.2f}") -> str:
    """'7.10 [6.52, 7.68]' from a MeanCI dict; '—' when missing."""
    if not stats or stats.get("mean") is None:
        return "—"
    text = spec.format(stats["mean"])
    if stats.get("lo") is not None:
        text += f" [{spec.format(stats['lo'])}, {spec.format(stats['hi'])}]"
    return text


# --------------------------------------------------------------------------- files


def write_report(run: RunDir, report: dict[str, Any], answers: Sequence[dict[str, Any]]) -> Path:
    """Write report.json, report-answers.jsonl, the PNG plots and report.md; return report.md."""
    atomic_write_bytes(run.report_answers, b"".join(orjson.dumps(a) + b"\n" for a in answers))
    plots = write_plots(run, report, answers)
    report["files"] = {
        "answers": run.report_answers.name,
        "markdown": run.report_md.name,
        "plots": plots,
    }
    atomic_write_json(run.report_json, report)
    atomic_write_text(run.report_md, render_markdown(report, answers))
    return run.report_md


def load_report(path: Path) -> dict[str, Any]:
    file = RunDir(path).report_json if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{file} not found: run `promptdistill eval {path}` first")
    try:
        data = orjson.loads(file.read_bytes())
    except orjson.JSONDecodeError:
        raise UserError(f"{file} is not valid JSON; run `promptdistill eval` again") from None
    if not isinstance(data, dict) or not isinstance(data.get("summary"), dict):
        raise UserError(f"{file} has no 'summary' object; run `promptdistill eval` again")
    return data


# --------------------------------------------------------------------------- markdown


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def model_rows(report: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(metric, teacher, student, base) rows shared by the terminal and the markdown."""
    s = report["summary"]
    lik = report.get("likelihood") or {}
    ta = report.get("text_agreement") or {}
    judge = dig(report, "persona_fidelity", "judge") or {}
    primary = dig(report, "heldout", "primary_decoding") or "sampled"
    task = report.get("task") or {}

    def nll(key: str) -> str:
        d = lik.get(key)
        if not d or d.get("nll") is None:
            return "—"
        return f"{d['nll']:.4f} (ppl {d['perplexity']:.2f})"

    kl = dig(report, "likelihood", "kl") or {}
    rows = [
        (
            "KL(teacher || model), nats/token",
            "(reference)",
            _ci(kl.get("student_per_answer"), "{:.4f}") if kl else "—",
            _ci(kl.get("base_per_answer"), "{:.4f}") if kl else "—",
        ),
        (
            "NLL of the teacher's answers",
            nll("base_withprompt") + " ¹",
            nll("student"),
            nll("base"),
        ),
    ]
    for decoding in ("sampled", "greedy"):
        tag = f"{decoding}{' *' if decoding == primary else ''}"
        rows.append(
            (f"ROUGE-L vs teacher ({tag})", "(reference)",
             _ci(dig(ta, f"student_{decoding}", "rouge_l"), "{:.3f}"),
             _ci(dig(ta, f"base_{decoding}", "rouge_l"), "{:.3f}"))
        )  # fmt: skip
        rows.append(
            (f"chrF vs teacher ({tag})", "(reference)",
             _ci(dig(ta, f"student_{decoding}", "chrf"), "{:.1f}"),
             _ci(dig(ta, f"base_{decoding}", "chrf"), "{:.1f}"))
        )  # fmt: skip
    j = [_ci(judge.get(m)) for m in MODELS]
    rows.append(("judge, in character (1-10)", j[0], j[1], j[2]))
    c = [fmt("persona_classifier_teacher", s.get(f"persona_classifier_{m}")) for m in MODELS]
    cv = s.get("persona_classifier_cv_accuracy")
    label = "classifier: placed with teacher"
    if isinstance(cv, float):  # can it tell teacher from base at all? (classifier.py)
        label += f" (teacher vs base on unseen prompts: {cv:.0%} right)"
    rows.append((label, c[0], c[1], c[2]))
    by_turn = dig(report, "persona_fidelity", "by_turn")
    if by_turn:  # multi-turn samples: does the persona hold over the conversation?
        for side in ("first", "last"):
            label = "turn 1" if side == "first" else f"last turn (up to {by_turn['turns']['max']})"
            c = [
                fmt("persona_classifier_teacher", s.get(f"persona_classifier_{m}_{side}_turn"))
                for m in MODELS
            ]
            rows.append((f"classifier, {label} of {by_turn['conversations']} conversations",
                         c[0], c[1], c[2]))  # fmt: skip
    loops = [fmt("loop_rate_student", s.get(f"loop_rate_{m}")) for m in MODELS]
    rows.append(("answers that loop", loops[0], loops[1], loops[2]))
    if task:
        for metric, spec in (("final_answer_accuracy", "{:.3f}"), ("exact_match", "{:.3f}"),
                             ("token_f1", "{:.3f}"), ("answer_tokens", "{:.1f}")):  # fmt: skip
            label = "answer length (tokens)" if metric == "answer_tokens" else metric
            rows.append(
                (f"task: {label.replace('_', ' ')}",
                 _ci(dig(task, "teacher", metric), spec),
                 _ci(dig(task, f"student_{primary}", metric), spec),
                 _ci(dig(task, f"base_{primary}", metric), spec))
            )  # fmt: skip
    return [(a, b, c, d) for a, b, c, d in rows]


def efficiency_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    e = report.get("efficiency") or {}
    s = report["summary"]

    def lat(side: str) -> str:
        d = e.get(f"{side}_latency") or {}
        if not d.get("requests"):
            return "—"
        ttft = dig(d, "ttft_s", "mean")
        total = dig(d, "total_s", "mean")
        tps = d.get("tokens_per_s")
        return (
            f"TTFT {ttft:.3f} s, total {total:.2f} s, {tps:.1f} tok/s ({d['requests']} requests)"
            if ttft is not None and total is not None and tps is not None
            else "—"
        )

    rows = [
        ("prompt tokens saved per request", fmt("prompt_tokens_saved_per_request",
                                                s.get("prompt_tokens_saved_per_request"))),
        ("prompt tokens saved over the run", f"{fmt('prompt_tokens_saved_run', s.get('prompt_tokens_saved_run'))} ({e.get('run_requests', 0)} requests)"),  # noqa: E501
        ("system-prompt cost saved per 1k requests", _usd(e.get("system_prompt_cost_saved_per_1k_requests_usd"))),  # noqa: E501
        ("system-prompt cost saved over the run", _usd(e.get("system_prompt_cost_saved_run_usd"))),
        ("teacher cost of the run (replaced by the student)", _usd(e.get("teacher_cost_run_usd"))),
        ("student latency (local, single stream)", lat("student")),
        ("teacher latency (endpoint, streamed)", lat("teacher")),
        ("student peak memory (process RSS, MB)", fmt("student_peak_rss_mb", s.get("student_peak_rss_mb"))),  # noqa: E501
        ("adapter size (MB)", fmt("adapter_mb", s.get("adapter_mb"))),
        ("parameters: adapter / base", _params(e)),
    ]  # fmt: skip
    return rows


def _usd(v: Any) -> str:
    return "—" if v is None else f"${v:,.4f}"


def _params(e: dict[str, Any]) -> str:
    a, b = e.get("adapter_parameters"), e.get("base_parameters")
    if a is None or b is None:
        return "—"
    return f"{a:,} / {b:,} ({a / max(b, 1):.2%})"


def render_markdown(report: dict[str, Any], answers: Sequence[dict[str, Any]]) -> str:
    s = report["summary"]
    h = report.get("heldout") or {}
    lines = [
        f"# Evaluation of `{Path(report['run']).name}`",
        "",
        f"- persona: **{dig(report, 'persona', 'name')}**: {dig(report, 'persona', 'description')}",  # noqa: E501
        f"- student: `{dig(report, 'student', 'model')}` + adapter, no system prompt; trained "
        f"with `--objective {dig(report, 'student', 'objective') or 'sft'}`",
        f"- teacher: `{dig(report, 'teacher', 'model')}` at "
        f"{dig(report, 'teacher', 'base_url') or 'the embedded local teacher'}, with the system prompt",  # noqa: E501
        f"- held-out prompts: {h.get('prompts')} ({h.get('fixed')} fixed, {h.get('validation')} "
        f"from the validation split); up to {h.get('max_new_tokens')} new tokens",
        f"- created {report.get('created')} in {report.get('seconds')} s",
        "",
        f"**Prompt effect recovered: {fmt('prompt_effect_recovered', s.get('prompt_effect_recovered'))}**"  # noqa: E501
        " (1 = the student without the prompt explains the teacher's answers as well as the base"
        " model with it; 0 = no better than the base without it).",
        "",
        kl_line(s),
        "",
        "## Teacher, student and base",
        "",
        _md_table(("metric", "teacher", "student", "base"), model_rows(report)),
        "",
        "Intervals are 95% Student-t intervals over prompts. ¹ the base model *with* the system "
        "prompt (the teacher when it is the embedded default). * the decoding used in the "
        "summary: sampled with the teacher's sampling parameters, like the teacher's answers.",
        "",
        "## Efficiency",
        "",
        _md_table(("", "value"), efficiency_rows(report)),
        "",
    ]
    plots = dig(report, "files", "plots") or {}
    if plots:
        lines += ["## Plots", ""]
        titles = {
            "loss": "training loss", "dashboard": "training dashboard", "metrics": "metrics",
            "judge": "judge scores", "accuracy": "final-answer accuracy",
            "correctness": "per-prompt correctness",
        }  # fmt: skip
        lines += [f"![{titles[k]}]({v})" for k, v in plots.items()] + [""]
    notes = report.get("notes") or {}
    if notes:
        lines += ["## Notes", ""]
        lines += [f"- `{k}`: {v}" for k, v in notes.items()] + [""]
    if answers:
        lines += ["## Examples", ""]
        for a in answers[:3]:
            lines += [f"### {a['prompt'][:200]}", ""]
            for label, key in (("teacher", "teacher"), ("student", "student_sampled"),
                               ("base", "base_sampled")):  # fmt: skip
                text = str(a.get(key) or "").strip().replace("\n", " ")
                lines.append(f"- **{label}**: {text[:600]}")
            lines.append("")
        lines.append(f"All answers: `{dig(report, 'files', 'answers')}`.")
    return "\n".join(lines) + "\n"


def kl_line(s: dict[str, Any]) -> str:
    """The primary number: how far the student's next-token distribution is from the
    teacher's on held-out answers, against the base's (docs/eval.md)."""
    student, base = s.get("kl_student"), s.get("kl_base")
    if student is None or base is None:
        return "KL(teacher || student): not measured (the teacher is not a local model)"
    ratio = f", {student / base:.2f}x the base's" if base else ""
    return (
        f"**KL(teacher || student): {student:.4f} nats/token{ratio} ({base:.4f})** "
        "(0 = the student's next-token distribution is the prompted teacher's)"
    )


# --------------------------------------------------------------------------- terminal


def print_summary(console: Console, report: dict[str, Any]) -> None:
    s = report["summary"]
    table = Table(title=f"eval · {Path(report['run']).name}", title_justify="left")
    table.add_column("metric")
    for m, color in (("teacher", "blue"), ("student", "green"), ("base", "red")):
        table.add_column(m, style=color, justify="right")
    for row in model_rows(report):
        table.add_row(*row)
    console.print(table)
    eff = Table(title="what the student saves", title_justify="left", show_header=False)
    eff.add_column("")
    eff.add_column("", justify="right")
    for k, v in efficiency_rows(report):
        eff.add_row(k, v)
    console.print(eff)
    console.print(
        f"[bold]prompt effect recovered: "
        f"{fmt('prompt_effect_recovered', s.get('prompt_effect_recovered'))}[/]"
    )
    console.print(kl_line(s).replace("**", ""), soft_wrap=True)
    # one line per reason, naming every key it explains
    by_reason: dict[str, list[str]] = {}
    for key, why in (report.get("notes") or {}).items():
        by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
        console.print(f"[dim]{', '.join(keys)}: {why}[/]", soft_wrap=True)


# --------------------------------------------------------------------------- two runs


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Summary side by side: each key with both values, the difference and which run is better."""
    shown = [k for k in SUMMARY_ROWS if k in a["summary"] or k in b["summary"]]
    keys = list(dict.fromkeys([*shown, *a["summary"], *b["summary"]]))
    rows = {}
    for k in keys:
        va, vb = a["summary"].get(k), b["summary"].get(k)
        delta = None
        better = None
        if isinstance(va, int | float) and isinstance(vb, int | float):
            delta = va - vb
            direction = SUMMARY_ROWS.get(k, ("", "", ""))[1]
            if direction and delta != 0:
                better = "run" if (delta > 0) == (direction == "higher") else "other"
        rows[k] = {"run": va, "other": vb, "delta": delta, "better": better}
    return {
        "run": a["run"],
        "other": b["run"],
        "summary": rows,
    }


def write_comparison(run: RunDir, diff: dict[str, Any]) -> tuple[Path, Path]:
    other = Path(diff["other"]).name
    json_path, md_path = run.report_against(other, "json"), run.report_against(other, "md")
    atomic_write_json(json_path, diff)
    rows = []
    for k, r in diff["summary"].items():
        label = SUMMARY_ROWS.get(k, (k, "", ""))[0]
        d = r["delta"]
        rows.append(
            (label, fmt(k, r["run"]), fmt(k, r["other"]),
             "—" if d is None else f"{d:+.4g}", r["better"] or "")
        )  # fmt: skip
    name = Path(diff["run"]).name
    text = (
        f"# `{name}` against `{other}`\n\n"
        + _md_table(("metric", name, other, "difference", "better"), rows)
        + "\n"
    )
    atomic_write_text(md_path, text)
    return json_path, md_path


def print_comparison(console: Console, diff: dict[str, Any]) -> None:
    name, other = Path(diff["run"]).name, Path(diff["other"]).name
    table = Table(title=f"{name} against {other}", title_justify="left")
    for col, just in (("metric", "left"), (name, "right"), (other, "right"), ("Δ", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    for k, r in diff["summary"].items():
        label = SUMMARY_ROWS.get(k, (k, "", ""))[0]
        a, b = fmt(k, r["run"]), fmt(k, r["other"])
        if r["better"] == "run":
            a = f"[bold green]{a}[/]"
        elif r["better"] == "other":
            b = f"[bold green]{b}[/]"
        d = r["delta"]
        table.add_row(label, a, b, "" if d is None else f"{d:+.4g}")
    console.print(table)
