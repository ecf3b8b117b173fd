"""The report's PNG plots: the training loss curve, metric bars for teacher / student / base,
and the distributions of the judge's scores."""

from __future__ import annotations

from typing import Any

from promptdistill.core.io import read_jsonl
from promptdistill.core.plots import plot_loss, pyplot, save_png
from promptdistill.core.rundir import RunDir
from promptdistill.evaluation.metrics import dig

MODELS = ("teacher", "student", "base")
COLORS = {"teacher": "#4c72b0", "student": "#55a868", "base": "#c44e52"}


def write_plots(run: RunDir, report: dict[str, Any]) -> dict[str, str]:
    """The PNGs that can be drawn from what was measured; returns {kind: file name}."""
    plt = pyplot()
    written: dict[str, str] = {}
    if plot_loss(read_jsonl(run.metrics), run.report_plot("loss"), "training"):
        written["loss"] = run.report_plot("loss").name

    panels = _metric_panels(report)
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.0 * len(panels), 3.2), squeeze=False)
        for ax, (title, values) in zip(axes[0], panels, strict=True):
            names = [m for m in MODELS if values.get(m) is not None]
            ax.bar(names, [values[m] for m in names], color=[COLORS[m] for m in names])
            ax.set_title(title, fontsize=9)
            ax.tick_params(labelsize=8)
            ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        save_png(fig, run.report_plot("metrics"))
        written["metrics"] = run.report_plot("metrics").name

    judge = dig(report, "persona_fidelity", "judge")
    if judge and any(dig(judge, m, "histogram") for m in MODELS):
        fig, ax = plt.subplots(figsize=(6, 3.2))
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
        written["judge"] = run.report_plot("judge").name
    return written


def _metric_panels(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    s = report["summary"]
    panels = [
        ("NLL of teacher answers, lower is closer\n(teacher bar: base + system prompt)",
         {"teacher": s.get("nll_base_withprompt"), "student": s.get("nll_student"),
          "base": s.get("nll_base")}),
        ("ROUGE-L vs teacher",
         {"student": s.get("rouge_l_student"), "base": s.get("rouge_l_base")}),
        ("chrF vs teacher", {"student": s.get("chrf_student"), "base": s.get("chrf_base")}),
        ("judge, in character (1-10)",
         {m: s.get(f"judge_{m}") for m in MODELS}),
        ("classifier: share like the teacher",
         {m: s.get(f"persona_classifier_{m}") for m in MODELS}),
        ("task accuracy", {m: s.get(f"task_accuracy_{m}") for m in MODELS}),
    ]  # fmt: skip
    return [(t, v) for t, v in panels if any(x is not None for x in v.values())]
