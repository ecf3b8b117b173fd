"""The report's PNG plots: the training loss curve and dashboard, metric bars for teacher /
student / base with their 95% intervals as error bars, the distributions of the judge's
scores, and, for prompt sets with gold answers, final-answer accuracy and a per-prompt
correctness grid (issue #17)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from promptdistill.core.io import read_jsonl
from promptdistill.core.plots import plot_dashboard, plot_loss, pyplot, save_png
from promptdistill.core.rundir import RunDir
from promptdistill.evaluation.metrics import dig

MODELS = ("teacher", "student", "base")
COLORS = {"teacher": "#4c72b0", "student": "#55a868", "base": "#c44e52"}
Stat = dict[str, Any]  # a MeanCI dict: mean, lo, hi (lo/hi None: no interval)


def write_plots(
    run: RunDir, report: dict[str, Any], answers: Sequence[dict[str, Any]] = ()
) -> dict[str, str]:
    """The PNGs that can be drawn from what was measured; returns {kind: file name}."""
    written: dict[str, str] = {}
    rows = list(read_jsonl(run.metrics))
    if plot_loss(rows, run.report_plot("loss"), "training"):
        written["loss"] = run.report_plot("loss").name
    # training writes the dashboard; a run trained before it existed gets one drawn now
    if run.train_dashboard.is_file() or plot_dashboard(rows, run.train_dashboard, run.path.name):
        written["dashboard"] = run.train_dashboard.name
    if _metric_bars(run, report):
        written["metrics"] = run.report_plot("metrics").name
    if _judge_histogram(run, report):
        written["judge"] = run.report_plot("judge").name
    if _accuracy(run, report):
        written["accuracy"] = run.report_plot("accuracy").name
    if _correctness_grid(run, answers):
        written["correctness"] = run.report_plot("correctness").name
    return written


def bars(ax: Any, stats: dict[str, Stat], colors: Sequence[str]) -> None:
    """One bar per entry, each with its interval as an error bar where it has one."""
    names = list(stats)
    means = [float(stats[n]["mean"]) for n in names]
    err = [
        [
            m - s["lo"] if s.get("lo") is not None else 0.0
            for m, s in zip(means, stats.values(), strict=True)
        ],
        [
            s["hi"] - m if s.get("hi") is not None else 0.0
            for m, s in zip(means, stats.values(), strict=True)
        ],
    ]
    ax.bar(names, means, color=list(colors), yerr=err, capsize=4, ecolor="#333333")


def _metric_bars(run: RunDir, report: dict[str, Any]) -> bool:
    panels = metric_panels(report)
    if not panels:
        return False
    fig, axes = pyplot().subplots(1, len(panels), figsize=(3.0 * len(panels), 3.2), squeeze=False)
    for ax, (title, values) in zip(axes[0], panels, strict=True):
        bars(ax, values, [COLORS[m] for m in values])
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.text(0.5, -0.02, "error bars: 95% intervals over held-out prompts", ha="center", fontsize=8)
    fig.tight_layout()
    save_png(fig, run.report_plot("metrics"))
    return True


def metric_panels(report: dict[str, Any]) -> list[tuple[str, dict[str, Stat]]]:
    """(title, {model: MeanCI dict}) per metric measured; the intervals are the report's own."""
    s = report["summary"]
    lik = report.get("likelihood") or {}
    ta = report.get("text_agreement") or {}
    judge = dig(report, "persona_fidelity", "judge") or {}
    cls = dig(report, "persona_fidelity", "classifier") or {}
    task = report.get("task") or {}
    primary = dig(report, "heldout", "primary_decoding") or "sampled"

    def nll(key: str) -> Stat | None:
        d = lik.get(key) or {}
        if d.get("nll") is None:
            return None
        return {"mean": d["nll"], "lo": d.get("lo"), "hi": d.get("hi")}

    def share(m: str) -> Stat | None:
        ci = dig(cls, "share_intervals", m)
        value = s.get(f"persona_classifier_{m}")
        return ci if ci else ({"mean": value} if value is not None else None)

    panels = [
        ("NLL of teacher answers, lower is closer\n(teacher bar: base + system prompt)",
         {"teacher": nll("base_withprompt"), "student": nll("student"), "base": nll("base")}),
        ("ROUGE-L vs teacher", {m: dig(ta, f"{m}_{primary}", "rouge_l") for m in MODELS[1:]}),
        ("chrF vs teacher", {m: dig(ta, f"{m}_{primary}", "chrf") for m in MODELS[1:]}),
        ("judge, in character (1-10)", {m: judge.get(m) for m in MODELS}),
        ("classifier: share like the teacher", {m: share(m) for m in MODELS}),
        ("task accuracy",
         {m: dig(task, "teacher" if m == "teacher" else f"{m}_{primary}",
                 "final_answer_accuracy") for m in MODELS}),
    ]  # fmt: skip
    out = []
    for title, values in panels:
        present = {m: v for m, v in values.items() if v and v.get("mean") is not None}
        if present:
            out.append((title, present))
    return out


