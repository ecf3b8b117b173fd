"""The training dashboard (issue #17): `promptdistill train` writes RUN/train-dashboard.png
with every panel drawn from the run's own metrics.jsonl, gradient norms included."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import make_tiny_model, write_samples

from promptdistill.core.io import read_jsonl
from promptdistill.core.plots import DASHBOARD_PANELS, dashboard_figure, plot_dashboard
from promptdistill.core.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_writes_the_dashboard_with_every_panel(tmp_path: Path) -> None:
    model = make_tiny_model(tmp_path / "model")
    run = RunDir(tmp_path / "run").create()
    write_samples(run.samples, 40, heldout=2)
    cmd = [
        sys.executable, "-m", "promptdistill", "train", str(run.path), "--student", str(model),
        "--epochs", "2", "--eval-every", "3", "--batch-tokens", "512", "--lr", "2e-2",
        "--warmup", "2",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"dashboard: {run.train_dashboard}" in out.stdout.replace("\n", "")
    assert run.train_dashboard.read_bytes()[:4] == b"\x89PNG"

    rows = list(read_jsonl(run.metrics))
    steps = [r for r in rows if r["type"] == "train"]
    # every step logs its gradient norm (before clipping), a finite positive number
    assert steps and all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in steps)
    assert max(r["epoch"] for r in steps) == pytest.approx(2.0)
    fig, drawn = dashboard_figure(rows, "t")
    assert drawn == list(DASHBOARD_PANELS)  # every panel had data
    assert [ax.get_title() for ax in fig.axes] == list(DASHBOARD_PANELS)
    # the loss-by-epoch panel shows the validation loss too
    epoch_ax = fig.axes[DASHBOARD_PANELS.index("loss by epoch")]
    assert "validation" in [t.get_text() for t in epoch_ax.get_legend().get_texts()]


def test_a_run_from_before_grad_norms_gets_a_dashboard_that_says_so(tmp_path: Path) -> None:
    rows = [
        {"type": "train", "step": s, "epoch": s / 4, "loss": 3 - s / 10, "lr": 1e-3,
         "tokens_per_s": 100.0, "elapsed_s": s, "data_wait_s": 0.1}
        for s in range(1, 5)
    ]  # fmt: skip
    drawn = plot_dashboard(rows, tmp_path / "d.png", "old run")
    assert (tmp_path / "d.png").is_file()
    assert "gradient norm (before clipping at 1.0)" not in drawn and len(drawn) == 5
    assert plot_dashboard([], tmp_path / "none.png", "empty") == []
    assert not (tmp_path / "none.png").exists()