def _judge_histogram(run: RunDir, report: dict[str, Any]) -> bool:
    judge = dig(report, "persona_fidelity", "judge")
    if not judge or not any(dig(judge, m, "histogram") for m in MODELS):
        return False
    fig, ax = pyplot().subplots(figsize=(6, 3.2))
    width = 0.27
    for k, m in enumerate(MODELS):
        hist = dig(judge, m, "histogram") or {}
        xs = [int(s) + (k - 1) * width for s in hist]
        ax.bar(xs, list(hist.values()), width=width, label=m, color=COLORS[m])
    ax.set_xticks(range(1, 11))
    ax.set_xlabel("judge score (1-10, in character)")
    ax.set_ylabel("answers")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    save_png(fig, run.report_plot("judge"))
    return True


# ---- prompt sets with gold answers (issue #17)

SOURCES = ("teacher", "student_sampled", "student_greedy", "base_sampled", "base_greedy")


def _accuracy(run: RunDir, report: dict[str, Any]) -> bool:
    """Final-answer accuracy and answer length in tokens, teacher / student / base, each
    decoding, with intervals: how often the reasoning lands, and what it costs."""
    task = report.get("task") or {}
    present = [k for k in SOURCES if dig(task, k, "final_answer_accuracy", "mean") is not None]
    if not present:
        return False
    colors = [COLORS[k.split("_")[0]] for k in present]
    labels = [k.replace("_", "\n") for k in present]
    fig, (acc, length) = pyplot().subplots(1, 2, figsize=(10, 3.6))
    pairs = list(zip(labels, present, strict=True))
    bars(acc, {lab: task[k]["final_answer_accuracy"] for lab, k in pairs}, colors)
    acc.set_ylim(0, 1.05)
    acc.set_title(f"final-answer accuracy ({task.get('answers_with_gold')} prompts with gold)")
    with_len = [
        (lab, k) for lab, k in zip(labels, present, strict=True) if task[k].get("answer_tokens")
    ]
    if with_len:
        bars(length, {lab: task[k]["answer_tokens"] for lab, k in with_len},
             [COLORS[k.split("_")[0]] for _, k in with_len])  # fmt: skip
    length.set_title("answer length (tokens, the student's tokenizer)")
    for ax in (acc, length):
        ax.tick_params(labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_png(fig, run.report_plot("accuracy"))
    return True


def _correctness_grid(run: RunDir, answers: Sequence[dict[str, Any]]) -> bool:
    """One row per held-out prompt with a gold answer, one column per model and decoding:
    green where the final answer is right, red where it is wrong."""
    graded = [a for a in answers if isinstance(a.get("correct"), dict)]
    if not graded:
        return False
    cols = [k for k in SOURCES if any(k in a["correct"] for a in graded)]
    grid = [[float(a["correct"].get(k, float("nan"))) for k in cols] for a in graded]
    from matplotlib.colors import ListedColormap

    height = min(0.22 * len(graded) + 1.4, 30)
    fig, ax = pyplot().subplots(figsize=(1.3 * len(cols) + 3.5, height))
    ax.imshow(grid, cmap=ListedColormap(["#c44e52", "#55a868"]), vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), [c.replace("_", "\n") for c in cols], fontsize=8)
    if len(graded) <= 60:
        ax.set_yticks(range(len(graded)), [str(a["prompt"])[:40] for a in graded], fontsize=6)
    else:
        ax.set_ylabel(f"{len(graded)} prompts")
    ax.set_title("final answer right (green) or wrong (red), per held-out prompt", fontsize=9)
    fig.tight_layout()
    save_png(fig, run.report_plot("correctness"))
    return True
